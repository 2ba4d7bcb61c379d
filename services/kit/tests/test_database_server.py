"""Which server a connection reached (:mod:`svckit.dbserver`), on real servers: a private primary and
its streaming standby (same cluster, ``pg_basebackup``), reached directly and through a proxy that
plays the Service name a failover moves. The whole stack's case is tests/faults/test_split_brain.py."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY
from svckit.db import UNAVAILABLE_ERRORS, Database
from svckit.dbserver import check_server, server_identity

from testkit.fixtures import TcpProxy, free_port
from testkit.pgproc import PrivatePostgres, postgres_bin

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def pair() -> Iterator[tuple[PrivatePostgres, PrivatePostgres]]:
    """A primary and its hot standby, private: the standby is promoted by a test (the old primary
    stays up and writable, unfenced)."""
    if postgres_bin() is None:
        pytest.skip("no PostgreSQL binaries (initdb, pg_ctl) on this machine")
    with PrivatePostgres() as primary, PrivatePostgres(standby_of=primary) as standby:
        yield primary, standby


async def identity_of(dsn: str) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await server_identity(conn)
    finally:
        await conn.close()


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def sessions_on(server: PrivatePostgres, application: str) -> int:
    conn = await asyncpg.connect(server.dsn)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", application
            )
        )
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def proxied(server: PrivatePostgres) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy("127.0.0.1", server.port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.cut()


async def test_a_server_is_told_apart_from_its_standby_and_not_from_itself_behind_a_proxy(
    pair: tuple[PrivatePostgres, PrivatePostgres],
) -> None:
    primary, standby = pair
    (on_primary, primary_standby), (on_standby, standby_standby) = await asyncio.gather(
        identity_of(primary.dsn), identity_of(standby.dsn)
    )
    assert (primary_standby, standby_standby) == (False, True)
    # a standby made by pg_basebackup is the same cluster (system_identifier), another server
    assert on_primary.system_identifier == on_standby.system_identifier
    assert not on_primary.same_server(on_standby)
    async with proxied(primary) as proxy:
        through, _ = await identity_of(proxy.url_for(primary.dsn))
    assert through.same_server(on_primary)  # the proxy's address is not the server's identity
    assert through.where != f"127.0.0.1:{proxy.port}"


async def test_the_check_closes_the_connections_left_on_an_old_primary_that_stays_up(
    pair: tuple[PrivatePostgres, PrivatePostgres],
) -> None:
    primary, standby = pair
    async with proxied(primary) as proxy:
        # an hour between checks: this test calls the check itself
        database = Database(
            proxy.url_for(primary.dsn),
            application_name="server-check-test",
            min_size=3,
            max_size=3,
            connect_timeout=2,
            server_check_seconds=3600,
        )
        await database.wait_connected(10)
        moved: list[bool] = []
        database.on_address_moved(lambda: moved.append(True))
        try:

            async def on(_: int) -> Any:
                async with database.connection() as conn:
                    await conn.fetchval("SELECT pg_sleep(0.2)")
                    return (await server_identity(conn))[0]

            before = await asyncio.gather(*(on(n) for n in range(3)))
            assert len(database._servers) == 3
            on_primary, _ = await identity_of(primary.dsn)
            assert all(found.same_server(on_primary) for found in before)
            # nothing moved: nothing closed, nothing counted
            moves = metric("db_server_moved_total", old="primary")
            assert await check_server(database) is False
            assert await sessions_on(primary, "server-check-test") == 3

            # the name leads nowhere for a while: the check cannot ask, and replaces nothing
            failures = metric("db_server_check_failures_total")
            proxy.retarget(free_port())
            assert await check_server(database) is False
            assert metric("db_server_check_failures_total") == failures + 1
            assert await sessions_on(primary, "server-check-test") == 3
            async with database.connection() as conn:
                assert await conn.fetchval("SELECT 1") == 1  # the pool still serves

            # a failover that leaves the old primary up and writable; the Service moves, TCP stays
            await asyncio.to_thread(standby.promote)
            proxy.retarget(standby.port)
            running = asyncio.ensure_future(on(0))  # a statement in flight on the old primary
            await asyncio.sleep(0.05)
            assert await check_server(database) is True
            assert metric("db_server_moved_total", old="primary") == moves + 1
            assert moved == [True]  # the outbox's LISTEN connection is told to move
            with pytest.raises(UNAVAILABLE_ERRORS):
                await running  # failed as on a broken connection: its outcome is asked where the name leads
            deadline = time.monotonic() + 10
            while await sessions_on(primary, "server-check-test"):
                assert time.monotonic() < deadline, "sessions left on the old primary"
                await asyncio.sleep(0.05)
            on_new, _ = await identity_of(standby.dsn)
            after = await asyncio.gather(*(on(n) for n in range(3)))
            assert all(found.same_server(on_new) for found in after)
            # counted once: the next check finds every connection where the name leads
            assert await check_server(database) is False
            assert metric("db_server_moved_total", old="primary") == moves + 1
        finally:
            await database.close()


async def test_without_a_check_no_question_is_asked_of_a_new_connection(
    pair: tuple[PrivatePostgres, PrivatePostgres],
) -> None:
    primary, _ = pair
    database = Database(primary.dsn, min_size=1, max_size=1)
    await database.wait_connected(10)
    try:
        async with database.connection() as conn:
            assert await conn.fetchval("SELECT 1") == 1
        assert len(database._servers) == 0
        assert database._server_watch is None
    finally:
        await database.close()


async def test_a_role_without_the_functions_asked_still_connects(
    pair: tuple[PrivatePostgres, PrivatePostgres], caplog: pytest.LogCaptureFixture
) -> None:
    """``pg_control_system()`` revoked from PUBLIC (some managed offerings): the start time alone
    identifies the server; ``pg_postmaster_start_time()`` revoked too: the connections work, are
    never compared (nor closed by the check), and a warning says so once."""
    primary, _ = pair
    admin = await asyncpg.connect(primary.dsn)
    try:
        await admin.execute("CREATE ROLE plain LOGIN")
        await admin.execute("REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC")
        dsn = primary.dsn.replace("postgres@", "plain@")
        found, _ = await identity_of(dsn)
        full, _ = await identity_of(primary.dsn)
        assert found.system_identifier == 0
        assert found.started == full.started
        await admin.execute("REVOKE EXECUTE ON FUNCTION pg_postmaster_start_time() FROM PUBLIC")
        database = Database(dsn, min_size=2, max_size=2, server_check_seconds=3600)
        await database.wait_connected(10)
        try:
            async with database.connection() as conn:
                assert await conn.fetchval("SELECT 1") == 1
            assert len(database._servers) == 0
            assert await check_server(database) is False
        finally:
            await database.close()
        said = [r for r in caplog.records if "cannot tell which database server" in r.getMessage()]
        assert len(said) == 1
    finally:
        await admin.close()


async def test_connections_left_on_a_standby_are_counted_apart(
    pair: tuple[PrivatePostgres, PrivatePostgres],
) -> None:
    """The name led to the standby for a while (reads only there) and moves back to the primary:
    the connections are replaced as well, counted as ``old="standby"`` (no write can have been
    acknowledged there), not as an unfenced old primary."""
    primary, standby = pair
    async with proxied(standby) as proxy:
        database = Database(proxy.url_for(primary.dsn), min_size=2, max_size=2, server_check_seconds=3600)
        await database.wait_connected(10)
        try:
            async with database.connection() as conn:
                assert await conn.fetchval("SELECT pg_is_in_recovery()") is True
            primaries, standbys = (
                metric("db_server_moved_total", old="primary"),
                metric("db_server_moved_total", old="standby"),
            )
            proxy.retarget(primary.port)
            assert await check_server(database) is True
            assert metric("db_server_moved_total", old="standby") == standbys + 1
            assert metric("db_server_moved_total", old="primary") == primaries
            async with database.connection() as conn:
                assert await conn.fetchval("SELECT pg_is_in_recovery()") is False
        finally:
            await database.close()


async def test_a_write_lost_on_the_old_server_is_resolved_where_the_name_leads_and_touches_nobody_there(
    pair: tuple[PrivatePostgres, PrivatePostgres],
) -> None:
    """A write whose connection the check closed on the old server (or that a failover broke) is
    resolved on the server the name leads to now. The old session is not there to wait for, and its
    pid (pids are per server) may be an innocent session's there: resolving waited a second for
    that session "to end" and then terminated it. Knowing the write's server, it asks at once."""
    primary, standby = pair
    async with proxied(standby) as proxy:
        database = Database(
            proxy.url_for(primary.dsn),
            min_size=1,
            max_size=1,
            server_check_seconds=3600,
            outcome_check_seconds=5,
        )
        await database.wait_connected(10)
        bystander = await asyncpg.connect(standby.dsn)  # an older session there, with "the" pid
        try:
            old_server, _ = await identity_of(primary.dsn)
            asked: list[bool] = []

            async def committed(conn: Any) -> bool:
                asked.append(True)
                return False

            await asyncio.sleep(0.2)
            started = time.monotonic()
            found = await database._resolve(committed, bystander.get_server_pid(), started, old_server)
            assert (found, asked) == (False, [True])
            assert time.monotonic() - started < 0.5
            assert await bystander.fetchval("SELECT 1") == 1  # untouched
            # not knowing the write's server, as before: the innocent session is waited for, then ended
            started = time.monotonic()
            assert await database._resolve(committed, bystander.get_server_pid(), started) is False
            assert time.monotonic() - started > 1.0
            with pytest.raises((asyncpg.PostgresError, *UNAVAILABLE_ERRORS)):
                await bystander.fetchval("SELECT 1")
        finally:
            bystander.terminate()
            await database.close()
