"""Typed rows as the contract's documents (:class:`svckit.contracts.timesheets.Entry`).

Two ways to the same bytes. :func:`entry_of` / :func:`page_of` build the contract's models (what
stored idempotent answers and the internal routes use). :func:`entry_json` / :func:`page_json`
write the JSON straight from the row for the hot routes (a list of 20 and a create): building and
validating 20 models and serialising them cost about as much as the list's database round trip.
The rows come from a table whose constraints are the contract's (status, hours, lengths), and
``tests/test_representation.py`` holds both paths to byte-identical output.
"""

from __future__ import annotations

from collections.abc import Sequence
from json.encoder import encode_basestring as _text  # json.dumps' own string escaping

from svckit.contracts.fields import rfc3339
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


def _person(issuer: str, subject: str, name: str | None) -> str:
    return f'{{"issuer":{_text(issuer)},"subject":{_text(subject)},"name":{_text(name) if name else "null"}}}'


def entry_json(row: EntryRow) -> str:
    """``entry_of(row).model_dump_json()``, written directly."""
    decision = "null"
    if row.decision_id is not None:
        assert row.decided_at is not None
        by = _person(row.decided_by_issuer or "", row.decided_by_subject or "", row.decided_by_name)
        comment = _text(row.decision_comment) if row.decision_comment is not None else "null"
        at = rfc3339(row.decided_at)
        decision = f'{{"decision":{_text(row.status)},"by":{by},"at":"{at}","comment":{comment}}}'
    notes = _text(row.notes) if row.notes is not None else "null"
    created = rfc3339(row.created_at)
    # an entry never changed since it was made has one timestamp twice: formatted once
    updated = created if row.updated_at == row.created_at else rfc3339(row.updated_at)
    return (
        f'{{"id":"{row.id}","owner":{_person(row.owner_issuer, row.owner_subject, row.owner_name)},'
        f'"date":"{row.date.isoformat()}","project":{_text(row.project)},"hours":{float(row.hours)!r},'
        f'"notes":{notes},"status":{_text(row.status)},"decision":{decision},'
        f'"created_at":"{created}","updated_at":"{updated}"}}'
    )


def page_json(rows: Sequence[EntryRow], limit: int) -> str:
    """``page_of(rows, limit).model_dump_json()``, written directly."""
    items = rows[:limit]
    next_cursor = _text(cursor.encode(items[-1].position)) if len(rows) > limit else "null"
    return f'{{"items":[{",".join(entry_json(row) for row in items)}],"next_cursor":{next_cursor}}}'
