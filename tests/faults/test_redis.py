"""Redis killed, and Redis hung (SIGSTOP: connections accepted, nothing answered): the gateway goes on
serving — tokens verified from its in-process key cache, rate limits counted locally — within its
short Redis timeouts; the p99 latency of each phase is printed."""

from __future__ import annotations

import asyncio
import statistics
import time

import aiohttp
import pytest

from .conftest import Figures, Stack, wait_ready

pytestmark = pytest.mark.timeout(90)


async def read_load(stack: Stack, seconds: float, clients: int = 6) -> tuple[list[float], dict[int, int]]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    deadline = time.monotonic() + seconds

    async def client(http: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            async with http.get(
                f"{stack.api}/timesheets?limit=1", headers=stack.headers("alice")
            ) as response:
                await response.read()
                statuses[response.status] = statuses.get(response.status, 0) + 1
            latencies.append(time.perf_counter() - started)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return latencies, statuses


def p99_ms(latencies: list[float]) -> float:
    return round(statistics.quantiles(latencies, n=100)[98] * 1000, 1)


async def test_gateway_serves_with_redis_killed_and_hung(stack: Stack, figures: Figures) -> None:
    await stack.ensure_up()
    phases: dict[str, dict[str, object]] = {}
    try:
        for phase, act in (
            ("redis up", None),
            ("redis killed", stack.redis.stop),
            ("redis hung (SIGSTOP)", stack.redis.pause),
        ):
            if phase == "redis hung (SIGSTOP)":
                await asyncio.to_thread(stack.redis.start)  # a fresh, empty one on the same port
                await asyncio.sleep(1.0)
            if act is not None:
                act()
            latencies, statuses = await read_load(stack, 3.0)
            phases[phase] = {
                "requests": len(latencies),
                "statuses": statuses,
                "p50_ms": round(statistics.median(latencies) * 1000, 1),
                "p99_ms": p99_ms(latencies),
            }
            assert set(statuses) == {200}, (phase, statuses)
    finally:
        if stack.redis.process is not None and stack.redis.process.poll() is None:
            stack.redis.resume()
        else:
            await asyncio.to_thread(stack.redis.start)
    figures.record("redis faults (gateway reads)", **phases)
    await wait_ready(stack.gateway.url)
    for phase in ("redis killed", "redis hung (SIGSTOP)"):
        assert phases[phase]["p99_ms"] < 500, phases  # type: ignore[operator]
