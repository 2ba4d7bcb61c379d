"""Audit events in the wire shape of the audit service's ``POST /internal/events``, for tests.

One builder, so that the audit suite, the checkpoint attack test and the ranged-verify browser test do
not each keep their own copy of the event dict (which drift apart when the contract grows a field).
Every event is new: a fresh id, resource id and request id, occurred now unless told otherwise.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any


def make_event(
    *,
    source: str = "timesheets",
    subject: str = "alice",
    name: str | None = None,
    action: str = "timesheet.created",
    resource_type: str = "timesheet",
    resource_id: str | None = None,
    outcome: str = "success",
    occurred_at: datetime | None = None,
    details: dict[str, Any] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """An event by a user of the SPA; ``name`` defaults to the subject title-cased, ``details`` to an
    entry's; ``overrides`` replace top-level fields as given (to build events the intake refuses)."""
    event: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "occurred_at": (occurred_at or datetime.now(UTC)).isoformat(),
        "source": source,
        "actor": {
            "issuer": "http://localhost:9000/",
            "subject": subject,
            "kind": "user",
            "client_id": "timesheets-spa",
            "name": subject.title() if name is None else name,
        },
        "action": action,
        "resource": {"type": resource_type, "id": resource_id or str(uuid.uuid4())},
        "outcome": outcome,
        "request_id": uuid.uuid4().hex,
        "details": {"project": "StoreZero", "hours": 7.5} if details is None else details,
    }
    event.update(overrides)
    return event
