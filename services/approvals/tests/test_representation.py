"""An applied decision's answer, written directly (``decision_json``), is byte for byte what the
contract's model writes (``decision_of(...).model_dump_json()``): every member kind, awkward text,
with and without the entry, the entry as the timesheets service wrote it or written here."""

from __future__ import annotations

import datetime as dt

import pytest
from approvals.representation import decision_json, decision_of
from approvals.store import DecisionRow
from svckit.contracts.identity import Person
from svckit.contracts.timesheets import Entry, EntryDecision

from .conftest import decision_row as a_decision

pytestmark = pytest.mark.unit

AWKWARD = ["Seed", 'quote " and \\ backslash', "tab\t newline\n ünïcødé ✓ 𝄞", "\x01 control\x7f", "</script>"]
WHEN = dt.datetime(2026, 11, 27, 9, 30, 0, 123456, dt.UTC)


def decision_row(
    text: str, *, comment: str | None, name: str, state: str, verdict: str, at: dt.datetime
) -> DecisionRow:
    return a_decision(
        decision=verdict,
        comment=comment,
        approver_subject=text,
        approver_name=name,
        state=state,
        decided_at=at,
        applied_at=at,
        updated_at=at,
    )


def entry_for(row: DecisionRow, text: str) -> Entry:
    by = Person(issuer=row.approver_issuer, subject=row.approver_subject, name=row.approver_name or None)
    return Entry(
        id=row.entry_id,
        owner=Person(issuer="http://localhost:9000/", subject=text, name=text or None),
        date=dt.date(2026, 11, 27),
        project=text,
        hours=7.5,
        notes=text,
        status=row.decision,
        decision=EntryDecision(decision=row.decision, by=by, at=row.decided_at, comment=row.comment),
        created_at=WHEN,
        updated_at=dt.datetime(2026, 11, 27, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))),
    )


@pytest.mark.parametrize("text", AWKWARD)
@pytest.mark.parametrize(("comment", "name"), [(None, ""), ("", "Bo"), ("fine", "Bö ✓"), ("x", "\x01")])
@pytest.mark.parametrize(
    ("state", "verdict", "at"),
    [
        ("applied", "approved", WHEN),
        ("applied", "rejected", dt.datetime(2026, 11, 27, 9, 30, tzinfo=dt.UTC)),
        (
            "pending",
            "approved",
            dt.datetime(2026, 11, 27, 10, 30, 1, 5, tzinfo=dt.timezone(dt.timedelta(hours=1))),
        ),
        ("void", "rejected", WHEN),
    ],
)
def test_a_decision_is_written_as_the_model_writes_it(
    text: str, comment: str | None, name: str, state: str, verdict: str, at: dt.datetime
) -> None:
    row = decision_row(text, comment=comment, name=name, state=state, verdict=verdict, at=at)
    assert decision_json(row, None) == decision_of(row).model_dump_json().encode()
    entry = entry_for(row, text)
    expected = decision_of(row, entry).model_dump_json().encode()
    assert decision_json(row, entry) == expected
    # the entry as the timesheets service answered it: its text, read and written again, is itself
    answered = entry.model_dump_json()
    assert Entry.model_validate_json(answered).model_dump_json() == answered
    assert decision_json(row, Entry.model_validate_json(answered), answered) == expected
