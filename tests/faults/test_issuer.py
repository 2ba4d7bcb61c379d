"""The token issuer down (the identity service SIGKILLed), first while the gateway's cached keys are
fresh, then once they are stale (JWKS_MAX_TTL_SECONDS=10 in the suite): valid tokens keep passing on
the cached keys, and the failing issuer is asked for keys a bounded number of times (exponential
back-off), not once per request; the fetch rate and the warnings logged are printed."""

from __future__ import annotations

import asyncio
import re
import signal
import time

import aiohttp
import pytest

from testkit.fixtures import metrics_url

from .conftest import Figures, Stack, wait_ready
from .test_redis import p99_ms, read_load

pytestmark = pytest.mark.timeout(90)


async def fetch_errors(stack: Stack) -> float:
    async with aiohttp.ClientSession() as http, http.get(metrics_url(stack.gateway.url)) as response:
        text = await response.text()
    total = 0.0
    for line in text.splitlines():
        if (
            line.startswith("gateway_jwks_fetch_total{")
            and 'outcome="error"' in line
            and stack.issuer in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def key_age(stack: Stack) -> float:
    async with aiohttp.ClientSession() as http, http.get(metrics_url(stack.gateway.url)) as response:
        text = await response.text()
    match = re.search(r"gateway_jwks_key_age_seconds\{[^}]*\} ([0-9.e+]+)", text)
    return float(match.group(1)) if match else 0.0


async def test_issuer_down_with_fresh_then_stale_keys(stack: Stack, figures: Figures) -> None:
    await stack.ensure_up()
    assert stack.identity.process is not None
    warnings_before = stack.gateway.logs().count("fetching signing keys failed")
    stack.identity.process.send_signal(signal.SIGKILL)
    await asyncio.to_thread(stack.identity.process.wait, 10)
    killed_at = time.monotonic()
    errors_before = await fetch_errors(stack)
    try:
        fresh, fresh_statuses = await read_load(stack, 2.0, clients=4)
        # Until the cached keys are stale (at most JWKS_MAX_TTL_SECONDS after the last fetch), then on.
        stale_from = None
        stale_latencies: list[float] = []
        stale_statuses: dict[int, int] = {}
        while time.monotonic() - killed_at < 30:
            latencies, statuses = await read_load(stack, 1.0, clients=4)
            if stale_from is None and await fetch_errors(stack) > errors_before:
                stale_from = time.monotonic()  # the first failed refresh: the keys went stale
            elif stale_from is not None:
                stale_latencies += latencies
                for status, count in statuses.items():
                    stale_statuses[status] = stale_statuses.get(status, 0) + count
                if time.monotonic() - stale_from > 5:  # the back-off's 1 s, 2 s steps: 2-4 fetches
                    break
        assert stale_from is not None, "the keys never went stale"
        stale_seconds = time.monotonic() - stale_from
        fetches = await fetch_errors(stack) - errors_before
    finally:
        await asyncio.to_thread(stack.identity.start, "/readyz", 60)
        await wait_ready(stack.gateway.url)
    warnings = stack.gateway.logs().count("fetching signing keys failed") - warnings_before
    figures.record(
        "issuer down",
        fresh_keys={"requests": len(fresh), "statuses": fresh_statuses, "p99_ms": p99_ms(fresh)},
        stale_keys={
            "requests": len(stale_latencies),
            "statuses": stale_statuses,
            "p99_ms": p99_ms(stale_latencies),
            "seconds": round(stale_seconds, 1),
            "failed_fetches": int(fetches),
            "fetches_per_minute_at_this_point_of_the_back_off": round(fetches / stale_seconds * 60, 1),
            "warnings_logged": warnings,
            "key_age_s": round(await key_age(stack), 1),
        },
    )
    assert set(fresh_statuses) == {200}, fresh_statuses
    assert set(stale_statuses) == {200}, stale_statuses  # valid tokens pass on the stale keys
    assert len(stale_latencies) > 200
    assert 1 <= fetches <= 6, fetches  # back-off 1 s, 2 s, 4 s…: not once per request
    assert warnings <= 2, warnings
