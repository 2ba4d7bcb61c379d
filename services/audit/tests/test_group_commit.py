"""Group commit on the real database, as the runtime role: concurrent ingests share a transaction
and still form one gap-free, linked chain; one caller's refused data fails that caller alone; the
head row follows every insert, also the previous release's (which finds the head in the records)."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from audit.store import AuditStore, chain_row
from svckit.contracts.audit import AuditEvent
from svckit.db import Database

from testkit.fixtures import runtime_url


@pytest.fixture
async def ingest(audit_schema: str) -> AsyncIterator[AuditStore]:
    database = Database(runtime_url(audit_schema, "audit"), schema="audit", application_name="test-group")
    await database.wait_connected(10)
    yield AuditStore(database, "audit")
    await database.close()


def event(**details: Any) -> AuditEvent:
    return AuditEvent.model_validate(
        {
            "id": str(uuid.uuid4()),
            "occurred_at": datetime.now(UTC).isoformat(),
            "source": "timesheets",
            "actor": {
                "issuer": "http://localhost:9000/",
                "subject": "alice",
                "kind": "user",
                "client_id": "spa",
            },
            "action": "timesheet.created",
            "resource": {"type": "timesheet", "id": str(uuid.uuid4())},
            "outcome": "success",
            "details": details or {"hours": 7.5},
        }
    )


async def tail(audit_schema: str, ids: list[uuid.UUID]) -> list[asyncpg.Record]:
    """The records from the first of ``ids`` to the head, in chain order, and the head row."""
    conn = await asyncpg.connect(audit_schema)
    try:
        first = await conn.fetchval("SELECT min(seq) FROM audit.records WHERE id = ANY($1::uuid[])", ids)
        rows = await conn.fetch(
            "SELECT seq, id, prev_hash, hash FROM audit.records WHERE seq >= $1 - 1 ORDER BY seq", first
        )
        head = await conn.fetchrow("SELECT seq, hash FROM audit.chain_head")
    finally:
        await conn.close()
    assert head is not None
    assert (head["seq"], head["hash"]) == (rows[-1]["seq"], rows[-1]["hash"]), (
        "the head row is the newest record"
    )
    for before, after in itertools.pairwise(rows):
        assert after["seq"] == before["seq"] + 1
        assert after["prev_hash"] == before["hash"]
    return [row for row in rows if row["seq"] >= first]


async def test_concurrent_ingests_share_one_transaction_and_one_chain(
    ingest: AuditStore, audit_schema: str
) -> None:
    events = [event() for _ in range(30)]
    before = ingest.group_commits
    results = await asyncio.gather(*(ingest.append([e]) for e in events))
    assert all((r.accepted, r.duplicates) == (1, 0) for r in results)
    assert ingest.group_commits - before < len(events)  # they queued behind the first and shared
    rows = await tail(audit_schema, [e.id for e in events])
    assert {row["id"] for row in rows} >= {e.id for e in events}


async def test_a_duplicate_across_callers_of_one_group_is_stored_once(
    ingest: AuditStore, audit_schema: str
) -> None:
    shared = event()
    results = await asyncio.gather(ingest.append([shared, event()]), ingest.append([shared]))
    assert sorted((r.accepted, r.duplicates) for r in results) == [(0, 1), (2, 0)]
    rows = await tail(audit_schema, [shared.id])
    assert [row["id"] for row in rows].count(shared.id) == 1


async def test_one_callers_refused_data_fails_that_caller_alone(
    ingest: AuditStore, audit_schema: str
) -> None:
    good = [event(), event()]
    # valid JSON that jsonb refuses (the contract refuses it first; this stands for any row the
    # database would refuse)
    poison = event().model_copy(update={"details": {"note": "\u0000"}})
    results = await asyncio.gather(
        ingest.append([good[0]]), ingest.append([poison]), ingest.append([good[1]]), return_exceptions=True
    )
    assert isinstance(results[1], asyncpg.PostgresError), results[1]
    assert [(r.accepted, r.duplicates) for r in (results[0], results[2])] == [(1, 0), (1, 0)]  # type: ignore[union-attr]
    rows = await tail(audit_schema, [e.id for e in good])
    assert poison.id not in {row["id"] for row in rows}


async def test_the_head_follows_appends_by_the_previous_release(
    ingest: AuditStore, audit_schema: str
) -> None:
    """Release N-1 takes the same lock and finds the head in the records; the trigger keeps the
    head row right for the next group commit."""
    old = event()
    conn = await asyncpg.connect(runtime_url(audit_schema, "audit"))
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", ingest.lock_key)
            last = await conn.fetchrow("SELECT seq, hash FROM audit.records ORDER BY seq DESC LIMIT 1")
            seq, prev = (last["seq"], last["hash"]) if last is not None else (0, "0" * 64)
            details = await conn.fetchval("SELECT '{\"hours\": 7.5}'::jsonb::text")
            row = chain_row(old, seq + 1, datetime.now(UTC), details, prev)
            await conn.copy_records_to_table(
                "records", schema_name="audit", columns=AuditStore.columns, records=[row]
            )
    finally:
        await conn.close()
    new = event()
    assert (await ingest.append([new])).accepted == 1
    rows = await tail(audit_schema, [old.id])
    assert [row["id"] for row in rows][:2] == [old.id, new.id]


@pytest.mark.parametrize("bad", ["g" * 64, "A" * 64, "a" * 63, "a" * 65, "\u00e4" * 64, ""])
@pytest.mark.parametrize("column", ["prev_hash", "hash"])
async def test_the_hash_columns_take_64_lowercase_hex_digits_only(
    audit_schema: str, bad: str, column: str
) -> None:
    """Checked by length and ltrim since 0007 (the regular expression cost a third of an insert):
    the same rule, still the database's."""
    row = dict.fromkeys(("prev_hash", "hash"), "0" * 64) | {column: bad}
    conn = await asyncpg.connect(runtime_url(audit_schema, "audit"))
    try:
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO audit.records (seq, id, occurred_at, recorded_at, source, actor_issuer,"
                " actor_subject, actor_kind, actor_client_id, actor_name, action, resource_type,"
                " resource_id, outcome, details, prev_hash, hash) VALUES (9000000000000000000,"
                " gen_random_uuid(), now(), now(), 's', 'i', 's', 'user', 'c', 'n', 'a', 't', 'r',"
                " 'success', '{}', $1, $2)",
                row["prev_hash"],
                row["hash"],
            )
    finally:
        await conn.close()
