"""The audit events of the approvals service: a decision applied or voided (enqueued in the statement
that settles it), and an approver's refused attempt at their own entry (best effort, on its own)."""

from __future__ import annotations

import datetime as dt
import json
import uuid

from svckit.context import current_request_id
from svckit.contracts.approvals import DecisionIn
from svckit.contracts.audit import AuditEvent, outbox_values
from svckit.identity import Identity

from .store import DecisionRow

SOURCE = "approvals"
#: the namespace of the ids of refused attempts' records (:func:`refusal_id`); never changes
REFUSALS = uuid.UUID("9f90d771-8751-494e-aa78-243980401b23")
#: the namespace of a settlement's event id (:func:`settlement_id`)
SETTLEMENTS = uuid.UUID("5d0b6a8e-3c1f-4a53-9f0e-2b7c8d41e6a9")


def settlement_id(row: DecisionRow, action: str) -> uuid.UUID:
    """The event id of a decision's settlement (``approval.decided`` / ``approval.voided``): derived
    from the decision, so that settling it again is the same event, stored once by the audit service.
    A decision settles once, but an approvals schema restored to a point where it was still pending
    (docs/runbook.md, "Backup and restore") settles it again, and the trail must not say twice that
    it was applied (tests/restore/test_timesheets_restore.py)."""
    return uuid.uuid5(SETTLEMENTS, f"{action}:{row.id}")


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
        event_id=settlement_id(row, "approval.decided"),
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


def voided(row: DecisionRow, reason: str, via: str) -> tuple[uuid.UUID, dt.datetime, str]:
    """A recorded decision voided because it can never apply (``reason``, from the timesheets
    service's answer: ``entry_gone``, ``already_decided`` or ``own_entry``), as the outbox's values
    (like :func:`decided`): a change of the decision's state, on the trail like the others. Outcome
    ``failure``: what the approver decided did not take effect. ``via``: ``request`` or
    ``reconciler``, whichever voided it; the request id is the original PUT's."""
    return outbox_values(
        event_id=settlement_id(row, "approval.voided"),
        action="approval.voided",
        resource_type="timesheet",
        resource_id=str(row.entry_id),
        outcome="failure",
        actor=approver_of(row),
        source=SOURCE,
        request_id=row.request_id or "",
        details={
            "decision_id": str(row.id),
            "decision": row.decision,
            "comment": row.comment,
            "reason": reason,
            "voided_by": via,
        },
    )


def refusal_id(
    approver: Identity, entry_id: uuid.UUID, body: DecisionIn, request_id: str | None
) -> uuid.UUID:
    """The id of a refused attempt's record, derived from the request: its id, who sent it, the entry
    and what it decided. The same request refused twice is one record — the gateway sends an
    idempotent request once more, with its request id, when its connection closed under it — and
    writing the record again adds nothing (:meth:`svckit.outbox.OutboxRelay.record`). A fresh id
    when the request has none."""
    if request_id is None:
        return uuid.uuid4()
    key = [request_id, approver.issuer, approver.subject, str(entry_id), body.decision, body.comment]
    return uuid.uuid5(REFUSALS, json.dumps(key))


def refused_own_entry(approver: Identity, entry_id: uuid.UUID, body: DecisionIn) -> AuditEvent:
    """An approver's attempt at their own entry, refused (403): its id from :func:`refusal_id`."""
    request_id = current_request_id()
    return AuditEvent.create(
        action="approval.decided",
        resource_type="timesheet",
        resource_id=str(entry_id),
        outcome="denied",
        actor=approver,
        source=SOURCE,
        details={"reason": "own_entry"},
        request_id=request_id,
        event_id=refusal_id(approver, entry_id, body, request_id),
    )
