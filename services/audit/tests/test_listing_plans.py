"""GET /audit/events on a realistic trail: combinations of filters and from/to windows read what they
select, not the trail they exclude; a listing that would still run long is stopped (422) and cannot
take the connections ingestion needs.

The plans are read with EXPLAIN (ANALYZE, BUFFERS) of the very statements the store sends, on a trail
of :data:`RECORDS` records shaped like the platform's (``realistic_trail``): deterministic page counts,
no timing. Before migration 0013 and the store's listing plan, each combination below walked the
primary key newest first and read the whole trail for one page (~14,500 pages here; at 1M records
~72,000 pages and ~300 ms, at 100M the 30 s command timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from audit.app import create_app
from audit.settings import AuditSettings
from audit.store import EXACT_FILTERS, AuditStore
from svckit.contracts.audit import EventsQuery, encode_cursor
from svckit.settings import load_settings

from testkit.auditevents import make_event
from testkit.client import SignedApi
from testkit.fixtures import Caller, create_database, drop_database, migrate_schema, runtime_url, serve_app

from .conftest import AUDITOR, PACKAGE_DIR, TIMESHEETS, wait_ready
from .realistic_trail import PARTNER, recorded, seed

RECORDS = 200_000
#: pages (of table and indexes) one page of results may touch: a tenth of the trail's ~14,500 (the
#: store's band below the cursor alone is ~300, a day's window ~400)
BOUND = 1_500


def iso(seq: int) -> str:
    return recorded(seq).isoformat().replace("+00:00", "Z")


class Explaining:
    """The store's database, but every listing statement also runs under EXPLAIN (ANALYZE, BUFFERS),
    its plan kept; the rows are the statement's own, so the store takes the path it would take."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.plans: list[dict[str, Any]] = []

    @contextlib.asynccontextmanager
    async def transaction(self, isolation: str = "read_committed") -> AsyncIterator[Explaining]:
        async with self.conn.transaction():
            yield self

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Explaining]:
        yield self

    async def execute(self, sql: str, *params: Any) -> str:
        return str(await self.conn.execute(sql, *params))

    async def fetchval(self, sql: str, *params: Any) -> Any:
        return await self.conn.fetchval(sql, *params)

    async def fetch(self, sql: str, *params: Any) -> list[asyncpg.Record]:
        plan = await self.conn.fetchval("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, *params)
        self.plans.append(json.loads(plan)[0]["Plan"])
        return list(await self.conn.fetch(sql, *params))

    def pages(self) -> int:
        """Shared buffers every listing statement hit or read (a top node counts its children's)."""
        return sum(int(plan["Shared Hit Blocks"]) + int(plan["Shared Read Blocks"]) for plan in self.plans)


@pytest.fixture(scope="module")
async def big_trail() -> AsyncIterator[str]:
    name = f"tsp_test_listing_{secrets.token_hex(4)}"
    dsn = await create_database(name)
    try:
        await migrate_schema(dsn, "audit", PACKAGE_DIR)
        conn = await asyncpg.connect(dsn)
        try:
            await seed(conn, "audit", RECORDS)
        finally:
            await conn.close()
        yield dsn
    finally:
        await drop_database(name)


@pytest.fixture
async def owner(big_trail: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(big_trail)
    try:
        yield conn
    finally:
        await conn.close()


COMBINATIONS = {
    # pairs an auditor combines: a few old matches, or none
    "denied by timesheets": {"outcome": "denied", "source": "timesheets"},
    "created by approvals": {"action": "timesheet.created", "source": "approvals"},
    "the partner's denials": {"client_id": PARTNER, "outcome": "denied"},
    "denied decisions": {"action": "approval.decided", "outcome": "denied"},
    "gateway successes": {"source": "gateway", "outcome": "success"},
    # windows: early, in the past, the last page of a recent one
    "to early": {"to": iso(RECORDS // 100)},
    "to early, next page": {"to": iso(RECORDS // 100), "cursor": encode_cursor(RECORDS // 100 - 60)},
    "a day in the past": {"from": iso(RECORDS // 2), "to": iso(RECORDS // 2 + 8640)},
    "the last day, last page": {"from": iso(RECORDS - 8640), "cursor": encode_cursor(RECORDS - 8630)},
    "a day in the past, denied": {
        "from": iso(RECORDS // 2),
        "to": iso(RECORDS // 2 + 8640),
        "outcome": "denied",
    },
    "an actor's denials": {"actor": "local|user7", "outcome": "denied"},
}


@pytest.mark.parametrize("filters", COMBINATIONS.values(), ids=COMBINATIONS.keys())
async def test_a_combination_reads_what_it_selects_not_the_trail(
    owner: asyncpg.Connection, filters: dict[str, str]
) -> None:
    database = Explaining(owner)
    store = AuditStore(database, "audit")  # type: ignore[arg-type]
    rows, _ = await store.list(EventsQuery.model_validate(filters))
    pages = database.pages()
    assert pages <= BOUND, f"{filters}: one page touched {pages} pages of a {RECORDS}-record trail"
    # the same page as a plain scan of the whole trail would give
    expected = await owner.fetch(
        "SELECT seq FROM audit.records WHERE "
        + " AND ".join(
            [
                *(f"{column} = '{filters[key]}'" for key, column in FILTER_COLUMNS.items() if key in filters),
                *([f"occurred_at >= '{filters['from']}'"] if "from" in filters else []),
                *([f"occurred_at < '{filters['to']}'"] if "to" in filters else []),
                *(
                    [f"seq < {EventsQuery.model_validate(filters).before_seq}"]
                    if "cursor" in filters
                    else ["true"]
                ),
            ]
        )
        + " ORDER BY seq DESC LIMIT 50"
    )
    assert [row.seq for row in rows] == [row["seq"] for row in expected]


FILTER_COLUMNS = {
    "actor": "actor_subject",
    "client_id": "actor_client_id",
    "action": "action",
    "outcome": "outcome",
    "source": "source",
}


async def test_every_exact_set_of_filters_leads_an_index(owner: asyncpg.Connection) -> None:
    """The store walks an index for the filter sets of EXACT_FILTERS: each must lead an index of
    records (its columns in any order, then seq), or the walk filters after all."""
    indexes = await owner.fetch(
        """SELECT array_agg(a.attname ORDER BY k.n) AS columns
           FROM pg_index i
           JOIN pg_class c ON c.oid = i.indrelid AND c.relname = 'records'
           JOIN pg_namespace s ON s.oid = c.relnamespace AND s.nspname = 'audit'
           CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
           JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
           GROUP BY i.indexrelid"""
    )
    leading = {frozenset(row["columns"][:-1]) for row in indexes if row["columns"][-1] == "seq"}
    leading.add(frozenset())  # the primary key
    # resource_type alone leads (resource_type, resource_id, seq): see EXACT_FILTERS
    assert EXACT_FILTERS - leading == {frozenset({"resource_type"})}


def listing_settings(big_trail: str, service_env: dict[str, str], **overrides: Any) -> AuditSettings:
    env = {**service_env, "DATABASE_URL": runtime_url(big_trail, "audit")}
    return load_settings(AuditSettings, env=env, audit_verify_interval_seconds=0, **overrides)


#: a window of all but the newest records: no band fills it, every match is read and sorted
SLOW = {"from": iso(1), "to": iso(RECORDS - 10_000)}
#: matches nothing, and each filter alone selects much: ~50 ms here whatever the plan (the anonymous
#: actor's records walked, or gathered and sorted)
HEAVY = {"actor": "anonymous", "resource_type": "timesheet"}


async def test_a_listing_that_runs_too_long_is_stopped_and_says_how_to_narrow_it(
    big_trail: str, service_env: dict[str, str], caller: Caller
) -> None:
    settings = listing_settings(big_trail, service_env, audit_read_timeout_seconds=0.01)
    async with serve_app(create_app(settings)) as url:
        await wait_ready(url)
        api = SignedApi(url, caller)
        try:
            reply = await api.call("GET", "/audit/events", AUDITOR, params=SLOW)
            assert reply.status == 422, reply.text
            assert reply.headers["content-type"].startswith("application/problem+json")
            assert reply.body["errors"][0]["type"] == "query_too_broad"
            assert "from/to" in reply.body["detail"]
            # narrowed, it answers; and ingestion never noticed
            narrow = {"from": iso(RECORDS // 2), "to": iso(RECORDS // 2 + 360)}
            reply = await api.call("GET", "/audit/events", AUDITOR, params=narrow)
            assert reply.status == 200, reply.text
            assert len(reply.body["items"]) == 50
            event = make_event()
            reply = await api.call("POST", "/internal/events", TIMESHEETS, json={"events": [event]})
            assert reply.status == 200, reply.text
        finally:
            await api.close()


async def test_listings_cannot_take_the_connections_ingestion_needs(
    big_trail: str, service_env: dict[str, str], caller: Caller
) -> None:
    """Thirty heavy listings at once on a pool of three: two run at a time (AUDIT_READ_CONCURRENCY is
    held below DB_POOL_MAX), so an event is stored at once, never waiting past the pool's 0.5 s for a
    connection (a 503 before). A listing refused for want of a turn is a 503 with Retry-After."""
    settings = listing_settings(
        big_trail,
        service_env,
        db_pool_min=0,
        db_pool_max=3,
        db_connect_timeout_seconds=0.5,
        audit_read_timeout_seconds=1.0,
    )
    async with serve_app(create_app(settings)) as url:
        await wait_ready(url)
        api = SignedApi(url, caller)
        try:
            listings = [
                asyncio.ensure_future(api.call("GET", "/audit/events", AUDITOR, params=HEAVY))
                for _ in range(30)
            ]
            await asyncio.sleep(0.05)
            for _ in range(10):
                event = make_event()
                reply = await api.call("POST", "/internal/events", TIMESHEETS, json={"events": [event]})
                assert reply.status == 200, reply.text
                await asyncio.sleep(0.05)
            answers = await asyncio.gather(*listings)
            assert {reply.status for reply in answers} <= {200, 422, 503}, [r.text for r in answers]
            for reply in answers:
                if reply.status == 503:
                    assert reply.headers["retry-after"]
        finally:
            await api.close()
