"""The audit events the timesheets service emits, one builder per state change.

Each is enqueued in the transaction of the change (``svckit.outbox.enqueue``), so an entry and its
audit record exist together or not at all.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence

from svckit.contracts.audit import AuditEvent, outbox_values
from svckit.contracts.timesheets import ApplyDecision, EntryIn
from svckit.identity import Identity

from .store import EntryRow

SOURCE = "timesheets"


def _entry_details(row: EntryRow) -> dict[str, object]:
    return {
        "owner": {"issuer": row.owner_issuer, "subject": row.owner_subject},
        "date": row.date.isoformat(),
        "project": row.project,
        "hours": float(row.hours),
    }


def created(actor: Identity, entry_id: uuid.UUID, entry: EntryIn) -> tuple[uuid.UUID, dt.datetime, str]:
    """The creation's outbox values (``svckit.outbox.event_parameters`` of its event, written without
    building the models: :func:`svckit.contracts.audit.outbox_values`). Built from what is about to be
    stored (the same values the row will hold: hours are quarter hours, exact in ``numeric``), so it
    is written in the statement that stores the entry."""
    return outbox_values(
        action="timesheet.created",
        resource_type="timesheet",
        resource_id=str(entry_id),
        outcome="success",
        actor=actor,
        source=SOURCE,
        details={
            "owner": {"issuer": actor.issuer, "subject": actor.subject},
            "date": entry.date.isoformat(),
            "project": entry.project,
            "hours": float(entry.hours),
        },
    )


def deleted(actor: Identity, row: EntryRow) -> AuditEvent:
    return AuditEvent.create(
        action="timesheet.deleted",
        resource_type="timesheet",
        resource_id=str(row.id),
        outcome="success",
        actor=actor,
        source=SOURCE,
        details={**_entry_details(row), "status": row.status},
    )


def uploaded(actor: Identity, upload_id: uuid.UUID, rows: Sequence[EntryRow]) -> AuditEvent:
    """One event per batch (its entries carry ``upload_id``), so a 1,000-row batch stays small."""
    return AuditEvent.create(
        action="timesheet.uploaded",
        resource_type="timesheet_upload",
        resource_id=str(upload_id),
        outcome="success",
        actor=actor,
        source=SOURCE,
        details={
            "entries": len(rows),
            "users": len({row.owner_subject for row in rows}),
            "first_entry_id": str(rows[0].id),
            "last_entry_id": str(rows[-1].id),
        },
    )


def decided(
    caller: Identity, decision: ApplyDecision, entry_id: uuid.UUID
) -> tuple[uuid.UUID, dt.datetime, str]:
    """The entry's status changed by a decision the approvals service relayed for the approver, as
    the outbox's values (written directly: :func:`svckit.contracts.audit.outbox_values`). Its
    ``details`` name the decision here; the entry's owner, date, project and hours (as
    :func:`_entry_details` writes them) are added by the statement that applies it, from the row it
    changes (``store.APPLY_DECISION``: jsonb keeps ``date`` as ISO text and ``hours`` as the number
    stored, which reads back as the same float)."""
    approver = Identity(
        decision.by.issuer,
        decision.by.subject,
        decision.by.kind,
        decision.by.client_id,
        frozenset(),
        decision.by.name or "",
    )
    return outbox_values(
        action="timesheet.decided",
        resource_type="timesheet",
        resource_id=str(entry_id),
        outcome="success",
        actor=approver,
        source=SOURCE,
        details={
            "decision": decision.decision,
            "decision_id": str(decision.decision_id),
            "via": caller.subject,
        },
    )
