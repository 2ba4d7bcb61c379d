"""SIGKILL of each service in turn under a steady write load (creates through the gateway, approvals
of a third of them): no acknowledged write lost, none stored twice, every change on the audit trail
exactly once, the chain intact. Each kill is followed at once by a restart, as a kubelet would."""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import pytest

from .conftest import Figures, Stack, wait_ready
from .load import WriteLoad, assert_stored_once, settled

pytestmark = pytest.mark.timeout(150)

KILL_ORDER = ("timesheets", "audit", "approvals", "gateway", "identity", "timesheets")


async def verify_chain(stack: Stack) -> dict[str, object]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{stack.api}/audit/verify", headers=stack.headers("carol")) as response,
    ):
        verification: dict[str, object] = await response.json()
        assert response.status == 200, verification
        return verification


async def test_sigkill_each_service_under_write_load(stack: Stack, figures: Figures) -> None:
    await stack.ensure_up()
    t0 = time.monotonic()
    outages: dict[str, dict[str, float | int | None]] = {}
    async with WriteLoad(stack.api, stack.headers("alice"), stack.headers("bob")) as load:
        await asyncio.sleep(1.5)
        for name in KILL_ORDER:
            service = stack.services[name]
            assert service.process is not None
            killed_at = time.monotonic()
            service.process.send_signal(signal.SIGKILL)
            await asyncio.to_thread(service.process.wait, 10)
            await asyncio.to_thread(service.start, "/healthz", 60)
            ready = await wait_ready(service.url) + (time.monotonic() - killed_at)
            await asyncio.sleep(1.0)  # the load runs on against the restarted service
            key = name if name not in outages else f"{name} (again)"
            outages[key] = {
                "restarted_and_ready_s": round(ready, 2),
                "clients_saw_errors_for_s": round(load.report.errors_for(killed_at, time.monotonic()), 2),
                "failed_attempts": load.report.failed_between(killed_at, time.monotonic()),
            }
        t_stop = time.monotonic()
        report = await load.stop()
        print(f"kills done {t_stop - t0:.1f}, load stopped after {time.monotonic() - t_stop:.1f}")

    stopped = time.monotonic()
    drained, counts = await settled(stack.postgres.dsn, report)
    verification = await verify_chain(stack)
    print(f"stop {stopped - t0:.1f} drain+checks+verify {time.monotonic() - stopped:.1f}")

    figures.record(
        "sigkill under write load",
        outages=outages,
        **counts,
        attempts=dict(report.attempts),
        audit_drained_after_s=round(drained, 2),
        chain=verification,
    )
    assert report.unexpected == []
    assert report.unresolved == []
    assert report.server_errors == 0, report.attempts
    assert counts["acknowledged"] > 100
    assert counts["decisions_acknowledged"] > 10
    assert_stored_once(counts)
    assert verification["ok"] is True
