"""Postgres stopped under write load — ``pg_ctl stop -m fast`` (sessions terminated, "cannot switch
to state 15" on the client side) and ``-m immediate`` (a crash: recovery from the WAL on restart) —
and started again: no 500 at any time, every acknowledged write stored once, recovery time printed.
And Postgres hung (SIGSTOP of the whole cluster: connections accepted, nothing answered, sessions
frozen mid-statement) and resumed (SIGCONT): the same, and no answer slower than the bounds the
services keep (``DB_CONNECT_TIMEOUT_SECONDS`` for a connection, the statement bound for a query).
The cluster is the suite's own (testkit.pgproc), never the machine's shared Postgres."""

from __future__ import annotations

import asyncio
import time

import pytest

from testkit.fixtures import scrape
from testkit.pgproc import StopMode

from .conftest import Figures, Stack, wait_ready
from .load import WriteLoad, assert_stored_once, settled

pytestmark = pytest.mark.timeout(120)

DOWN_SECONDS = 1.5


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_postgres_stopped_and_started_under_write_load(
    stack: Stack, figures: Figures, mode: StopMode
) -> None:
    await stack.ensure_up()
    async with WriteLoad(stack.api, stack.headers("alice"), stack.headers("bob"), writers=4) as load:
        await asyncio.sleep(1.0)
        stopped_at = time.monotonic()
        await asyncio.to_thread(stack.postgres.stop, mode)
        stop_took = time.monotonic() - stopped_at
        await asyncio.sleep(DOWN_SECONDS)
        started_at = time.monotonic()
        await asyncio.to_thread(stack.postgres.start)
        postgres_up = time.monotonic() - started_at
        ready = {name: await wait_ready(s.url) for name, s in stack.services.items()}
        await asyncio.sleep(1.0)
        first_write = load.report.first_success_after(started_at)
        report = await load.stop()

    _, counts = await settled(stack.postgres.dsn, report)
    down = {k: v for k, v in report.attempts.items() if not k.endswith(("201", "200"))}
    figures.record(
        f"postgres stop -m {mode}",
        down_for_s=round(stop_took + DOWN_SECONDS + postgres_up, 2),
        postgres_restart_s=round(postgres_up, 2),
        recovery_after_restart_s=round(first_write, 2) if first_write is not None else None,
        services_ready_after_restart_s=round(max(ready.values()) + postgres_up, 2),
        answers_while_down=down,
        server_errors=report.server_errors,
        acknowledged=counts["acknowledged"],
        lost=counts["lost"],
        duplicates=counts["duplicates"],
    )
    assert report.server_errors == 0, report.attempts  # 503 with Retry-After, never a 500
    assert report.unexpected == []
    assert report.unresolved == []
    assert first_write is not None
    assert first_write < 10
    assert_stored_once(counts)


HUNG_SECONDS = 8.0
#: the stack's DB_CONNECT_TIMEOUT_SECONDS (a pooled connection waited for) and DB_STATEMENT_TIMEOUT_SECONDS
#: (one statement's answer): what one request may wait on a hung database, plus the services' own work
CONNECT_S, STATEMENT_S = 2.0, 2.0
#: a decision first asks the timesheets service about the entry (APPLY_TIMEOUT_SECONDS, its own
#: database hung as well), then looks up its own record of it
APPLY_S = 2.0
BOUNDS = {"POST": CONNECT_S + STATEMENT_S + 0.7, "PUT": APPLY_S + CONNECT_S + STATEMENT_S + 0.7}


async def ambiguous_writes(stack: Stack) -> float:
    """``db_ambiguous_commits_total`` of every service (writes whose outcome was checked)."""
    total = 0.0
    for service in stack.services.values():
        for line in (await scrape(service.url)).splitlines():
            if line.startswith("db_ambiguous_commits_total{"):
                total += float(line.rsplit(" ", 1)[1])
    return total


async def test_postgres_hung_and_resumed_under_write_load(stack: Stack, figures: Figures) -> None:
    """A hung server answers nothing and closes nothing: without a bound of their own the requests
    on its connections waited as long as it hung. Each answer comes within the bounds (503 with
    Retry-After), except a write whose statement or ``COMMIT`` was on its way when it hung: its
    outcome is checked on a fresh connection (docs/CONTRACTS.md: up to 10 s), answered truthfully
    right after the server is back."""
    assert float(stack.gateway_env["DB_STATEMENT_TIMEOUT_SECONDS"]) == STATEMENT_S
    assert float(stack.gateway_env["DB_CONNECT_TIMEOUT_SECONDS"]) == CONNECT_S
    assert float(stack.approvals.env["APPLY_TIMEOUT_SECONDS"]) == APPLY_S
    await stack.ensure_up()
    checked_before = await ambiguous_writes(stack)
    async with WriteLoad(stack.api, stack.headers("alice"), stack.headers("bob"), writers=4) as load:
        await asyncio.sleep(1.0)
        paused_at = time.monotonic()
        await asyncio.to_thread(stack.postgres.pause)
        try:
            await asyncio.sleep(HUNG_SECONDS)
            while_hung = dict(load.report.attempts)
        finally:
            await asyncio.to_thread(stack.postgres.resume)
        resumed_at = time.monotonic()
        ready = {name: await wait_ready(s.url) for name, s in stack.services.items()}
        await asyncio.sleep(1.0)
        first_write = load.report.first_success_after(resumed_at)
        report = await load.stop()

    _, counts = await settled(stack.postgres.dsn, report)
    # answers that took longer than the bounds: only writes whose outcome was checked, resolved
    # once the server was back (each counted in db_ambiguous_commits_total)
    checked = await ambiguous_writes(stack) - checked_before
    slow = [
        (start, end, what) for start, end, what in report.timings if end - start > BOUNDS[what.split()[0]]
    ]
    hung = [
        (round(end - start, 2), what)
        for start, end, what in slow
        if not resumed_at <= end <= resumed_at + 1.0
    ]
    figures.record(
        "postgres hung (SIGSTOP)",
        hung_for_s=round(resumed_at - paused_at, 2),
        recovery_after_resume_s=round(first_write, 2) if first_write is not None else None,
        services_ready_after_resume_s=round(max(ready.values()), 2),
        answers_until_resumed=while_hung,
        longest_answer_s=report.longest,
        resolved_after_resume=len(slow) - len(hung),
        outcomes_checked=checked,
        server_errors=report.server_errors,
        acknowledged=counts["acknowledged"],
        lost=counts["lost"],
        duplicates=counts["duplicates"],
    )
    assert report.server_errors == 0, report.attempts  # 503 with Retry-After, never a 500
    assert report.unexpected == []
    assert report.unresolved == []
    assert hung == [], report.longest  # no client hung with the server
    assert len(slow) <= checked, (slow, checked)  # a slow answer only for a write being resolved
    assert while_hung.get("503", 0) > 0, while_hung  # the hang was met (and answered 503)
    assert first_write is not None
    assert first_write < 5
    assert_stored_once(counts)
