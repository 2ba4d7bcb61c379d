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
from decimal import Decimal
from json.encoder import encode_basestring as _text  # json.dumps' own string escaping

from svckit.contracts.fields import rfc3339
from svckit.contracts.identity import Person
from svckit.contracts.timesheets import STATUSES, Entry, EntryDecision, EntryPage

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


#: the statuses as JSON strings (the table holds no others; anything else is escaped as it comes)
_STATUS = {status: _text(status) for status in STATUSES}
#: ``hours`` as JSON numbers by the stored value: quarter hours up to 24, at most 96 of them (the
#: ``float`` and its ``repr`` per row cost as much as the rest of the number's share together)
_HOURS: dict[Decimal, str] = {}
_MAX_HOURS_KEPT = 1024


def _hours(value: Decimal) -> str:
    text = _HOURS.get(value)
    if text is None:
        text = repr(float(value))
        if len(_HOURS) < _MAX_HOURS_KEPT:
            _HOURS[value] = text
    return text


def _entry(row: EntryRow, owner: str) -> str:
    """The entry's JSON with its owner already written (the same on every row of a page)."""
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
    status = _STATUS.get(row.status) or _text(row.status)
    return (
        f'{{"id":"{row.id}","owner":{owner},'
        f'"date":"{row.date.isoformat()}","project":{_text(row.project)},"hours":{_hours(row.hours)},'
        f'"notes":{notes},"status":{status},"decision":{decision},'
        f'"created_at":"{created}","updated_at":"{updated}"}}'
    )


def entry_json(row: EntryRow) -> str:
    """``entry_of(row).model_dump_json()``, written directly."""
    return _entry(row, _person(row.owner_issuer, row.owner_subject, row.owner_name))


def page_json(rows: Sequence[EntryRow], limit: int) -> str:
    """``page_of(rows, limit).model_dump_json()``, written directly. A listing's rows are one
    owner's: the owner is written once and reused while the next row has the same."""
    items = rows[:limit]
    # base64url: nothing in it that JSON escapes
    next_cursor = f'"{cursor.encode(items[-1].position)}"' if len(rows) > limit else "null"
    written = []
    owner_of: tuple[str, str, str] | None = None
    owner = ""
    for row in items:
        if owner_of is None or (row.owner_issuer, row.owner_subject, row.owner_name) != owner_of:
            owner_of = (row.owner_issuer, row.owner_subject, row.owner_name)
            owner = _person(*owner_of)
        written.append(_entry(row, owner))
    return f'{{"items":[{",".join(written)}],"next_cursor":{next_cursor}}}'
