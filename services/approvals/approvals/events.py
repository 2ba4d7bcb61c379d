"""The audit events of the approvals service (enqueued in the transaction that settles a decision)."""

from __future__ import annotations

import datetime as dt
import uuid

from svckit.contracts.audit import AuditEvent, outbox_values
from svckit.identity import Identity

from .store import DecisionRow

SOURCE = "approvals"


def approver_of(row: DecisionRow) -> Identity:
    return Identity(
        row.approver_issuer,
        row.approver_subject,
        row.approver_kind,  # type: ignore[arg-type]  # the table's CHECK holds it to the kinds
        row.approver_client,
        frozenset(),
        row.approver_name,
    )


def decided(row: DecisionRow, via: str) -> tuple[uuid.UUID, dt.datetime, str]:
    """A decision applied to its entry, as the outbox's values (``svckit.outbox.event_parameters``
    of its event, written directly: :func:`svckit.contracts.audit.outbox_values`); the request id is
    the original PUT's, even when the reconciler finished it later. ``via`` says which: ``request``
    or ``reconciler``."""
    return outbox_values(
        action="approval.decided",
        resource_type="timesheet",
        resource_id=str(row.entry_id),
        outcome="success",
        actor=approver_of(row),
        source=SOURCE,
        request_id=row.request_id or "",
        details={
            "decision_id": str(row.id),
            "decision": row.decision,
            "comment": row.comment,
            "applied_by": via,
        },
    )


def refused_own_entry(approver: Identity, entry_id: uuid.UUID) -> AuditEvent:
    return AuditEvent.create(
        action="approval.decided",
        resource_type="timesheet",
        resource_id=str(entry_id),
        outcome="denied",
        actor=approver,
        source=SOURCE,
        details={"reason": "own_entry"},
    )
