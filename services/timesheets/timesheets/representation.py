"""Typed rows as the contract's documents (:class:`svckit.contracts.timesheets.Entry`)."""

from __future__ import annotations

from collections.abc import Sequence

from svckit.contracts.identity import Person
from svckit.contracts.timesheets import Entry, EntryDecision, EntryPage

from . import cursor
from .store import EntryRow


def entry_of(row: EntryRow) -> Entry:
    decision = None
    if row.decision_id is not None:
        decision = EntryDecision(
            decision=row.status,
            by=Person(
                issuer=row.decided_by_issuer or "",
                subject=row.decided_by_subject or "",
                name=row.decided_by_name or None,
            ),
            at=row.decided_at,
            comment=row.decision_comment,
        )
    return Entry(
        id=row.id,
        owner=Person(issuer=row.owner_issuer, subject=row.owner_subject, name=row.owner_name or None),
        date=row.date,
        project=row.project,
        hours=float(row.hours),
        notes=row.notes,
        status=row.status,
        decision=decision,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def page_of(rows: Sequence[EntryRow], limit: int) -> EntryPage:
    """One page from ``limit + 1`` rows: the extra row only says that another page exists."""
    items = rows[:limit]
    more = len(rows) > limit
    return EntryPage(
        items=[entry_of(row) for row in items],
        next_cursor=cursor.encode(items[-1].position) if more else None,
    )
