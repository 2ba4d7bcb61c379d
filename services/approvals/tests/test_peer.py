"""Reading the timesheets service's answers: a 200 is parsed and validated from its text in one pass,
with what the separate parse and validation concluded before."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest
from approvals.peer import (
    PeerUnavailable,
    Timesheets,
    apply_body,
    entry_from,
    entry_in,
    not_json,
    pending_target,
)
from approvals.peerhttp import PeerHttp
from approvals.store import DecisionRow
from svckit.contracts.identity import Person
from svckit.contracts.timesheets import ApplyDecision, Entry
from svckit.identity import Identity

from .conftest import decision_row

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


def test_a_queue_target_is_the_query_the_internal_route_reads() -> None:
    from urllib.parse import parse_qs, urlsplit

    odd = Identity("https://login.example/a b?c=d&e", "local|zoë+1", "user", "spa", frozenset(), "")
    for cursor in (None, "abc/+=&", "x" * 40):
        target = urlsplit(pending_target(odd, 20, cursor))
        assert target.path == "/internal/timesheets/pending"
        expected = {"exclude_issuer": [odd.issuer], "exclude_subject": [odd.subject], "limit": ["20"]}
        assert parse_qs(target.query) == expected | ({"cursor": [cursor]} if cursor else {})


async def test_the_first_page_target_is_built_once_per_approver_and_limit() -> None:
    sent: list[str] = []

    class Recorder(PeerHttp):
        async def request(self, method: str, target: str, **options: object) -> tuple[int, bytes]:
            sent.append(target)
            return 200, b"{}"

    timesheets = Timesheets(Recorder.__new__(Recorder), 1.0)  # no connection: it only records
    alice = Identity("http://i/", "alice", "user", "spa", frozenset(), "")
    bob = Identity("http://i/", "bob", "user", "spa", frozenset(), "")
    for who, limit, cursor in (
        (alice, 20, None),
        (alice, 20, None),
        (bob, 20, None),
        (alice, 5, None),
        (alice, 20, "c"),
    ):
        await timesheets.pending(who, limit, cursor)
        assert sent[-1] == pending_target(who, limit, cursor)
    assert len(timesheets._first_pages) == 3


def decision_by(kind: str) -> DecisionRow:
    if kind == "user":
        return decision_row(entry_id=ENTRY.id)
    return decision_row(
        entry_id=ENTRY.id, approver_subject="robot@clients", approver_client="robot", approver_kind=kind
    )


def test_a_persons_decision_is_applied_with_the_body_the_previous_release_accepts() -> None:
    """The previous release's ``Approver`` had no ``kind`` and forbids unknown members: during a
    rolling upgrade (or after a rollback of the timesheets service) a person's decision must still
    apply, so its body leaves ``by.kind`` out; a machine client's carries it."""
    person = json.loads(apply_body(decision_by("user")))
    assert set(person["by"]) == {"issuer", "subject", "name", "client_id"}
    assert ApplyDecision.model_validate(person).by.kind == "user"
    client = json.loads(apply_body(decision_by("client")))
    assert client["by"]["kind"] == "client"
    assert ApplyDecision.model_validate(client).by.kind == "client"
