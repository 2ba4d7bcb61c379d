"""A Postgres failover for real: a private primary with a streaming hot standby (``pg_basebackup -R``),
every service behind a TCP proxy that plays the Service/DNS name the failover moves.

1. *The name points at the standby* (the primary's sessions cut): the services hold connections to a
   server that takes no writes (SQLSTATE 25006). Writes answer 503 problem+json with ``Retry-After``
   and a reason (``database_read_only``), never a 500, counted in ``db_read_only_refusals_total``;
   reads go on; ``/readyz`` stays ready (on purpose: docs/runbook.md, "A failover: the services
   reach a server that takes no writes"); the background loops log one line per attempt with
   back-off, no traceback, no spinning.
2. *The name is set back to the primary, the open connections stay with the standby* (as TCP
   connections do; the standby's replay paused, so that what it answers is visibly old): the pools
   replace the connections that still reach the read-only server, so no read is answered from it
   and no write refused by it.
3. *A real failover*: the name moves to the standby, the primary is stopped (fenced), the standby is
   promoted: writes resume without a restart, every acknowledged write stored once with its audit
   records.

The simulated case (``default_transaction_read_only``) is in tests/faults/test_fault_matrix.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from svckit.cli import database_failure, migrate_with_wait

from testkit.fixtures import scrape
from testkit.pgproc import PrivatePostgres, postgres_bin
from testkit.redisproc import PrivateRedis

from .conftest import SERVICES, Figures, Stack, wait_ready
from .failover import DB_SERVICES, failover_stack
from .load import PROJECT, WriteLoad, assert_stored_once, settled

pytestmark = pytest.mark.timeout(120)

TIMESHEETS_MIGRATIONS = SERVICES / "timesheets" / "timesheets" / "migrations"


async def readyz(http: aiohttp.ClientSession, stack: Stack) -> dict[str, int]:
    found = {}
    for name in DB_SERVICES:
        async with http.get(stack.services[name].url + "/readyz") as response:
            found[name] = response.status
    return found


async def create(http: aiohttp.ClientSession, stack: Stack, day: str) -> tuple[int, dict[str, str], Any]:
    headers = {**stack.headers("alice"), "Idempotency-Key": str(uuid.uuid4())}
    body = {"date": day, "project": PROJECT, "hours": 1, "notes": f"standby-{day}"}
    async with http.post(stack.api + "/timesheets", headers=headers, json=body) as response:
        return response.status, dict(response.headers), await response.json(content_type=None)


async def entry_hours(http: aiohttp.ClientSession, stack: Stack, entry_id: str) -> Any:
    async with http.get(f"{stack.api}/timesheets/{entry_id}", headers=stack.headers("alice")) as response:
        body = await response.json(content_type=None)
        return body.get("hours", response.status)


async def sessions_on(server: PrivatePostgres, application: str) -> int:
    """Client sessions of ``application`` (a service's pool) open on ``server``."""
    conn = await asyncpg.connect(server.dsn)
    try:
        found = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()",
            application,
        )
        return int(found)
    finally:
        await conn.close()


def failure_lines(stack: Stack, offsets: dict[str, int]) -> dict[str, int]:
    """Background-task failure lines per service and task since ``offsets`` (bytes into each log)."""
    counts: dict[str, int] = {}
    for name in DB_SERVICES:
        with stack.services[name].log_path.open("rb") as log:
            log.seek(offsets[name])
            for raw in log.read().decode(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    line = json.loads(raw)
                    if (
                        str(line.get("msg", "")).startswith("background task")
                        and line.get("level") == "warning"
                    ):
                        key = f"{name}:{line.get('task')}"
                        counts[key] = counts.get(key, 0) + 1
    return counts


def tracebacks(stack: Stack) -> list[str]:
    return [
        f"{name}: {line[:300]}"
        for name in DB_SERVICES
        for line in stack.services[name].logs(None).splitlines()
        if "Traceback" in line
    ]


async def test_a_failover_to_a_hot_standby_for_real(
    private_redis: PrivateRedis, tmp_path: Path, figures: Figures
) -> None:
    timeout = aiohttp.ClientTimeout(total=20)
    async with (
        failover_stack(private_redis, tmp_path) as (stack, proxy, primary, standby),
        aiohttp.ClientSession(timeout=timeout) as http,
    ):
        timesheets = stack.timesheets
        status, _, entry = await create(http, stack, "2041-01-03")
        assert status == 201, entry
        # -- 1. the name points at the standby; the primary's sessions are gone -----------------------
        offsets = {name: stack.services[name].log_path.stat().st_size for name in DB_SERVICES}
        proxy.retarget(standby.port, cut=True)
        one_started = time.monotonic()
        status, headers, problem = await create(http, stack, "2041-01-01")
        assert status == 503, problem  # perhaps on a connection cut under it: an outage's 503
        status, headers, problem = await create(http, stack, "2041-01-01")
        assert status == 503, problem
        assert headers["Content-Type"] == "application/problem+json"
        assert int(headers["Retry-After"]) > 0
        assert problem.get("reason") == "database_read_only", problem
        assert problem.get("outcome") == "not_stored", problem
        async with http.get(stack.api + "/timesheets", headers=stack.headers("alice")) as response:
            assert response.status == 200, await response.text()  # reads go on
        # every service stays ready: reads work, and every replica shares the one database (runbook)
        assert await readyz(http, stack) == dict.fromkeys(DB_SERVICES, 200)
        refusals = re.search(r"^db_read_only_refusals_total (\S+)$", await scrape(timesheets.url), re.M)
        assert refusals is not None  # a metric counts them
        assert float(refusals.group(1)) >= 1
        # concurrent reads: the pool opens more sessions on the standby, each a reader of its data
        for _ in range(20):
            await asyncio.gather(
                *(http.get(stack.api + "/timesheets", headers=stack.headers("alice")) for _ in range(8))
            )
            if await sessions_on(standby, "timesheets") >= 3:
                break
        readers_on_standby = await sessions_on(standby, "timesheets")
        assert readers_on_standby >= 3
        await asyncio.sleep(max(0.0, 3.0 - (time.monotonic() - one_started)))
        read_only_for = time.monotonic() - one_started
        failures = failure_lines(stack, offsets)
        # one line per attempt, with back-off (0.5 s growing to 1 s here): a few a second, no spinning
        assert failures, "the background loops met the read-only server"
        assert max(failures.values()) <= 3 * read_only_for + 3, failures

        # -- 2. the name points at the primary again; the open sessions stay with the standby -------
        paused = await asyncpg.connect(standby.dsn)
        await paused.execute("SELECT pg_wal_replay_pause()")  # the standby falls behind from now on
        writer = await asyncpg.connect(primary.dsn)
        await writer.execute("UPDATE timesheets.entries SET hours = 7 WHERE id = $1", uuid.UUID(entry["id"]))
        await writer.close()
        proxy.retarget(primary.port)
        two_started = time.monotonic()
        # the background loops meet the standby's refusal on their next passes (0.5-1 s here)
        await asyncio.sleep(1.5)
        # reads from a session that still reaches the standby would show the entry as it was
        hours = await asyncio.gather(*(entry_hours(http, stack, entry["id"]) for _ in range(8)))
        assert hours == [7] * 8, f"reads from the standby after the name moved back: {hours}"
        attempts = 0
        while True:
            attempts += 1
            status, _, created = await create(http, stack, "2041-01-02")
            if status == 201:
                break
            assert status == 503, created
            assert time.monotonic() - two_started < 10, created
            await asyncio.sleep(0.1)
        assert attempts == 1  # no pooled session on the standby refuses it any more
        await paused.execute("SELECT pg_wal_replay_resume()")
        await paused.close()

        # -- 3. a real failover: primary fenced, standby promoted, under write load -----------------
        async with WriteLoad(stack.api, stack.headers("alice"), stack.headers("bob"), writers=2) as load:
            await asyncio.sleep(0.5)
            proxy.retarget(standby.port, cut=True)
            await asyncio.to_thread(primary.stop, "fast")
            await asyncio.sleep(1.0)
            promoted_at = time.monotonic()
            await asyncio.to_thread(standby.promote)
            ready = {name: await wait_ready(stack.services[name].url) for name in DB_SERVICES}
            while (
                load.report.first_success_after(promoted_at) is None and time.monotonic() - promoted_at < 10
            ):
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            report = await load.stop()
        drained, counts = await settled(standby.dsn, report)
        first_write = report.first_success_after(promoted_at)
        figures.record(
            "failover to a hot standby",
            read_only_answers_503=True,
            background_failure_lines=failures,
            readers_on_standby=readers_on_standby,
            create_attempts_after_failback=attempts,
            write_after_promotion_s=None if first_write is None else round(first_write, 2),
            services_ready_after_promotion_s=round(max(ready.values()), 2),
            server_errors=report.server_errors,
            attempts=dict(report.attempts),
            events_drained_s=round(drained, 2),
        )
        assert report.server_errors == 0, report.attempts  # 503 with Retry-After, never a 500
        assert report.unexpected == []
        assert report.unresolved == []
        assert first_write is not None
        assert first_write < 10
        assert_stored_once(counts)
        assert tracebacks(stack) == []


async def test_migrating_against_a_hot_standby_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """``python -m <service> migrate`` (the chart's migration Job or init container) against a
    standby: it waits for the primary as for an unreachable database (a failover may be under way),
    each attempt one line that says the database takes no writes, and then fails with one line that
    says where ``DATABASE_URL`` leads (it said "database not reachable yet" and "database
    unreachable")."""
    if postgres_bin() is None:
        pytest.skip("no PostgreSQL binaries (initdb, pg_ctl) on this machine")
    with PrivatePostgres() as primary, PrivatePostgres(standby_of=primary) as standby:
        caplog.set_level(logging.WARNING, logger="svckit.cli")
        with pytest.raises(asyncpg.exceptions.ReadOnlySQLTransactionError) as refused:
            await migrate_with_wait(standby.dsn, "timesheets", TIMESHEETS_MIGRATIONS, wait_seconds=0.6)
    lines = [record.getMessage() for record in caplog.records if record.name == "svckit.cli"]
    assert lines
    assert all("takes no writes" in line and "primary" in line for line in lines), lines
    reason = database_failure(refused.value, None)
    assert reason is not None
    assert "takes no writes" in reason
    assert "standby" in reason
