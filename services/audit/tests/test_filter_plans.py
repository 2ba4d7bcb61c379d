"""Every filter of GET /audit/events reads a bounded number of rows: a filter that matches nothing on
a large trail must not walk the whole table for one page (an auditor's request, repeated, would keep
Postgres scanning the audit trail). Measured with EXPLAIN (ANALYZE, BUFFERS) on the statement the
store sends: the pages (of table and indexes) one empty page of results touches."""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from audit.store import AuditStore
from svckit.contracts.audit import EventsQuery

from testkit.fixtures import create_database, drop_database, migrate_schema

from .conftest import PACKAGE_DIR

RECORDS = 100_000
#: pages one empty result may touch: an index walk that finds nothing touches a handful (the whole
#: trail here is ~4,000 pages of table and ~500 of each index)
BOUND = 100


class Explaining:
    """A stand-in for the store's database: runs each listing statement under EXPLAIN ANALYZE instead
    (and finds nothing, so the store sends every statement it would)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.plans: list[Any] = []

    @contextlib.asynccontextmanager
    async def transaction(self, isolation: str = "read_committed") -> AsyncIterator[Explaining]:
        async with self.conn.transaction():
            yield self

    async def execute(self, sql: str, *params: Any) -> str:
        return str(await self.conn.execute(sql, *params))

    async def fetchval(self, sql: str, *params: Any) -> Any:
        return await self.conn.fetchval(sql, *params)

    async def fetch(self, sql: str, *params: Any) -> list[Any]:
        self.plans.append(await self.conn.fetchval("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, *params))
        return []


def pages_touched(plans: list[Any]) -> int:
    """Shared buffers the statements hit or read (each top node counts its children's)."""
    tops = [json.loads(plan)[0]["Plan"] for plan in plans]
    return sum(int(top["Shared Hit Blocks"]) + int(top["Shared Read Blocks"]) for top in tops)


@pytest.fixture(scope="module")
async def big_trail() -> AsyncIterator[asyncpg.Connection]:
    name = f"tsp_test_plans_{secrets.token_hex(4)}"
    dsn = await create_database(name)
    try:
        await migrate_schema(dsn, "audit", PACKAGE_DIR)
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                """INSERT INTO audit.records
                   SELECT g, gen_random_uuid(), now(), now(), 'timesheets', 'http://localhost:9000/',
                          'alice' || (g % 100), 'user', 'timesheets-spa', 'Alice', 'timesheet.created',
                          'timesheet', gen_random_uuid()::text, 'success', NULL, '{}'::jsonb,
                          repeat('0', 64), repeat('0', 64)
                   FROM generate_series(1, $1::bigint) AS g""",
                RECORDS,
            )
            await conn.execute("ANALYZE audit.records")
            yield conn
        finally:
            await conn.close()
    finally:
        await drop_database(name)


@pytest.mark.parametrize(
    "filters",
    [
        {"actor": "nobody"},
        {"actor_issuer": "https://nowhere.example/"},
        {"client_id": "nobody"},
        {"action": "nothing.happened"},
        {"resource_type": "nothing"},
        {"resource_id": "nothing"},
        {"outcome": "denied"},
        {"source": "nobody"},
        {"from": "2099-01-01T00:00:00Z"},
        {"to": "2001-01-01T00:00:00Z"},
    ],
    ids=lambda filters: ",".join(filters),
)
async def test_a_filter_that_matches_nothing_reads_a_bounded_number_of_rows(
    big_trail: asyncpg.Connection, filters: dict[str, str]
) -> None:
    database = Explaining(big_trail)
    store = AuditStore(database, "audit")  # type: ignore[arg-type]
    await store.list(EventsQuery.model_validate(filters))
    touched = pages_touched(database.plans)
    assert touched <= BOUND, f"{filters}: one empty page touched {touched} pages of a {RECORDS}-record trail"
