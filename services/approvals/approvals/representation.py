"""Decision rows as the JSON clients see."""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg


def rfc3339(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def decision_json(row: asyncpg.Record, entry: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{"id", "entry_id", "decision", "comment", "by", "at", "state", "entry"}``.

    ``state`` is ``applied`` once the entry carries the decision, ``pending`` while it is being
    applied (the reconciler finishes it), ``void`` if the timesheets service refused it for good.
    """
    return {
        "id": str(row["id"]),
        "entry_id": str(row["entry_id"]),
        "decision": row["decision"],
        "comment": row["comment"],
        "by": {
            "issuer": row["approver_issuer"],
            "subject": row["approver_subject"],
            "name": row["approver_name"] or None,
        },
        "at": rfc3339(row["decided_at"]),
        "state": row["state"],
        "entry": entry,
    }
