"""The readiness check of a pool whose every connection is busy (kit level, real Postgres).

An overload is not an outage: requests waiting on a held lock, or statements slower than the probe's
bound, take every pooled connection, and the probe used to queue behind them for one and time out
(``/readyz`` 503, the pod out of the Service, its traffic onto replicas that saturate the same way).
Now a busy pool is ready while the server answers: its statements were answered lately, or a
connection of the probe's own is. And a server that goes away or hangs while the pool is busy still
makes it unready. The process-level case: services/timesheets/tests/test_readiness_under_load.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest
from svckit.db import UNAVAILABLE_ERRORS, Database
from svckit.health import CHECK_TIMEOUT_SECONDS, run_checks

from testkit.fixtures import TcpProxy, loop_failures

pytestmark = pytest.mark.timeout(60)

POOL = 2
#: requests at once: several waiting for each pooled connection
CLIENTS = 8
LOCK_S = 1.0
#: a probe of a ready pool, on a loaded machine
FAST_S = 1.0
#: how recent an answer proves the server (the Database's health_answer_seconds, shortened)
ANSWER_S = 1.5


@contextlib.asynccontextmanager
async def rig(database_url: str) -> AsyncIterator[tuple[TcpProxy, Database, str]]:
    proxy = TcpProxy.for_postgres(database_url)
    await proxy.start()
    table = f"readyz_busy_{uuid.uuid4().hex[:8]}"
    owner = await asyncpg.connect(database_url)
    await owner.execute(f"CREATE TABLE public.{table} (id integer)")
    database = Database(
        proxy.url_for(database_url),
        schema="public",
        min_size=POOL,
        max_size=POOL,
        connect_timeout=3.0,
        statement_timeout=20.0,
        lock_timeout=LOCK_S,
        health_answer_seconds=ANSWER_S,
        max_backoff=0.5,
    )
    try:
        await database.wait_connected(10)
        yield proxy, database, table
    finally:
        proxy.resume()
        await proxy.cut()
        await database.close(timeout=2)
        await owner.execute(f"DROP TABLE IF EXISTS public.{table}")
        await owner.close()


@contextlib.asynccontextmanager
async def load(database: Database, statement: str) -> AsyncIterator[None]:
    """:data:`CLIENTS` tasks running ``statement`` one after the other, whatever the answer."""
    stop = asyncio.Event()

    async def client() -> None:
        while not stop.is_set():
            with contextlib.suppress(*UNAVAILABLE_ERRORS, asyncpg.PostgresError):
                async with database.connection() as conn:
                    await conn.fetchval(statement)
            await asyncio.sleep(0.01)

    tasks = [asyncio.create_task(client()) for _ in range(CLIENTS)]
    try:
        yield
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def probes(check: Callable[[], Awaitable[None]], seconds: float) -> list[tuple[float, str]]:
    """``/readyz``'s postgres check, every 0.2 s for ``seconds``: (took, result) of each."""
    answers = []
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        start = time.monotonic()
        result = (await run_checks({"postgres": check}))["postgres"]
        answers.append((round(time.monotonic() - start, 2), result))
        await asyncio.sleep(0.2)
    return answers


async def wait_result(check: Callable[[], Awaitable[None]], ok: bool, within: float) -> float:
    """Seconds until the check's result is (not) ``ok``."""
    start = time.monotonic()
    while time.monotonic() - start < within:
        if ((await run_checks({"postgres": check}))["postgres"] == "ok") == ok:
            return time.monotonic() - start
        await asyncio.sleep(0.1)
    raise AssertionError(f"the check never became {'ok' if ok else 'not ok'} within {within} s")


def saturated(database: Database) -> bool:
    stats = database.pool_stats()
    return stats["idle"] == 0 and stats["in_use"] == POOL


async def test_a_pool_busy_behind_a_held_lock_is_ready(database_url: str) -> None:
    async with rig(database_url) as (_, database, table):
        operator = await asyncpg.connect(database_url, server_settings={"application_name": "operator"})
        try:
            async with operator.transaction():
                await operator.execute(f"LOCK TABLE public.{table} IN ACCESS EXCLUSIVE MODE")
                async with load(database, f"SELECT count(*) FROM public.{table}"):
                    await asyncio.sleep(0.3)
                    assert saturated(database)
                    answers = await probes(database.check, 3 * LOCK_S)
        finally:
            await operator.close()
    assert answers
    assert [a for a in answers if a[1] != "ok" or a[0] > FAST_S] == [], answers


async def test_a_pool_busy_with_slow_statements_is_ready_and_unready_once_the_server_is_gone(
    database_url: str,
) -> None:
    """Statements longer than ``health_answer_seconds``: no recent answer on the pool, so the probe's
    own connection proves the server. The server hanging, then going away, while the pool stays
    busy: not ready within the answer window and the check's bound."""
    async with rig(database_url) as (proxy, database, _):
        async with load(database, "SELECT pg_sleep(15)"):
            await asyncio.sleep(0.3)
            assert saturated(database)
            answers = await probes(database.check, 2 * ANSWER_S)
            assert answers
            assert [a for a in answers if a[1] != "ok" or a[0] > FAST_S] == [], answers
            with loop_failures() as unretrieved:
                proxy.hang()
                took = await wait_result(database.check, ok=False, within=10)
                assert took < ANSWER_S + CHECK_TIMEOUT_SECONDS + 1.0, took
                # the probe's own connection, given up by the check's bound, fails in its own time
                # (connect_timeout): nobody awaits it then, and that is no failure to report
                own = database._own_check
                assert own is not None
                await asyncio.wait([own], timeout=database.connect_timeout + 5.0)
                assert own.done()
                del own  # (a failure nobody took is reported when its task is collected)
                await run_checks({"postgres": database.check})  # a new probe: the old one let go
                gc.collect()
            assert [context.get("message") for context in unretrieved] == []
            proxy.resume()
            await proxy.cut()
            await wait_result(database.check, ok=False, within=1)
        # and back
        await proxy.start()
        await wait_result(database.check, ok=True, within=15)


async def test_a_busy_pool_whose_server_went_away_is_not_ready(database_url: str) -> None:
    """The pool busy behind a held lock (answers recent), then Postgres unreachable: not ready as
    soon as the pool's connections broke (an answer window is no licence while nothing connects)."""
    async with rig(database_url) as (proxy, database, table):
        operator = await asyncpg.connect(database_url)
        try:
            async with operator.transaction():
                await operator.execute(f"LOCK TABLE public.{table} IN ACCESS EXCLUSIVE MODE")
                async with load(database, f"SELECT count(*) FROM public.{table}"):
                    await asyncio.sleep(0.3)
                    assert (await run_checks({"postgres": database.check}))["postgres"] == "ok"
                    await proxy.cut()
                    took = await wait_result(database.check, ok=False, within=10)
        finally:
            await operator.close()
    assert took < ANSWER_S + CHECK_TIMEOUT_SECONDS + 1.0, took
