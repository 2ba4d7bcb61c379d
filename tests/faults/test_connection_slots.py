"""The backing stores up but refusing new connections, on servers of this module's own
(testkit.slots): Postgres out of connection slots (SQLSTATE 53300, the runtime roles at ``CONNECTION
LIMIT 0`` after their sessions were ended) and Redis at ``maxclients``. The services run as their
runtime roles here (the session's fault stack connects as the superuser, which no limit stops).

* Every route of every service under each (the fault matrix's probes): no 500, 503s with
  ``Retry-After``, no traceback; the log says Redis refused for ``maxclients``.
* Postgres out of slots for a while under write load: a request needing the database is a 503
  problem, ``/readyz`` names ``postgres`` and ``TooManyConnectionsError``, ``/healthz`` stays up, the
  refusals are counted (``db_connect_failures_total{reason="slots"}``, the alert's), the services
  neither spin (CPU, log lines) nor exit, and they recover by themselves once slots are free, every
  acknowledged write stored once with its audit record.
* A service started meanwhile: alive, not ready, retrying with backoff; ready once a slot is free.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import psutil
import pytest
from svckit import redisacl

from testkit.fixtures import runtime_role, runtime_url, scrape
from testkit.oidc import Browser, sign_in_tokens
from testkit.pgproc import PrivatePostgres, postgres_bin
from testkit.redisproc import PrivateRedis, component_users
from testkit.slots import PostgresSlots, RedisSlots

from .conftest import REDIS_PASSWORDS, REDIS_PREFIX, SCOPES, Figures, Stack, wait_ready
from .load import WriteLoad, assert_stored_once, settled
from .test_fault_matrix import LogWatch, build_matrix, probe_session, under_fault, unreached

pytestmark = pytest.mark.timeout(240)

DATABASE_SERVICES = ("identity", "timesheets", "approvals", "audit")


@pytest.fixture(scope="module")
async def roles_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    if postgres_bin() is None:
        pytest.skip("no PostgreSQL binaries (initdb, pg_ctl) on this machine")
    with (
        PrivatePostgres() as postgres,
        PrivateRedis(acl=component_users(REDIS_PREFIX, REDIS_PASSWORDS)) as redis,
    ):
        stack = Stack(postgres, redis, tmp_path_factory.mktemp("slots-logs"))
        await stack.prepare()
        for name in DATABASE_SERVICES:
            stack.services[name].env["DATABASE_URL"] = runtime_url(postgres.dsn, name)
        try:
            await stack.start_all()
            await stack.sign_in()
            yield stack
        finally:
            await asyncio.to_thread(stack.stop_all)


async def test_no_route_answers_500_with_the_stores_out_of_slots(
    roles_stack: Stack, figures: Figures
) -> None:
    stack = roles_stack
    matrix = await build_matrix(stack)
    logs = LogWatch(stack)
    pg = PostgresSlots(stack.postgres.dsn, [runtime_role(s).name for s in DATABASE_SERVICES])
    rs = RedisSlots(stack.redis.url, redisacl.COMPONENTS)

    async def pg_full() -> None:
        await pg.exhaust()

    async def pg_free() -> None:
        await pg.release()
        for service in stack.services.values():
            await wait_ready(service.url, 20)

    async def redis_full() -> None:
        await rs.exhaust()

    async def redis_free() -> None:
        await rs.release()
        for service in stack.services.values():
            await wait_ready(service.url, 20)

    timeout = aiohttp.ClientTimeout(total=20)
    report: dict[str, Any] = {}
    failures: list[str] = []
    try:
        async with probe_session(timeout) as http:
            logs.mark()
            assert await unreached(http, matrix.probes) == []
            for fault, stop, start in (
                ("postgres out of slots", pg_full, pg_free),
                ("redis at maxclients", redis_full, redis_free),
            ):
                problems, statuses = await under_fault(stack, http, matrix, logs, stop, start, 2, None, fault)
                report[fault] = {"statuses": statuses, "violations": len(problems)}
                failures += [f"[{fault}] {line}" for line in problems]
    finally:
        await pg.release()
        await rs.close()
    figures.record("stores out of slots", **report)
    assert failures == [], "\n".join(failures)
    # the log says why Redis was unavailable: at maxclients (up, refusing), not down
    said = [name for name, s in stack.services.items() if "max number of clients reached" in s.logs(None)]
    assert said, "no service's log names Redis's refusal"


#: how long the slots stay taken in the detailed case: long enough to see the retries' pace
HOLD_SECONDS = 6.0
#: what a service may spend of CPU and of log lines (requests' access lines aside) meanwhile: a few
#: retries with backoff each second (the pool's floor, the outbox relay and its LISTEN connection, the
#: reconciler, the revocation feed), far below a reconnect loop's thousands
MAX_CPU_SECONDS = 1.5
MAX_LOG_LINES = 40
#: connection attempts a service may make meanwhile: a refused one still costs the full server a
#: backend (fork, authentication); at most one a second from the requests (svckit.db
#: SLOT_RETRY_SECONDS), plus the pool floor's, the outbox LISTEN's and the loops' retries — not one
#: per request, which the write load turned into tens a second per service
MAX_ATTEMPTS_PER_SECOND = 5


def failures_counted(metrics: str, reason: str) -> float:
    prefix = f'db_connect_failures_total{{reason="{reason}"}} '
    values = [float(line.removeprefix(prefix)) for line in metrics.splitlines() if line.startswith(prefix)]
    return sum(values)


def new_lines(path: Any, offset: int) -> list[str]:
    with open(path, "rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace").splitlines()


async def test_services_out_of_postgres_slots_answer_503_and_recover_by_themselves(
    roles_stack: Stack, figures: Figures
) -> None:
    stack = roles_stack
    await stack.ensure_up()
    db_services = {name: stack.services[name] for name in DATABASE_SERVICES}
    pg = PostgresSlots(stack.postgres.dsn, [runtime_role(s).name for s in DATABASE_SERVICES])
    processes = {}
    for name, service in db_services.items():
        assert service.process is not None
        processes[name] = psutil.Process(service.process.pid)
    offsets = {name: s.log_path.stat().st_size for name, s in db_services.items()}
    timeout = aiohttp.ClientTimeout(total=10)
    try:
        async with (
            WriteLoad(stack.api, stack.headers("alice"), stack.headers("bob"), writers=2) as load,
            aiohttp.ClientSession(timeout=timeout) as http,
        ):
            await asyncio.sleep(0.5)
            cpu = {name: sum(p.cpu_times()[:2]) for name, p in processes.items()}
            await pg.exhaust()
            exhausted_at = time.monotonic()
            assert await pg.sessions() == 0
            # a request that needs the database: 503 problem with Retry-After, through the gateway
            async with http.post(
                stack.api + "/timesheets",
                json={"date": "2031-05-05", "project": "slots", "hours": 1},
                headers=stack.headers("alice"),
            ) as reply:
                body = await reply.json(content_type=None)
                assert reply.status == 503, body
                assert reply.headers["Content-Type"].startswith("application/problem+json")
                assert reply.headers.get("Retry-After"), dict(reply.headers)
                assert body.get("reason") == "database_out_of_slots", body  # not "unreachable"
            for name, service in db_services.items():
                async with http.get(service.url + "/readyz") as reply:
                    ready = await reply.json(content_type=None)
                    assert reply.status == 503, (name, ready)
                    assert "postgres" in ready["failed"], (name, ready)
                    assert "TooManyConnections" in ready["checks"]["postgres"], (name, ready)
                async with http.get(service.url + "/healthz") as reply:
                    assert reply.status == 200, name
            while time.monotonic() - exhausted_at < HOLD_SECONDS:
                await asyncio.sleep(0.2)
            spent = {name: round(sum(p.cpu_times()[:2]) - cpu[name], 2) for name, p in processes.items()}
            counted = {
                name: failures_counted(await scrape(s.url), "slots") for name, s in db_services.items()
            }
            assert await pg.sessions() == 0
            await pg.release()
            released_at = time.monotonic()
            ready_after = {name: round(await wait_ready(s.url, 30), 2) for name, s in db_services.items()}
            await asyncio.sleep(1.0)
            first_write = load.report.first_success_after(released_at)
            report = await load.stop()
    finally:
        await pg.release()

    _, counts = await settled(stack.postgres.dsn, report)
    lines = {name: new_lines(s.log_path, offsets[name]) for name, s in db_services.items()}
    chatter = {
        name: [line for line in found if '"logger": "access"' not in line] for name, found in lines.items()
    }
    figures.record(
        "postgres out of connection slots",
        hold_s=HOLD_SECONDS,
        cpu_seconds_while_refused=spent,
        log_lines_while_refused={name: len(found) for name, found in chatter.items()},
        connect_failures_counted=counted,
        ready_after_release_s=ready_after,
        first_write_after_release_s=round(first_write, 2) if first_write is not None else None,
        answers=report.attempts,
    )
    for name in DATABASE_SERVICES:
        assert processes[name].is_running(), f"{name} exited"  # recovered in place, no restart
        assert spent[name] < MAX_CPU_SECONDS, spent  # no tight reconnect loop
        assert len(chatter[name]) < MAX_LOG_LINES, "\n".join(chatter[name][-60:])
        assert all(line.startswith("{") and "Traceback" not in line for line in lines[name]), name
        assert any("TooManyConnectionsError" in line for line in chatter[name]), name
        # what the operator's alert counts (db_connect_failures_total, reason "slots")
        assert counted[name] > 0, counted
        assert counted[name] < MAX_ATTEMPTS_PER_SECOND * HOLD_SECONDS, counted
    assert report.server_errors == 0, report.attempts  # 503 with Retry-After, never a 500
    assert report.unexpected == []
    assert report.unresolved == []
    assert first_write is not None
    assert_stored_once(counts)  # every acknowledged entry stored once, with its audit record


async def test_a_service_started_while_postgres_has_no_slot_waits_and_becomes_ready(
    roles_stack: Stack,
) -> None:
    """A pod (re)started while the slots are taken: it listens, stays alive (``/healthz``), not ready
    (``/readyz``: the chart's readiness probe keeps it out of the Service; its liveness probe leaves
    it running), retries with backoff — one line per attempt — and is ready once a slot is free."""
    stack = roles_stack
    await stack.ensure_up()
    service = stack.timesheets
    pg = PostgresSlots(stack.postgres.dsn, [runtime_role(s).name for s in DATABASE_SERVICES])
    try:
        await pg.exhaust()
        await asyncio.to_thread(service.stop, 10)
        await asyncio.to_thread(service.start, "/healthz", 30)  # its log file begins anew
        started = time.monotonic()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            while time.monotonic() - started < 4.0:
                async with http.get(service.url + "/readyz") as reply:
                    ready = await reply.json(content_type=None)
                    assert reply.status == 503, ready
                    assert "TooManyConnections" in ready["checks"]["postgres"], ready
                await asyncio.sleep(0.5)
        assert service.process is not None
        assert service.process.poll() is None, service.logs()  # waiting, not exited
        attempts = [
            line for line in new_lines(service.log_path, 0) if "database not reachable, retrying" in line
        ]
        assert 2 <= len(attempts) <= 8, attempts  # backoff: 0.2 s doubling (5 attempts in 4 s), no loop
        assert all("TooManyConnectionsError" in line for line in attempts), attempts
        await pg.release()
        await wait_ready(service.url, 30)  # the next attempt (at most DB max backoff, 10 s, later)
    finally:
        await pg.release()


async def test_a_pool_that_may_not_grow_serves_on_the_connections_it_has(
    roles_stack: Stack, figures: Figures
) -> None:
    """The timesheets role's slots all taken by the service itself (``CONNECTION LIMIT`` = the
    sessions it holds: its pool's one and the outbox's LISTEN), under more concurrent writes than
    that: the pool cannot grow, and a request that finds no idle connection waits (within
    ``DB_CONNECT_TIMEOUT_SECONDS``) for one of the pool's own to be released rather than being
    answered 503 at once — a write takes milliseconds. It was: a third of the writes were refused."""
    stack = roles_stack
    await stack.ensure_up()
    role = runtime_role("timesheets").name
    admin = await stack.db()
    try:
        held = await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE usename = $1", role)
        await admin.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT {held}')
        metrics_before = failures_counted(await scrape(stack.timesheets.url), "slots")
        async with WriteLoad(stack.api, stack.headers("alice"), stack.headers("bob"), writers=8) as load:
            await asyncio.sleep(3.0)
            report = await load.stop()
        refused = failures_counted(await scrape(stack.timesheets.url), "slots") - metrics_before
        sessions = await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE usename = $1", role)
    finally:
        await admin.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT -1')
        await admin.close()
    _, counts = await settled(stack.postgres.dsn, report)
    figures.record(
        "pool at its role's connection limit",
        sessions_allowed=held,
        answers=report.attempts,
        connections_refused=refused,
    )
    assert sessions <= held
    assert refused > 0  # the pool did try to grow, and was refused
    assert report.attempts.get("503", 0) == 0, report.attempts
    assert report.server_errors == 0, report.attempts
    assert report.unexpected == []
    assert_stored_once(counts)


async def test_identity_at_its_connection_limit_serves_sign_ins_on_the_connections_it_has(
    roles_stack: Stack, figures: Figures
) -> None:
    """As above for the identity provider, whose sign-in, authorize and key look-ups went to its
    asyncpg pool directly (``pool.fetchrow``/``pool.acquire()``) rather than through the kit's
    connection wrapper: with no spare slot for its role, a request that found no idle connection got
    the one-second back-off's 503 at once instead of waiting for one of the pool's own connections."""
    stack = roles_stack
    await stack.ensure_up()
    role = runtime_role("identity").name
    admin = await stack.db()
    outcomes: dict[str, int] = {}
    try:
        held = await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE usename = $1", role)
        await admin.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT {held}')
        metrics_before = failures_counted(await scrape(stack.identity.url), "slots")

        async def flows(who: str, until: float) -> None:
            while time.monotonic() < until:
                async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
                    browser = Browser(stack.identity.url, http)
                    try:
                        await sign_in_tokens(browser, http, stack.identity.url, who, scope=SCOPES[who])
                        key = "signed in"
                    except AssertionError as exc:
                        found = re.search(r'<p class="error"[^>]*>([^<]*)|<title>([^<]*)', str(exc))
                        key = " ".join(filter(None, found.groups())) if found else str(exc)[:120]
                outcomes[key] = outcomes.get(key, 0) + 1

        until = time.monotonic() + 4.0
        await asyncio.gather(*(flows(who, until) for who in list(SCOPES) * 3))
        refused = failures_counted(await scrape(stack.identity.url), "slots") - metrics_before
        sessions = await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE usename = $1", role)
    finally:
        await admin.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT -1')
        await admin.close()
    figures.record("identity at its role's connection limit", sessions_allowed=held, outcomes=outcomes)
    assert sessions <= held
    assert refused > 0  # the pool did try to grow, and was refused
    assert outcomes.get("signed in", 0) > 0
    assert list(outcomes) == ["signed in"], outcomes
