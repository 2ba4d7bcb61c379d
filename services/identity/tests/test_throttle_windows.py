"""The throttles' in-process windows (what holds while Redis is away), on a fake clock."""

from __future__ import annotations

import asyncio

import pytest
from identity.throttle import FailureThrottle, LoginThrottle

from testkit.clock import FakeClock

pytestmark = pytest.mark.unit


async def test_a_login_window_ends_on_the_clock_not_on_a_sleep() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(None, max_per_user=2, max_per_address=100, window_seconds=900, clock=clock)
    verdicts = await asyncio.gather(*(throttle.attempt("erin", "192.0.2.1") for _ in range(5)))
    assert [v.allowed for v in verdicts] == [True, True, False, False, False]
    clock.advance(600)
    refused = await throttle.attempt("erin", "192.0.2.1")
    assert not refused.allowed
    assert (refused.scope, refused.retry_after) == ("user", 301)
    clock.advance(300)
    assert (await throttle.attempt("erin", "192.0.2.1")).allowed


async def test_a_success_gives_back_only_its_own_slot() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(None, max_per_user=2, max_per_address=100, window_seconds=60, clock=clock)
    assert (await throttle.attempt("finn", "192.0.2.2")).allowed  # a wrong password: stays counted
    assert (await throttle.attempt("finn", "192.0.2.2")).allowed
    await throttle.succeeded("finn", "192.0.2.2")  # the right one
    assert (await throttle.attempt("finn", "192.0.2.2")).allowed
    assert not (await throttle.attempt("finn", "192.0.2.2")).allowed


async def test_failures_per_address_count_until_the_window_ends() -> None:
    clock = FakeClock()
    throttle = FailureThrottle(None, "client-auth", max_per_address=3, window_seconds=60, clock=clock)
    for _ in range(3):
        assert (await throttle.check("192.0.2.3")).allowed
        await throttle.failed("192.0.2.3")
    assert not (await throttle.check("192.0.2.3")).allowed
    assert (await throttle.check("192.0.2.4")).allowed
    clock.advance(60)
    assert (await throttle.check("192.0.2.3")).allowed
