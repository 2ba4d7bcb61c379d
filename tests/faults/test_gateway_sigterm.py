"""SIGTERM to a gateway with two worker processes under keep-alive load: requests in flight complete,
connections made after the signal are refused (nothing sent: a client retries elsewhere), and none is
reset or cut without an answer (issue 11: 6-10 resets per run with uvicorn's own supervisor)."""

from __future__ import annotations

import asyncio
import signal
import sys

import pytest

from testkit.drain import load_through
from testkit.fixtures import REPO_ROOT, ServiceProcess, free_port

from .conftest import Figures, Stack

pytestmark = pytest.mark.timeout(90)


async def test_gateway_sigterm_with_two_workers_under_keep_alive_load(stack: Stack, figures: Figures) -> None:
    await stack.ensure_up()
    # Behind it, a stand-in upstream whose answers can be made slow (?s=1.5), so that requests are
    # surely in flight when the signal comes.
    upstream_port = free_port()
    upstream = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "testkit.sampleapp", str(upstream_port), "1", cwd=REPO_ROOT
    )
    upstream_url = f"http://127.0.0.1:{upstream_port}"
    env = {**stack.gateway_env, "GATEWAY_WORKERS": "2", "TIMESHEETS_URL": upstream_url}
    gateway = ServiceProcess("gateway", env, log_dir=stack.logs)
    try:
        await asyncio.to_thread(gateway.start, "/readyz", 60)
        await asyncio.sleep(1.0)  # both workers warm
        assert gateway.process is not None
        process = gateway.process
        report = await load_through(
            f"{gateway.url}/api/timesheets",
            f"{gateway.url}/api/timesheets/slow?s=1.5",
            lambda: process.send_signal(signal.SIGTERM),
            headers=stack.headers("alice"),
        )
        code = await asyncio.to_thread(process.wait, 30)
    finally:
        gateway.stop()
        upstream.terminate()
        await upstream.wait()
    figures.record(
        "gateway SIGTERM, 2 workers, keep-alive load",
        requests_before_signal=report.requests_before_signal,
        after_signal=dict(report.after_signal),
        slow_requests_in_flight=report.slow,
        exit_code=code,
    )
    assert report.requests_before_signal > 50
    assert report.slow == ["ok"] * 4
    assert report.broken == 0, (report.after_signal, report.details)
    assert report.after_signal["refused"] > 0
    assert code in (0, -signal.SIGTERM)
