"""Reading the timesheets service's answers: a 200 is parsed and validated from its text in one pass,
with what the separate parse and validation concluded before."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest
from approvals import events
from approvals.peer import (
    PeerUnavailable,
    Timesheets,
    _apply_model,
    _apply_text,
    apply_body,
    entry_from,
    entry_in,
    not_json,
    pending_target,
)
from approvals.peerhttp import PeerHttp
from approvals.store import DecisionRow
from pydantic import ValidationError
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


#: strings as a row may hold them: escapes, non-ASCII, line separators, an emoji, control characters
AWKWARD = (
    "",
    "a",
    'quote " backslash \\ slash /',
    "Zoë 名前 \u2028\u2029 \U0001f600",
    "\t\n\r\b\f\x01\x1f\x7f",
)


def rows_to_write() -> list[DecisionRow]:
    """Decision rows over every member that the applied body writes (the fast writer's corpus)."""
    times = [
        dt.datetime(2026, 11, 23, 9, 30, tzinfo=dt.UTC),
        dt.datetime(2026, 11, 23, 9, 30, 1, 1, tzinfo=dt.UTC),
        dt.datetime(2026, 1, 2, 3, 4, 5, 120000, tzinfo=dt.UTC),
        dt.datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC),
        dt.datetime(5, 1, 1, tzinfo=dt.UTC),
    ]
    rows = [decision_row(decided_at=at) for at in times]
    for text in AWKWARD:
        rows.append(decision_row(comment=text or None, approver_name=text, approver_client=text))
        if text:
            rows.append(decision_row(approver_issuer=text, approver_subject=text, comment=text))
    for kind in ("user", "client", "service"):
        rows.append(decision_row(approver_kind=kind, decision="rejected"))
    rows.append(decision_row(comment="c" * 2000, approver_name="n" * 1000, approver_subject="s" * 1000))
    return rows


def test_the_applied_body_is_written_as_the_contracts_model_writes_it() -> None:
    """``apply_body`` writes the common row directly: the same bytes as ``ApplyDecision``'s
    ``model_dump_json`` (a person's without ``by.kind``), which the timesheets service reads."""
    for row in rows_to_write():
        written = _apply_text(row)
        assert written is not None, row
        assert written == _apply_model(row), row
        assert apply_body(row) == written


def test_a_row_the_model_would_refuse_goes_through_the_model() -> None:
    """What the direct writer cannot vouch for is the model's to answer: out-of-contract lengths,
    verdicts or kinds raise as they did, and a time not in ``dt.UTC`` is written by pydantic."""
    refused = [
        decision_row(approver_issuer=""),
        decision_row(approver_subject="s" * 1001),
        decision_row(approver_name="n" * 1001),
        decision_row(approver_client="c" * 1001),
        decision_row(comment="c" * 2001),
        decision_row(decision="maybe"),
        decision_row(approver_kind="robot"),
    ]
    for row in refused:
        assert _apply_text(row) is None
        with pytest.raises(ValidationError):
            apply_body(row)
    other_zone = decision_row(
        decided_at=dt.datetime(2026, 11, 23, 11, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    )
    assert _apply_text(other_zone) is None
    assert apply_body(other_zone) == _apply_model(other_zone)
    assert json.loads(apply_body(other_zone))["at"] == "2026-11-23T11:30:00+02:00"


def test_a_settlement_id_is_uuid5_of_its_action_and_decision() -> None:
    """The settlement's event id is ``uuid5(SETTLEMENTS, "<action>:<decision id>")`` (from the
    namespace's hash computed once): the same id as before for a decision settled again."""
    for _ in range(50):
        row = decision_row(id=uuid.uuid4())
        for action in ("approval.decided", "approval.voided"):
            expected = uuid.uuid5(events.SETTLEMENTS, f"{action}:{row.id}")
            assert events.settlement_id(row, action) == expected
    fixed = decision_row(id=uuid.UUID("00000000-0000-4000-8000-000000000001"))
    assert str(events.settlement_id(fixed, "approval.decided")) == str(
        uuid.uuid5(uuid.UUID("5d0b6a8e-3c1f-4a53-9f0e-2b7c8d41e6a9"), "approval.decided:" + str(fixed.id))
    )
