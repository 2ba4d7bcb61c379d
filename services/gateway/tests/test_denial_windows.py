"""The per-address budget of anonymous denials, in process, on a fake clock (their aggregation per
window is the kit's: services/kit/tests/test_denials.py)."""

from __future__ import annotations

import pytest
from gateway import ratelimit
from gateway.ratelimit import RateLimiter
from svckit.redisguard import RedisGuard

from testkit.clock import FakeClock

pytestmark = pytest.mark.unit

START = 1_800_000_000.0  # a multiple of 60 and of 10


def limiter(clock: FakeClock, per_address: int) -> RateLimiter:
    guard = RedisGuard("redis://127.0.0.1:9/0", "unit:", timeout=0.1, retry_seconds=1)  # never called
    return RateLimiter(
        guard,
        window_seconds=60,
        per_subject=10,
        per_client=10,
        sync_seconds=0.25,
        anonymous_per_address=per_address,
        clock=clock,
    )


def test_the_address_budget_is_per_address_and_per_window() -> None:
    clock = FakeClock(start=START + 20)
    limits = limiter(clock, per_address=3)
    for _ in range(3):
        assert limits.anonymous_refused("198.51.100.1").allowed
        limits.count_anonymous("198.51.100.1")
    refused = limits.anonymous_refused("198.51.100.1")
    assert (refused.allowed, refused.limit, refused.retry_after) == (False, "address", 40)
    assert limits.anonymous_refused("198.51.100.2").allowed
    clock.advance(40)
    assert limits.anonymous_refused("198.51.100.1").allowed


def test_addresses_beyond_the_bound_share_one_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ratelimit, "MAX_ADDRESSES", 4)
    clock = FakeClock(start=START)
    limits = limiter(clock, per_address=2)
    for i in range(4):
        limits.count_anonymous(f"2001:db8::{i}")
    limits.count_anonymous("2001:db8::a")
    limits.count_anonymous("2001:db8::b")
    assert not limits.anonymous_refused("2001:db8::c").allowed  # the overflow bucket is full
    assert limits.anonymous_refused("2001:db8::0").allowed  # the first four keep their own
