"""Database rows as the JSON documents clients see (the entry shape fixed in api-shared)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg


def rfc3339(value: dt.datetime) -> str:
    """UTC, microseconds, ``Z``: one spelling for every timestamp the service emits."""
    return value.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def person(issuer: str, subject: str, name: str | None) -> dict[str, Any]:
    return {"issuer": issuer, "subject": subject, "name": name or None}


def entry_json(row: asyncpg.Record) -> dict[str, Any]:
    decision = None
    if row["decision_id"] is not None:
        decision = {
            "decision": row["status"],
            "by": person(row["decided_by_issuer"], row["decided_by_subject"], row["decided_by_name"]),
            "at": rfc3339(row["decided_at"]),
            "comment": row["decision_comment"],
        }
    return {
        "id": str(row["id"]),
        "owner": person(row["owner_issuer"], row["owner_subject"], row["owner_name"]),
        "date": row["date"].isoformat(),
        "project": row["project"],
        "hours": float(row["hours"]),
        "notes": row["notes"],
        "status": row["status"],
        "decision": decision,
        "created_at": rfc3339(row["created_at"]),
        "updated_at": rfc3339(row["updated_at"]),
    }
