"""Typed decision rows as the contract's documents (:class:`svckit.contracts.approvals.Decision`)."""

from __future__ import annotations

from svckit.contracts.approvals import Decision
from svckit.contracts.identity import Person
from svckit.contracts.timesheets import Entry

from .store import DecisionRow


def decision_of(row: DecisionRow, entry: Entry | None = None) -> Decision:
    """``state`` is ``applied`` once the entry carries the decision, ``pending`` while it is being
    applied (the reconciler finishes it), ``void`` if the timesheets service refused it for good."""
    return Decision(
        id=row.id,
        entry_id=row.entry_id,
        decision=row.decision,
        comment=row.comment,
        by=Person(issuer=row.approver_issuer, subject=row.approver_subject, name=row.approver_name or None),
        at=row.decided_at,
        state=row.state,
        entry=entry,
    )
