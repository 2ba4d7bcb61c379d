"""Postgres out of disk, for real: a private cluster whose data directory and ``pg_wal`` are each on a
size-limited tmpfs (``testkit.tmpfs``, mounted as root), every service running against it as a
process of its own, under write load, until the disk is full.

* *The data directory full, the WAL not* (a tablespace's volume, the data volume of a cluster whose
  WAL is elsewhere): a statement that needs a new page fails with SQLSTATE 53100 (``could not extend
  file``), the rest of the server works. Writes that need room answer 503 problem+json with
  ``Retry-After`` and ``"reason": "database_disk_full"`` (not "a backing service is unreachable"),
  counted (``db_disk_full_refusals_total``); reads go on and ``/readyz`` stays ready (on purpose, as
  for a read-only database: docs/runbook.md, "Postgres out of disk"); the outbox relays back off
  (CPU, log lines bounded); no half-written record; once the space is freed everything goes on by
  itself, no restart, every acknowledged write stored once with its audit record, the chain intact.
* *``pg_wal`` full*: a backend that cannot write WAL PANICs, the crash recovery cannot write its
  end-of-recovery checkpoint either, and the postmaster exits ("shutting down due to startup process
  failure"): Postgres is down, which the services answer as any outage (503, ``/readyz`` not ready,
  ``/healthz`` alive). Freed and started again by the operator, the services recover without a
  restart of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psutil
import pytest
from svckit.db import UNAVAILABLE_ERRORS

from testkit.fixtures import scrape
from testkit.pgproc import PrivatePostgres, postgres_bin
from testkit.redisproc import PrivateRedis
from testkit.tmpfs import can_mount

from .conftest import Figures, Stack, wait_ready
from .load import PROJECT, WriteLoad, assert_stored_once, settled
from .test_fault_matrix import LogWatch, build_matrix, probe_session, under_fault, unreached

pytestmark = pytest.mark.timeout(180)

DB_SERVICES = ("identity", "audit", "timesheets", "approvals")
#: sizes of the two tmpfs volumes: room for the cluster, the migrations and the seed with a margin;
#: the tests take (almost) all of what is left with a ballast file
DATA_DISK_MB = 96
WAL_DISK_MB = 24
#: how long the data disk stays full in the detailed case: long enough to see the retries' pace
HOLD_SECONDS = 4.0
#: what a service may spend of CPU and of background log lines meanwhile: a few failed passes with
#: back-off of the outbox relay and the reconciler each second, not a tight loop
MAX_CPU_SECONDS = 1.5
MAX_LOG_LINES = 30
#: the replication slot of a standby that is gone: what keeps pg_wal growing in the WAL case
GONE_SLOT = "disk_full_gone_standby"


@pytest.fixture(scope="module")
async def disk_stack(
    private_redis: PrivateRedis, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    if postgres_bin() is None:
        pytest.skip("no PostgreSQL binaries (initdb, pg_ctl) on this machine")
    if (why := can_mount()) is not None:
        pytest.skip(why)
    try:
        postgres = PrivatePostgres(data_disk_mb=DATA_DISK_MB, wal_disk_mb=WAL_DISK_MB)
    except subprocess.CalledProcessError as exc:
        if exc.cmd[0] != "mount":
            raise
        pytest.skip(f"cannot mount a tmpfs here (root without CAP_SYS_ADMIN?): {exc.stderr.strip()}")
    try:
        await asyncio.to_thread(postgres.start)
        async with Stack(
            postgres, private_redis, tmp_path_factory.mktemp("disk-full-logs")
        ).running() as stack:
            yield stack
    finally:
        await asyncio.to_thread(postgres.remove)


def disks(stack: Stack) -> tuple[Any, Any]:
    data, wal = stack.postgres.data_disk, stack.postgres.wal_disk
    assert data is not None
    assert wal is not None
    return data, wal


async def create(http: aiohttp.ClientSession, stack: Stack, notes: str) -> tuple[int, dict[str, str], Any]:
    headers = {**stack.headers("alice"), "Idempotency-Key": str(uuid.uuid4())}
    body = {"date": "2042-02-02", "project": PROJECT, "hours": 0.25, "notes": notes}
    async with http.post(stack.api + "/timesheets", headers=headers, json=body) as response:
        return response.status, dict(response.headers), await response.json(content_type=None)


async def get(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> tuple[int, Any]:
    async with http.get(url, headers=headers) as response:
        return response.status, await response.json(content_type=None)


def counted(metrics: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", metrics, re.M)
    return float(found.group(1)) if found else 0.0


def new_lines(path: Path, offset: int) -> list[str]:
    with path.open("rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace").splitlines()


def tracebacks(lines: dict[str, list[str]]) -> list[str]:
    return [f"{name}: {line[:300]}" for name, found in lines.items() for line in found if "Traceback" in line]


def chatter(lines: list[str]) -> list[str]:
    """The lines of the background loops (the outbox relay, the reconciler, the pool's floor): a
    request's own lines (its access line, a warning it logged) come with the clients' pace."""
    return [line for line in lines if '"logger": "access"' not in line and '"request_id": null' in line]


async def drop_slot(stack: Stack) -> None:
    conn = await stack.db()
    try:
        await conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
            GONE_SLOT,
        )
    finally:
        await conn.close()


async def audit_verifies(http: aiohttp.ClientSession, stack: Stack) -> dict[str, Any]:
    status, verification = await get(http, stack.api + "/audit/verify", stack.headers("carol"))
    assert status == 200, verification
    assert verification.get("ok") is True, verification
    return dict(verification)


async def test_table_data_out_of_disk_refuses_writes_with_503_and_recovers_once_freed(
    disk_stack: Stack, figures: Figures
) -> None:
    stack = disk_stack
    await stack.ensure_up()
    data_disk, _ = disks(stack)
    services = {name: stack.services[name] for name in DB_SERVICES}
    processes = {}
    for name, service in services.items():
        assert service.process is not None
        processes[name] = psutil.Process(service.process.pid)
    offsets = {name: s.log_path.stat().st_size for name, s in services.items()}
    refused_before = counted(await scrape(stack.timesheets.url), "db_disk_full_refusals_total")
    timeout = aiohttp.ClientTimeout(total=10)
    try:
        async with (
            WriteLoad(stack.api, stack.headers("alice"), stack.headers("bob"), writers=2) as load,
            aiohttp.ClientSession(timeout=timeout) as http,
        ):
            await asyncio.sleep(0.5)
            cpu = {name: sum(p.cpu_times()[:2]) for name, p in processes.items()}
            data_disk.fill(leave=0)
            filled_at = time.monotonic()
            try:
                # the load takes what room the tables' pages still had; then a write needs a new page
                while True:
                    status, headers, problem = await create(http, stack, f"disk-full-{uuid.uuid4().hex[:8]}")
                    if status != 201:
                        break
                    assert time.monotonic() - filled_at < 15, "writes never ran out of room"
                assert status == 503, problem  # not 500
                assert headers["Content-Type"].startswith("application/problem+json"), headers
                assert int(headers.get("Retry-After", "0")) > 0, headers
                assert problem.get("reason") == "database_disk_full", problem  # not "unreachable"
                # reads go on: entries, the approver's queue, the audit trail and its verification
                status, listed = await get(http, stack.api + "/timesheets", stack.headers("alice"))
                assert status == 200, listed
                status, queue = await get(http, stack.api + "/approvals", stack.headers("bob"))
                assert status == 200, queue
                status, events = await get(http, stack.api + "/audit/events", stack.headers("carol"))
                assert status == 200, events
                # ready while reads work (docs/runbook.md): every replica shares the one full disk
                for name, service in services.items():
                    async with http.get(service.url + "/readyz") as reply:
                        assert reply.status == 200, (name, await reply.text())
                    async with http.get(service.url + "/healthz") as reply:
                        assert reply.status == 200, name
                while time.monotonic() - filled_at < HOLD_SECONDS:
                    await asyncio.sleep(0.2)
                full_for = time.monotonic() - filled_at
                spent = {name: round(sum(p.cpu_times()[:2]) - cpu[name], 2) for name, p in processes.items()}
                refused = (
                    counted(await scrape(stack.timesheets.url), "db_disk_full_refusals_total")
                    - refused_before
                )
                lines = {name: new_lines(s.log_path, offsets[name]) for name, s in services.items()}
            finally:
                data_disk.free()  # (at once if the case failed: the load retries until it may write)
            freed_at = time.monotonic()
            while load.report.first_success_after(freed_at) is None and time.monotonic() - freed_at < 10:
                await asyncio.sleep(0.1)
            first_write = load.report.first_success_after(freed_at)
            await asyncio.sleep(0.5)
            report = await load.stop()
            drained, counts = await settled(stack.postgres.dsn, report)
            verification = await audit_verifies(http, stack)
    finally:
        data_disk.free()
    figures.record(
        "postgres data disk full",
        full_for_s=round(full_for, 1),
        refusals_counted=refused,
        cpu_seconds_while_full=spent,
        log_lines_while_full={name: len(chatter(found)) for name, found in lines.items()},
        first_write_after_freed_s=None if first_write is None else round(first_write, 2),
        events_drained_s=round(drained, 2),
        answers=dict(report.attempts),
        reasons=dict(report.reasons),
        audit_verified=verification,
    )
    assert refused > 0  # what TimesheetsDatabaseDiskFull counts
    assert report.server_errors == 0, report.attempts  # 503 with Retry-After, never a 500
    assert report.unexpected == []
    assert report.unresolved == []
    assert any(outcome.endswith("503") for outcome in report.attempts), report.attempts
    assert first_write is not None
    assert first_write < 5
    assert_stored_once(counts)  # every acknowledged write once, with its audit records
    assert tracebacks(lines) == []
    # a refusal is the server's definite answer, not a connection lost around a commit
    resolving = [line for found in lines.values() for line in found if "resolving the outcome" in line]
    assert resolving == [], resolving[:5]
    for name in DB_SERVICES:
        assert processes[name].is_running(), f"{name} exited"  # recovered in place, no restart
        assert spent[name] < MAX_CPU_SECONDS, spent  # no tight retry loop
        assert len(chatter(lines[name])) < MAX_LOG_LINES, "\n".join(chatter(lines[name])[-40:])


async def test_pg_wal_out_of_disk_stops_postgres_and_the_services_recover_once_it_is_back(
    disk_stack: Stack, figures: Figures
) -> None:
    stack = disk_stack
    await stack.ensure_up()
    _, wal_disk = disks(stack)
    services = stack.services
    processes = {}
    for name, service in services.items():
        assert service.process is not None
        processes[name] = psutil.Process(service.process.pid)
    offsets = {name: s.log_path.stat().st_size for name, s in services.items()}
    timeout = aiohttp.ClientTimeout(total=10)
    try:
        async with (
            WriteLoad(stack.api, stack.headers("alice"), stack.headers("bob"), writers=2) as load,
            aiohttp.ClientSession(timeout=timeout) as http,
        ):
            await asyncio.sleep(0.5)
            # what fills pg_wal in real life: a replication slot whose standby is gone keeps every
            # segment from now on (no checkpoint recycles them into the next ones)
            admin = await stack.db()
            await admin.execute(f"SELECT pg_create_physical_replication_slot('{GONE_SLOT}', true)")
            wal_disk.fill(leave=0)
            filled_at = time.monotonic()
            # the segments pg_wal holds ahead (recycled before) taken at once, one per switch, so
            # that the load's writes need a new one within a second, not after megabytes of WAL
            with contextlib.suppress(*UNAVAILABLE_ERRORS, asyncpg.PostgresError):
                for _ in range(100):
                    await admin.execute("SELECT txid_current(); SELECT pg_switch_wal()")
            admin.terminate()
            while stack.postgres.running():
                assert time.monotonic() - filled_at < 20, "Postgres kept running with pg_wal full"
                await asyncio.sleep(0.1)
            stopped_after = time.monotonic() - filled_at
            said = stack.postgres.logs()
            assert "PANIC" in said, said[-2000:]
            assert "No space left on device" in said, said[-2000:]
            # Postgres is down: an outage's answers (svckit.db UNAVAILABLE_ERRORS), no 500
            status, headers, problem = await create(http, stack, f"wal-full-{uuid.uuid4().hex[:8]}")
            assert status == 503, problem
            assert int(headers.get("Retry-After", "0")) > 0, headers
            status, listed = await get(http, stack.api + "/timesheets", stack.headers("alice"))
            assert status == 503, listed
            for name in DB_SERVICES:
                async with http.get(services[name].url + "/readyz") as reply:
                    assert reply.status == 503, name
                async with http.get(services[name].url + "/healthz") as reply:
                    assert reply.status == 200, name
            # the operator frees pg_wal's volume and starts Postgres; the services are left alone
            wal_disk.free()
            await asyncio.to_thread(stack.postgres.start)
            started_at = time.monotonic()
            await drop_slot(stack)  # the operator's remedy for its cause
            ready = {name: round(await wait_ready(services[name].url, 30), 2) for name in DB_SERVICES}
            while load.report.first_success_after(started_at) is None and time.monotonic() - started_at < 15:
                await asyncio.sleep(0.1)
            first_write = load.report.first_success_after(started_at)
            await asyncio.sleep(0.5)
            report = await load.stop()
            drained, counts = await settled(stack.postgres.dsn, report)
            verification = await audit_verifies(http, stack)
    finally:
        wal_disk.free()
        if not stack.postgres.running():
            with contextlib.suppress(Exception):
                await asyncio.to_thread(stack.postgres.start)
        with contextlib.suppress(Exception):
            await drop_slot(stack)
    lines = {name: new_lines(s.log_path, offsets[name]) for name, s in services.items()}
    figures.record(
        "postgres pg_wal full",
        postgres_stopped_after_s=round(stopped_after, 2),
        ready_after_restart_s=ready,
        first_write_after_restart_s=None if first_write is None else round(first_write, 2),
        events_drained_s=round(drained, 2),
        answers=dict(report.attempts),
        audit_verified=verification,
    )
    assert report.server_errors == 0, report.attempts
    assert report.unexpected == []
    assert report.unresolved == []
    assert first_write is not None
    assert_stored_once(counts)
    assert tracebacks(lines) == []
    for name, process in processes.items():
        assert process.is_running(), f"{name} exited"  # recovered in place, no restart


async def test_no_route_answers_500_with_the_data_disk_full(disk_stack: Stack, figures: Figures) -> None:
    """Every route of every service (the fault matrix's probes: sign-in pages, tokens, entries,
    decisions, uploads, the audit trail) with the tables' volume full — once a create was refused for
    want of room —: no 500, every 5xx a 503 with ``Retry-After``, no traceback."""
    stack = disk_stack
    await stack.ensure_up()
    data_disk, _ = disks(stack)
    matrix = await build_matrix(stack)
    logs = LogWatch(stack)

    async def full() -> None:
        data_disk.fill(leave=0)
        # until a write finds no room (the pages of the tables still had some)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            started = time.monotonic()
            while True:
                status, _, problem = await create(http, stack, f"matrix-{uuid.uuid4().hex[:8]}")
                if status != 201:
                    break
                assert time.monotonic() - started < 15, "writes never ran out of room"
            assert problem.get("reason") == "database_disk_full", problem

    async def freed() -> None:
        data_disk.free()
        for service in stack.services.values():
            await wait_ready(service.url, 20)

    timeout = aiohttp.ClientTimeout(total=20)
    try:
        async with probe_session(timeout) as http:
            logs.mark()
            assert await unreached(http, matrix.probes) == []
            problems, statuses = await under_fault(
                stack, http, matrix, logs, full, freed, 2, None, "postgres data disk full"
            )
    finally:
        data_disk.free()
    figures.record("fault matrix, postgres data disk full", statuses=statuses, violations=len(problems))
    # (how many probes find no room varies: a write may still fit in a page with room, a B-tree
    # leaf of its own key range among them; full() saw one refused)
    assert problems == [], "\n".join(problems)
