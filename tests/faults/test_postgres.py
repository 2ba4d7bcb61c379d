"""Postgres stopped under write load — ``pg_ctl stop -m fast`` (sessions terminated, "cannot switch
to state 15" on the client side) and ``-m immediate`` (a crash: recovery from the WAL on restart) —
and started again: no 500 at any time, every acknowledged write stored once, recovery time printed.
The cluster is the suite's own (testkit.pgproc), never the machine's shared Postgres."""

from __future__ import annotations

import asyncio
import time

import pytest

from testkit.pgproc import StopMode

from .conftest import Figures, Stack, wait_ready
from .load import WriteLoad, check_invariants, wait_for_outboxes

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

    conn = await stack.db()
    try:
        await wait_for_outboxes(conn)
        counts = await check_invariants(conn, report)
    finally:
        await conn.close()
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
    assert counts["lost"] == 0
    assert counts["duplicates"] == 0
    assert counts["entries_without_one_audit_record"] == 0
    assert counts["acknowledged_decisions_not_applied"] == 0
