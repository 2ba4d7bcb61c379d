"""The details' jsonb text form predicted in Python (audit.jsonb) is Postgres's own for what writers
send; where it is not (floats in exponent notation), the append function answers the right form and
the group is chained again: stored once, the chain verifies. And the other way round: the timestamps
Postgres writes for the verification walk (chain.UTC_TEXT) are the ones chain.timestamp writes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import asyncpg
import pytest
from audit import store as store_module
from audit.chain import UTC_TEXT, timestamp
from audit.intake import fast_read
from audit.jsonb import jsonb_text
from audit.store import AuditStore
from svckit.db import Database

from testkit.fixtures import runtime_url

from .test_group_commit import event

VALUES: list[Any] = [
    {},
    [],
    {"hours": 7.5, "project": "StoreZero", "date": "2026-11-23"},
    {"b": 1, "a": 2, "aa": 3, "ab": [], "": None, "z": {"yy": True, "x": False}},
    {"ü": 1, "z": 2, "zz": 3, "é✓": 4, "𝄞": 5},  # keys ordered by UTF-8 length, then bytes
    {"note": 'quote " backslash \\ slash / tab\t newline\n \u2028 \x01\x1f \x7f ✓ 𝄞'},
    {"n": [0, -1, 9007199254740991, -9007199254740991, 0.1, 100.0, -2.5, 123456.789]},
    {"nested": [[{"k": [1, {"j": "v"}]}], [], {}]},
]


@pytest.fixture
async def conn(audit_schema: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(audit_schema)
    yield connection
    await connection.close()


@pytest.mark.parametrize("value", VALUES, ids=range(len(VALUES)))
async def test_the_predicted_form_is_jsonbs(conn: asyncpg.Connection, value: Any) -> None:
    text = json.dumps(value, ensure_ascii=False)
    assert jsonb_text(value) == await conn.fetchval("SELECT $1::jsonb::text", text)


@pytest.fixture
async def store(audit_schema: str) -> AsyncIterator[AuditStore]:
    database = Database(runtime_url(audit_schema, "audit"), schema="audit", application_name="test-jsonb")
    await database.wait_connected(10)
    yield AuditStore(database, "audit")
    await database.close()


async def test_a_form_predicted_wrong_is_corrected_by_the_database(
    store: AuditStore, conn: asyncpg.Connection
) -> None:
    odd = event(big=1e16, tiny=1e-07, negative_zero=-0.0)
    assert jsonb_text(odd.details) != await conn.fetchval(
        "SELECT $1::jsonb::text", json.dumps(odd.details)
    )  # the case this test is about
    await store.append([event()])  # the process knows the head: the next group goes at once
    assert (await store.append([odd, event()])).accepted == 2
    stored = await conn.fetchval("SELECT details::text FROM audit.records WHERE id = $1", odd.id)
    assert json.loads(stored) == {"big": 1e16, "tiny": 1e-07, "negative_zero": 0}
    assert (await store.verify(observe=False)).ok


INSTANTS = [
    datetime(2026, 12, 3, 19, 55, 52, 123456, UTC),
    datetime(2026, 12, 3, 19, 55, 52, tzinfo=UTC),  # no microseconds: still six digits
    datetime(2026, 1, 1, 0, 30, 0, 5, tzinfo=timezone(timedelta(hours=2))),  # the day before in UTC
    datetime(5, 3, 4, 5, 6, 7, 8, UTC),  # a year below 1000: zero-padded by both
    datetime(9999, 12, 31, 23, 59, 58, 999999, UTC),
    datetime.max.replace(tzinfo=UTC),  # asyncpg stores infinity
    datetime.min.replace(tzinfo=UTC),  # and -infinity
]


@pytest.mark.parametrize("instant", INSTANTS, ids=range(len(INSTANTS)))
async def test_postgres_writes_timestamps_as_the_chain_does(
    conn: asyncpg.Connection, instant: datetime
) -> None:
    written = await conn.fetchval(f"SELECT {UTC_TEXT.format(column='$1::timestamptz')}", instant)
    assert written == timestamp(instant)


def one_pass_body() -> bytes:
    """A batch of events with the details of :data:`VALUES` that the one pass reads (not those whose
    control characters JSON writes as ``\\u`` escapes)."""
    events = [json.loads(event(**value).model_dump_json()) for value in VALUES if value]
    events = [e for e in events if "\\u" not in json.dumps(e, ensure_ascii=False)]
    assert len(events) >= 5
    return json.dumps({"events": events}, ensure_ascii=False, separators=(",", ":")).encode()


class _Frozen(datetime):
    """``datetime`` whose ``now`` is one instant: two groups written at the same time."""

    @classmethod
    def now(cls, tz: Any = None) -> Any:
        return datetime(2026, 12, 6, 4, 30, 0, 123456, UTC)


def test_the_intakes_forms_give_the_documents_and_hashes_the_store_writes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch read by the one pass hands its details forms to the store (:class:`audit.intake.Intake`):
    the documents and hashes are byte for byte those of the same events without them."""
    monkeypatch.setattr(store_module, "datetime", _Frozen)
    found = fast_read(one_pass_body())
    assert found is not None
    assert found.forms is not None
    store = AuditStore.__new__(AuditStore)
    given = store._documents(list(zip(found.batch.events, found.forms, strict=True)), 41, "ab" * 32)
    written = store._documents([(e, None) for e in found.batch.events], 41, "ab" * 32)
    assert given == written


async def test_a_batch_stored_with_the_intakes_forms_verifies(
    store: AuditStore, conn: asyncpg.Connection
) -> None:
    found = fast_read(one_pass_body())
    assert found is not None
    await store.append([event()])  # the process knows the head: the batch goes at once, as sent
    rechained = store.rechained
    result = await store.append(found.batch.events, found.forms)
    assert result.accepted == len(found.batch.events)
    assert result.receipt is not None
    assert store.rechained == rechained  # stored as sent: the forms were jsonb's own
    stored = await conn.fetch(
        "SELECT id, details::text AS details FROM audit.records WHERE id = ANY($1::uuid[])",
        [e.id for e in found.batch.events],
    )
    assert {row["id"]: row["details"] for row in stored} == {
        e.id: form for e, form in zip(found.batch.events, found.forms or [], strict=True)
    }
    assert (await store.verify(observe=False)).ok
