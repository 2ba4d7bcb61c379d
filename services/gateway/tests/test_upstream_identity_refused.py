"""A service refusing the identity the gateway signed (its 401) is never relayed to the caller.

The caller's token was verified at the gateway; a 401 passed on would make the SPA renew its token and
then ask for a new sign-in, neither of which can help. The gateway answers 502 with the cause:
``identity_clock_skew`` when the service refused for the clock (the gateway's clock here: a wall clock
150 s ahead, given to the gateway as its :class:`svckit.clock.Clock`; tests/faults/test_clock_skew.py
does it to real processes with libfaketime), ``upstream_identity_refused`` for anything else (a key the
service does not know) — on the coroutine path and on the callback path of a cached token alike.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from gateway import metrics
from prometheus_client import REGISTRY

from testkit.fixtures import new_pair_keys

from .conftest import Provider, StartGateway

SKEW = 150


class AheadClock:
    """The system's clocks, the wall clock ``seconds`` ahead (a node whose NTP broke)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def time(self) -> float:
        return time.time() + self.seconds

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def upstream_errors(kind: str) -> float:
    return (
        REGISTRY.get_sample_value("gateway_upstream_errors_total", {"service": "timesheets", "kind": kind})
        or 0
    )


def assert_not_the_callers(status: int, headers: Any, body: Any, reason: str) -> None:
    assert status == 502, body
    assert body["reason"] == reason, body
    assert "WWW-Authenticate" not in headers
    assert "Nothing is wrong with your sign-in" in body["detail"]


async def test_a_refusal_for_the_clock_is_a_502_that_names_it(
    api: Any, start_gateway: StartGateway, provider: Provider
) -> None:
    metrics.upstream_errors.labels("timesheets", "identity_clock_skew")
    before = upstream_errors("identity_clock_skew")
    token = provider.scoped("read:timesheets", "create:timesheets")
    async with start_gateway(clock=AheadClock(SKEW)) as gateway:
        # the first call verifies the token (the coroutine path); the next ones hit the verified-token
        # cache, whose bodyless requests go upstream from the parser's callback
        for _ in range(3):
            status, headers, body = await api("GET", f"{gateway}/api/timesheets", token)
            assert_not_the_callers(status, headers, body, "identity_clock_skew")
            assert "outcome" not in body  # a read: nothing to say about an effect
        status, headers, body = await api(
            "POST", f"{gateway}/api/timesheets", token, json={"date": "2024-01-01", "hours": 1}
        )
        assert_not_the_callers(status, headers, body, "identity_clock_skew")
        assert body["outcome"] == "not_stored", body
    assert upstream_errors("identity_clock_skew") - before == 4


async def test_any_other_refusal_of_the_signed_identity_is_a_502_too(
    api: Any, start_gateway: StartGateway, provider: Provider
) -> None:
    metrics.upstream_errors.labels("timesheets", "upstream_identity_refused")
    before = upstream_errors("upstream_identity_refused")
    # a key the service does not know (a rotation that reached one side only)
    stranger = new_pair_keys("stranger")["IDENTITY_KEYS_GATEWAY_TO_TIMESHEETS"]
    async with start_gateway(identity_keys_gateway_to_timesheets=stranger) as gateway:
        status, headers, body = await api(
            "GET", f"{gateway}/api/timesheets", provider.scoped("read:timesheets")
        )
    assert_not_the_callers(status, headers, body, "upstream_identity_refused")
    assert "(unknown_key)" in body["detail"]
    assert upstream_errors("upstream_identity_refused") - before == 1
