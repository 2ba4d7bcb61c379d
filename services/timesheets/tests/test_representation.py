"""The hot routes' JSON, written straight from the rows, is byte for byte what the contract's models
serialise to: every field kind, with and without a decision, names, notes and awkward text."""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from decimal import Decimal

import pytest
from timesheets import cursor
from timesheets.cursor import Position
from timesheets.representation import entry_json, entry_of, page_json, page_of
from timesheets.store import EntryRow

pytestmark = pytest.mark.unit

AWKWARD = ["Seed", 'quote " and \\ backslash', "tab\t newline\n ünïcødé ✓ 𝄞", "\x01 control", "</script>"]
WHEN = dt.datetime(2026, 11, 27, 9, 30, 0, 123456, dt.UTC)


def row(
    text: str, *, decided: bool, name: str = "", notes: str | None = None, hours: str = "7.50"
) -> EntryRow:
    return EntryRow(
        id=uuid.uuid4(),
        owner_issuer="http://localhost:9000/",
        owner_subject=text,
        owner_name=name,
        date=dt.date(2026, 11, 27),
        project=text,
        hours=Decimal(hours),
        notes=notes,
        status="approved" if decided else "submitted",
        decision_id=uuid.uuid4() if decided else None,
        decided_by_issuer="http://localhost:9000/" if decided else None,
        decided_by_subject="bob" if decided else None,
        decided_by_name=text if decided else None,
        decided_at=WHEN if decided else None,
        decision_comment=text if decided else None,
        created_at=WHEN,
        updated_at=dt.datetime(2026, 11, 27, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        deleted_at=None,
    )


@pytest.mark.parametrize("text", AWKWARD)
@pytest.mark.parametrize("decided", [False, True])
@pytest.mark.parametrize(
    ("name", "notes", "hours"), [("", None, "8.00"), ("Alice A.", "wrk", "0.25"), ("x", "", "24")]
)
def test_an_entry_is_written_as_the_model_writes_it(
    text: str, decided: bool, name: str, notes: str | None, hours: str
) -> None:
    entry = row(text, decided=decided, name=name, notes=notes, hours=hours)
    assert entry_json(entry) == entry_of(entry).model_dump_json()


@pytest.mark.parametrize("count", [0, 1, 20, 21])
def test_a_page_is_written_as_the_model_writes_it(count: int) -> None:
    rows = [row(AWKWARD[n % len(AWKWARD)], decided=n % 3 == 0, notes="n") for n in range(count)]
    assert page_json(rows, 20) == page_of(rows, 20).model_dump_json()


def json_cursor(position: Position) -> str:
    """The cursor as ``json.dumps`` writes it (what the service wrote before it wrote it out)."""
    raw = json.dumps(
        [position.date.isoformat(), position.created_at.isoformat(), str(position.id)],
        separators=(",", ":"),
    ).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "created_at",
    [
        WHEN,
        dt.datetime(2026, 11, 27, 9, 30, tzinfo=dt.UTC),  # no microseconds: isoformat leaves them out
        dt.datetime(2026, 11, 27, 9, 30, 1, 5, dt.timezone(dt.timedelta(hours=-3, minutes=-30))),
        dt.datetime(2, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=14))),
        dt.datetime(9999, 12, 31, 23, 59, 59, 999999, dt.UTC),
    ],
)
def test_a_cursor_is_written_as_json_dumps_writes_it(created_at: dt.datetime) -> None:
    position = Position(dt.date(2026, 11, 27), created_at, uuid.uuid4())
    assert cursor.encode(position) == json_cursor(position)
    assert cursor.decode(cursor.encode(position)) == position
