"""The statements that settle or touch one pending decision find it by its primary key, never by
walking ``decisions_pending``.

Why: ``WHERE id = $1 AND state = 'pending'`` also matches the partial index ``decisions_pending``
(``ON decisions (updated_at) WHERE state = 'pending'``), and once the table has been analysed with
most decisions settled, the planner takes that index as the cheaper path (it holds few live rows) and
filters it by ``id``. But a settled decision's old version stays in that index until a vacuum, and
while any transaction holds the horizon back (the relays' claim transactions, a backup's snapshot) a
scan cannot mark those entries dead: every settle then visited every decision settled since —
thousands of heap pages per statement after a few thousand decisions (8,179 buffers, 2.2 ms, at
10,000), growing until the next vacuum.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from approvals import store

from testkit.fixtures import create_migrated_database, drop_database

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "approvals"
SETTLED_BEFORE = 5000
#: the primary key's lookup, the update of one row and its outbox row (~12 buffers); walking
#: ``decisions_pending`` here visits every heap page the settled decisions' old versions are on (~130)
BUFFERS_OF_ONE_ROW = 40


@pytest.fixture
async def settled_database() -> AsyncIterator[asyncpg.Connection]:
    """A database of its own with :data:`SETTLED_BEFORE` decisions settled while another transaction
    held the horizon back (so their old versions stay in ``decisions_pending``), then analysed."""
    name = f"tsp_test_settle_plans_{secrets.token_hex(4)}"
    url = await create_migrated_database(name, "approvals", PACKAGE_DIR)
    conn = await asyncpg.connect(url, server_settings={"search_path": "approvals"})
    holder = await asyncpg.connect(url)
    try:
        holding = holder.transaction(isolation="repeatable_read")
        await holding.start()
        await holder.fetchval("SELECT txid_current()")  # a snapshot and an id: the horizon is held
        await conn.execute(
            """INSERT INTO decisions (id, entry_id, decision, approver_issuer, approver_subject,
                                      approver_name, approver_client, approver_kind)
               SELECT gen_random_uuid(), gen_random_uuid(), 'approved', 'http://localhost:9000/',
                      'bob', '', 'timesheets-spa', 'user'
               FROM generate_series(1, $1)""",
            SETTLED_BEFORE,
        )
        await conn.execute(
            "UPDATE decisions SET state = 'applied', applied_at = clock_timestamp() WHERE state = 'pending'"
        )
        await conn.execute("ANALYZE decisions")
        yield conn
        await holding.rollback()
    finally:
        await holder.close()
        await conn.close()
        await drop_database(name)


async def pending(conn: asyncpg.Connection) -> uuid.UUID:
    decision_id = uuid.uuid4()
    row = await conn.fetchrow(
        store.RECORD_PENDING,
        decision_id,
        uuid.uuid4(),
        "approved",
        None,
        "http://localhost:9000/",
        "carol",
        "",
        "timesheets-spa",
        None,
        "user",
    )
    assert row is not None
    return decision_id


def plan_nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node, *(child for sub in node.get("Plans", ()) for child in plan_nodes(sub))]


async def settle_plan(conn: asyncpg.Connection, sql: str, *args: Any, generic: bool) -> dict[str, Any]:
    """The executed plan of ``sql`` (it runs: ``EXPLAIN ANALYZE``), as a custom plan or as the
    generic one a prepared statement settles on."""
    await conn.execute(f"SET plan_cache_mode = {'force_generic_plan' if generic else 'force_custom_plan'}")
    try:
        explained = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", *args)
    finally:
        await conn.execute("RESET plan_cache_mode")
    document: list[dict[str, Any]] = json.loads(explained)
    plan: dict[str, Any] = document[0]["Plan"]
    return plan


def event(decision_id: uuid.UUID) -> tuple[uuid.UUID, dt.datetime, str]:
    """An outbox row's values (the statements queue it; what it says does not matter here)."""
    return uuid.uuid4(), dt.datetime.now(dt.UTC), json.dumps({"action": "x", "resource": str(decision_id)})


@pytest.mark.parametrize("generic", [False, True], ids=["custom", "generic"])
@pytest.mark.parametrize("statement", ["mark_applied", "mark_void", "record_attempt"])
async def test_a_settle_finds_its_decision_by_primary_key(
    settled_database: asyncpg.Connection, statement: str, generic: bool
) -> None:
    conn = settled_database
    decision_id = await pending(conn)
    arguments: tuple[Any, ...]
    if statement == "mark_applied":
        sql, arguments = store.MARK_APPLIED, (decision_id, *event(decision_id))
    elif statement == "mark_void":
        sql, arguments = store.MARK_VOID, (decision_id, "entry_gone", *event(decision_id))
    else:
        sql, arguments = store.RECORD_ATTEMPT, (decision_id, "timesheets unreachable")
    plan = await settle_plan(conn, sql, *arguments, generic=generic)
    nodes = plan_nodes(plan)
    scans = {
        node.get("Index Name") or node["Node Type"]
        for node in nodes
        if node.get("Relation Name") == "decisions" and node["Node Type"].endswith("Scan")
    }
    touched = plan["Shared Hit Blocks"] + plan["Shared Read Blocks"]
    assert scans == {"decisions_pkey"}, f"{scans}: {touched} buffers to settle one decision"
    assert touched <= BUFFERS_OF_ONE_ROW, f"{touched} buffers to settle one decision"
    state = await conn.fetchval("SELECT state FROM decisions WHERE id = $1", decision_id)
    assert state == {"mark_applied": "applied", "mark_void": "void", "record_attempt": "pending"}[statement]
