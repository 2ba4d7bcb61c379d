"""Locks held too long by another session: bounded waits on real Postgres (session settings only, the
shared server's configuration untouched).

* ``lock_timeout`` (``DB_LOCK_TIMEOUT_SECONDS``): a statement on a table another session holds is
  refused by the server after the bound — not after the statement bound, its connection closed —
  answered 503 ``database_busy`` with ``Retry-After``, counted, and the connection pooled again.
* ``idle_in_transaction_session_timeout`` (``DB_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS``): a session of
  the service's own left idle inside a transaction (a stuck handler) is ended by the server, and
  what it locked is free again.
* The settings keep the bounds in order: lock < statement, migration's lock < request's lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from svckit.app import create_service_app
from svckit.db import UNAVAILABLE_ERRORS, Database, lock_timeouts
from svckit.settings import DatabaseSettings, ServiceSettings, SettingsError, load_settings

from testkit.fixtures import receiver_env, serve_app

LOCK_S = 0.3


@pytest.fixture
async def table(database_url: str) -> AsyncIterator[str]:
    name = f"locked_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f"CREATE TABLE public.{name} (id integer PRIMARY KEY)")
        await conn.execute(f"INSERT INTO public.{name} VALUES (1)")
        yield name
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS public.{name}")
        await conn.close()


async def pooled_sessions(database: Database) -> set[int]:
    """The server pids of every session the pool holds, each checked for its lock bound: all of them
    at once, since which one a request gets is the pool's choice."""
    async with contextlib.AsyncExitStack() as stack:
        held = [await stack.enter_async_context(database.connection()) for _ in range(database.max_size)]
        for conn in held:
            assert await conn.fetchval("SHOW lock_timeout") == f"{int(LOCK_S * 1000)}ms"
        return {conn.get_server_pid() for conn in held}


async def test_a_locked_table_is_answered_database_busy_after_the_lock_bound(
    database_url: str, table: str, identity_keys: dict[str, str]
) -> None:
    database = Database(
        database_url, schema="public", max_size=2, statement_timeout=10.0, lock_timeout=LOCK_S
    )

    async def read(request: Request) -> Response:
        async with database.connection() as conn:
            return JSONResponse({"rows": await conn.fetchval(f"SELECT count(*) FROM {table}")})

    settings = load_settings(ServiceSettings, env=receiver_env(identity_keys))
    app = create_service_app(
        settings, [Route("/rows", read, methods=["GET"])], database=database, require_identity=False
    )
    holder = await asyncpg.connect(database_url)
    try:
        async with serve_app(app) as base, aiohttp.ClientSession() as http:
            await database.wait_connected(10)
            sessions = await pooled_sessions(database)
            counted = lock_timeouts._value.get()
            async with holder.transaction():
                await holder.execute(f"LOCK TABLE public.{table} IN ACCESS EXCLUSIVE MODE")
                started = time.monotonic()
                async with http.get(base + "/rows") as response:
                    took = time.monotonic() - started
                    body = await response.json(content_type=None)
                    assert response.status == 503, body
                    assert response.headers["Retry-After"]
                    assert body["reason"] == "database_busy", body
            # the server's bound, not the statement bound (10 s) the request waited before (the
            # margin is for a loaded host: a scheduling stall is no lock bound missed)
            assert LOCK_S <= took < 5.0, took
            assert lock_timeouts._value.get() == counted + 1
            # the refused session is fine: the pool holds the same sessions as before (none closed
            # and replaced), each with its bound, and the table serves once it is free
            async with http.get(base + "/rows") as response:
                assert response.status == 200
            assert await pooled_sessions(database) == sessions
    finally:
        await holder.close()
        await database.close()


async def test_a_session_idle_in_a_transaction_is_ended_and_its_lock_freed(
    database_url: str, table: str
) -> None:
    database = Database(database_url, schema="public", max_size=1, idle_in_transaction_timeout=0.5)
    other = await asyncpg.connect(database_url)
    try:
        await database.wait_connected(10)
        stuck: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def stuck_handler() -> None:
            # a handler that locked a row and then hangs inside its transaction
            async with database.transaction() as conn:
                await conn.execute(f"SELECT id FROM {table} WHERE id = 1 FOR UPDATE")
                await stuck

        handler = asyncio.create_task(stuck_handler())
        await asyncio.sleep(0.1)
        started = time.monotonic()
        # the row is free again once the server ended the idle session (not when the handler wakes)
        async with other.transaction():
            await other.execute("SET LOCAL lock_timeout = '5s'")
            await other.execute(f"SELECT id FROM {table} WHERE id = 1 FOR UPDATE")
        assert time.monotonic() - started < 3.0
        stuck.set_result(None)
        with pytest.raises(UNAVAILABLE_ERRORS):  # its transaction is gone: 503 for its request
            await handler
        # and the pool serves on with a new session
        async with database.connection() as conn:
            assert await conn.fetchval("SELECT 1") == 1
    finally:
        await other.close()
        await database.close()


def test_the_lock_bounds_come_from_the_settings_in_order() -> None:
    base = {"DATABASE_URL": "postgresql://svc@127.0.0.1:5432/db"}
    settings = load_settings(DatabaseSettings, env=base)
    assert settings.db_migration_lock_timeout_seconds < settings.db_lock_timeout_seconds
    assert settings.db_lock_timeout_seconds < settings.db_statement_timeout_seconds
    database = Database.from_settings(settings, "public")
    options = database._connect_options()["server_settings"]
    assert options["lock_timeout"] == "2000ms"
    assert options["idle_in_transaction_session_timeout"] == "60000ms"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        (
            {"DB_STATEMENT_TIMEOUT_SECONDS": "2", "DB_LOCK_TIMEOUT_SECONDS": "2"},
            "DB_LOCK_TIMEOUT_SECONDS (2)",
        ),
        (
            {"DB_LOCK_TIMEOUT_SECONDS": "1", "DB_MIGRATION_LOCK_TIMEOUT_SECONDS": "1"},
            "DB_MIGRATION_LOCK_TIMEOUT_SECONDS (1)",
        ),
    ],
)
def test_bounds_out_of_order_stop_the_process(
    env: dict[str, str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SettingsError):
        load_settings(DatabaseSettings, env={"DATABASE_URL": "postgresql://svc@127.0.0.1/db", **env})
    assert named in capsys.readouterr().err
