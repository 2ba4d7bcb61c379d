"""The throttles' in-process windows (what holds while Redis is away), on a fake clock."""

from __future__ import annotations

import asyncio

import pytest
from identity.throttle import FailureThrottle, LocalWindows, LoginThrottle

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


def test_a_flood_of_fresh_keys_is_not_swept_on_every_count() -> None:
    """Every sign-in attempt is counted in process too (the mirror of Redis's count), so a flood of
    distinct names keeps the table full of entries still in their window. Dropping only stale ones
    then freed nothing, and the whole table was walked again on each following count (100,000
    entries per attempt in production). Past the cap the oldest entries go, down to half."""
    clock = FakeClock()
    windows = LocalWindows(clock, max_entries=100)
    for n in range(101):
        windows.incr(f"name-{n}", 900)
    assert len(windows) == 50  # every entry fresh: the oldest half dropped
    assert windows.get("name-100")[0] == 1
    assert windows.get("name-0")[0] == 0
    for n in range(101, 150):
        windows.incr(f"name-{n}", 900)
    assert len(windows) == 99  # no sweep before the cap is passed again


def test_stale_entries_go_first() -> None:
    clock = FakeClock()
    windows = LocalWindows(clock, max_entries=10)
    for n in range(8):
        windows.incr(f"old-{n}", 60)
    clock.advance(61)
    for n in range(3):
        windows.incr(f"new-{n}", 60)
    assert len(windows) == 3  # the eight stale ones dropped, every fresh one kept
