"""``DB_POOL_IDLE_SECONDS``: a pooled connection beyond ``DB_POOL_MIN`` left idle that long is closed
(asyncpg's ``max_inactive_connection_lifetime``), so the sessions a burst opened go back to the
server's ``max_connections``, shared by every pod of every service; the pool opens them again for the
next burst. On real Postgres: the server's own list of sessions (``pg_stat_activity``) is what counts."""

from __future__ import annotations

import asyncio
import contextlib
import time

import asyncpg
from svckit.db import Database
from svckit.settings import DatabaseSettings, load_settings

IDLE_S = 0.5


async def burst(database: Database) -> set[int]:
    """The server pids of ``max_size`` pooled connections held at once, then released."""
    async with contextlib.AsyncExitStack() as stack:
        held = [await stack.enter_async_context(database.connection()) for _ in range(database.max_size)]
        return {conn.get_server_pid() for conn in held}


async def open_sessions(probe: asyncpg.Connection, pids: set[int]) -> set[int]:
    rows = await probe.fetch("SELECT pid FROM pg_stat_activity WHERE pid = ANY($1::int[])", list(pids))
    return {row["pid"] for row in rows}


async def test_idle_pooled_sessions_are_closed_after_db_pool_idle_seconds(database_url: str) -> None:
    env = {"DATABASE_URL": database_url, "DB_POOL_MIN": "1", "DB_POOL_MAX": "3"}
    brief = Database.from_settings(
        load_settings(DatabaseSettings, env={**env, "DB_POOL_IDLE_SECONDS": str(IDLE_S)}), "public"
    )
    # the default (300 s, asyncpg's own) beside it: what closes the sessions is the setting, not the test
    default = Database.from_settings(load_settings(DatabaseSettings, env=env), "public")
    probe = await asyncpg.connect(database_url)
    try:
        await asyncio.gather(brief.wait_connected(10), default.wait_connected(10))
        brief_pids, default_pids = await burst(brief), await burst(default)
        assert len(brief_pids) == len(default_pids) == 3
        released = time.monotonic()
        while len(await open_sessions(probe, brief_pids)) > 1 and time.monotonic() - released < 10:
            await asyncio.sleep(0.1)
        # all but DB_POOL_MIN's one are closed, and not before the bound
        assert len(await open_sessions(probe, brief_pids)) == 1, "idle pooled sessions still open"
        assert time.monotonic() - released >= IDLE_S * 0.9
        assert await open_sessions(probe, default_pids) == default_pids
        # and the pool serves a burst again, on sessions opened anew
        assert len(await burst(brief)) == 3
    finally:
        await probe.close()
        await brief.close()
        await default.close()


def test_the_idle_bound_defaults_to_asyncpgs_and_0_means_never() -> None:
    base = {"DATABASE_URL": "postgresql://svc@127.0.0.1:5432/db"}
    default = load_settings(DatabaseSettings, env=base)
    assert Database.from_settings(default, "public").pool_idle_seconds == 300
    never = load_settings(DatabaseSettings, env={**base, "DB_POOL_IDLE_SECONDS": "0"})
    assert Database.from_settings(never, "public").pool_idle_seconds == 0
