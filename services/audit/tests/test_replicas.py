"""Replicas appending in turn to one chain, on a database of their own, as the runtime role.

``append_documents`` (migration 0009) stores a group in one round trip whatever it finds under the
lock: when another replica moved the head, an event is recorded already or a details text is not
jsonb's own form, it chains the group itself, hashing the canonical document in SQL. These tests
hold that path to the Python definition of the chain: the records it writes verify, byte for byte,
and no replica ever takes the locked transaction.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import asyncpg
import pytest
from audit.chain import record_hash
from audit.store import SELECT_COLUMNS, AuditStore
from svckit.contracts.audit import AuditEvent
from svckit.db import Database

from testkit.fixtures import create_migrated_database, drop_database, runtime_url

from .conftest import PACKAGE_DIR

#: strings that every escape rule of the canonical document meets: quotes, backslashes, the short and
#: the \\u escapes of control characters, DEL, non-ASCII (2, 3 and 4 bytes), U+2028, a "/"
AWKWARD = '"q" \\ / \x01\x08\x0c\n\r\t\x1f\x7f é € 😀 \u2028 </script>'


@pytest.fixture
async def dsn() -> AsyncIterator[str]:
    name = f"tsp_test_audit_{secrets.token_hex(4)}"
    url = await create_migrated_database(name, "audit", PACKAGE_DIR)
    try:
        yield runtime_url(url, "audit")
    finally:
        await drop_database(name)


class NoLockedPath(AuditStore):
    async def _append_locked(
        self, events: Sequence[AuditEvent], committed: Any, placed: dict[uuid.UUID, Any]
    ) -> set[uuid.UUID]:
        raise AssertionError("a replica fell back to the locked transaction")


@pytest.fixture
async def replicas(dsn: str) -> AsyncIterator[list[AuditStore]]:
    stores: list[AuditStore] = []
    for n in range(2):
        database = Database(dsn, schema="audit", application_name=f"test-replica-{n}")
        await database.wait_connected(10)
        stores.append(NoLockedPath(database, "audit"))
    yield stores
    for store in stores:
        await store.database.close()


def event(subject: str = "alice", **fields: Any) -> AuditEvent:
    return AuditEvent.model_validate(
        {
            "id": str(uuid.uuid4()),
            "occurred_at": datetime.now(UTC).isoformat(),
            "source": "timesheets",
            "actor": {
                "issuer": "http://localhost:9000/",
                "subject": subject,
                "kind": "user",
                "client_id": "spa",
            },
            "action": "timesheet.created",
            "resource": {"type": "timesheet", "id": str(uuid.uuid4())},
            "outcome": "success",
            "details": {"hours": 7.5},
            **fields,
        }
    )


async def records(dsn: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(f"SELECT {SELECT_COLUMNS} FROM audit.records ORDER BY seq"))
    finally:
        await conn.close()


async def assert_chain(store: AuditStore, dsn: str, count: int) -> None:
    """Verified by the walk, and every stored hash recomputed by the Python definition."""
    result = await store.verify(observe=False)
    assert (result.ok, result.checked, result.reason) == (True, count, None)
    rows = await records(dsn)
    assert [row["seq"] for row in rows] == list(range(1, count + 1))
    # (asyncpg reads -infinity as a naive datetime.min: those two rows are the walk's alone)
    assert all(row["hash"] == record_hash(row) for row in rows if row["occurred_at"].tzinfo is not None)


async def test_replicas_appending_in_turn_chain_in_one_round_trip_each(
    replicas: list[AuditStore], dsn: str
) -> None:
    a, b = replicas
    sent = []
    for turn in range(20):
        store = replicas[turn % 2]
        batch = [event() for _ in range(1 + turn % 3)]
        sent += batch
        result = await store.append(batch)
        assert (result.accepted, result.duplicates) == (len(batch), 0)
    # from the second turn on, each found the head the other had moved: chained by the database
    assert a.rechained + b.rechained >= 19
    await assert_chain(a, dsn, len(sent))
    assert {row["id"] for row in await records(dsn)} == {e.id for e in sent}


async def test_replicas_appending_concurrently_never_take_the_locked_path(
    replicas: list[AuditStore], dsn: str
) -> None:
    receipts: dict[uuid.UUID, tuple[int, str]] = {}

    async def sender(store: AuditStore, n: int) -> int:
        accepted = 0
        for _ in range(n):
            sent = event()
            result = await store.append([sent])
            accepted += result.accepted
            assert result.receipt is not None
            assert result.receipt.id == sent.id
            receipts[sent.id] = (result.receipt.seq, result.receipt.hash)
        return accepted

    counts = await asyncio.gather(*(sender(replicas[i % 2], 15) for i in range(8)))
    assert sum(counts) == 120
    await assert_chain(replicas[0], dsn, 120)
    # the receipts (svckit.receipts) name each record as stored, chained here or by the database
    conn = await asyncpg.connect(dsn)
    try:
        stored = {
            row["id"]: (row["seq"], row["hash"])
            for row in await conn.fetch("SELECT id, seq, hash FROM audit.records")
        }
    finally:
        await conn.close()
    assert receipts == stored


async def test_an_event_recorded_by_the_other_replica_is_a_duplicate_and_the_rest_is_chained(
    replicas: list[AuditStore], dsn: str
) -> None:
    a, b = replicas
    first, second, third = event(), event(), event()
    assert (await a.append([first])).accepted == 1
    assert (await b.append([second])).accepted == 1  # b's first group: head unknown, chained by SQL
    result = await b.append([third, first])  # b's head is right, but first is recorded (by a)
    assert (result.accepted, result.duplicates) == (1, 1)
    result = await a.append([second, event()])  # a's head is stale, second recorded
    assert (result.accepted, result.duplicates) == (1, 1)
    await assert_chain(a, dsn, 4)


async def test_the_database_hashes_every_field_as_the_python_definition_does(
    replicas: list[AuditStore], dsn: str
) -> None:
    """Rechained by SQL (the head is the other replica's), awkward values in every string field,
    details that jsonb writes otherwise than predicted (a float in exponent notation, big numbers),
    timestamps with offsets, in year 5, and the two that are stored as infinity."""
    a, b = replicas
    assert (await a.append([event()])).accepted == 1
    awkward = [
        event(
            subject=AWKWARD,
            action="timesheet.created",
            request_id=AWKWARD,
            resource={"type": "timesheet", "id": AWKWARD},
            details={AWKWARD: [AWKWARD, 1e100, 1.5e-7, 12345678901234567890, -0.0, None, True, {}]},
        ),
        event(
            occurred_at=datetime(5, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=-3))).isoformat(),
            request_id=None,
            details={"b": 1, "a": {"deep": ["x"]}, "ü": 2.5},
        ),
        event(occurred_at=datetime.max.replace(tzinfo=UTC).isoformat(), details={}),
        event(occurred_at=datetime.min.replace(tzinfo=UTC).isoformat(), details={"n": 1e-5}),
    ]
    awkward[0] = awkward[0].model_copy(
        update={"actor": awkward[0].actor.model_copy(update={"issuer": AWKWARD, "client_id": AWKWARD})}
    )
    before = b.rechained
    result = await b.append(awkward)
    assert (result.accepted, result.duplicates) == (4, 0)
    assert b.rechained == before + 1
    # and the same values on the usual path (a's head is stale now: it learns b's from its answer)
    await a.append([event()])
    again = [
        e.model_copy(update={"id": uuid.uuid4(), "details": {AWKWARD: [AWKWARD, 2.5, -1, None, True, {}]}})
        for e in awkward
    ]
    rechained = a.rechained
    assert (await a.append(again)).accepted == 4
    assert a.rechained == rechained  # stored as sent: the documents' values read by Postgres
    await assert_chain(a, dsn, 10)
    rows = await records(dsn)
    assert rows[1]["actor_subject"] == AWKWARD
    assert rows[1]["resource_id"] == AWKWARD
    assert rows[2]["request_id"] is None
    conn = await asyncpg.connect(dsn)
    try:
        infinite = await conn.fetch(
            "SELECT seq, occurred_at::text FROM audit.records WHERE NOT isfinite(occurred_at) ORDER BY seq"
        )
    finally:
        await conn.close()
    assert [tuple(row) for row in infinite] == [
        (4, "infinity"),
        (5, "-infinity"),
        (9, "infinity"),
        (10, "-infinity"),
    ]


async def test_a_lost_answer_reports_the_events_that_were_recorded_before(
    replicas: list[AuditStore], dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The statement committed but its answer was lost: the reread tells the events stored by this
    group from those already on the chain, and gives the head."""
    a, b = replicas
    recorded = event()
    assert (await a.append([recorded])).accepted == 1
    database = b.database
    real = database.write_once

    async def answer_lost(query: str, *args: Any, committed: Any, reread: Any) -> Any:
        await real(query, *args, committed=committed, reread=reread)
        async with database.connection() as conn:
            assert await committed(conn)
            return await reread(conn)

    monkeypatch.setattr(database, "write_once", answer_lost)
    result = await b.append([recorded, event()])
    assert (result.accepted, result.duplicates) == (1, 1)
    monkeypatch.undo()
    assert (await b.append([event()])).accepted == 1
    await assert_chain(a, dsn, 3)
