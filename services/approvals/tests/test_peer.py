"""Reading the timesheets service's answers: a 200 is parsed and validated from its text in one pass,
with what the separate parse and validation concluded before."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from approvals.peer import PeerUnavailable, entry_from, entry_in, not_json
from svckit.contracts.identity import Person
from svckit.contracts.timesheets import Entry

pytestmark = pytest.mark.unit

NOW = dt.datetime(2026, 11, 23, 9, 30, tzinfo=dt.UTC)
ENTRY = Entry(
    id=uuid.uuid4(),
    owner=Person(issuer="http://i/", subject="alice", name="Zoë"),
    date=dt.date(2026, 11, 23),
    project="P",
    hours=7.5,
    notes=None,
    status="submitted",
    decision=None,
    created_at=NOW,
    updated_at=NOW,
)


def test_an_entry_reads_the_same_from_its_text_as_from_its_document() -> None:
    text = ENTRY.model_dump_json()
    assert entry_from(text) == entry_in(ENTRY.model_dump(mode="json")) == ENTRY


def test_json_that_breaks_the_contract_is_no_entry_and_text_that_is_not_json_is_a_broken_peer() -> None:
    assert entry_from('{"id": "nope"}') is None
    assert entry_from("") is None  # an empty answer holds no entry (as before: no body, no entry)
    assert not_json('{"a": 1}') is None
    assert isinstance(not_json("<html>oops</html>"), PeerUnavailable)
    with pytest.raises(PeerUnavailable, match="not JSON"):
        entry_from("<html>oops</html>")
