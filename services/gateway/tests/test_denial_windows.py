"""Aggregated denials and the per-address budget, in process, on a fake clock."""

from __future__ import annotations

from typing import Any

import pytest
from gateway import ratelimit
from gateway.denials import OTHER_ADDRESS, DenialWindows
from gateway.ratelimit import RateLimiter
from svckit.identity import Identity
from svckit.redisguard import RedisGuard

from testkit.clock import FakeClock

pytestmark = pytest.mark.unit

START = 1_800_000_000.0  # a multiple of 60 and of 10


def deny(windows: DenialWindows, address: str = "198.51.100.1", **overrides: Any) -> None:
    values: dict[str, Any] = {
        "status": 401,
        "reason": "missing_token",
        "route": "/api/timesheets",
        "method": "GET",
        "identity": None,
        "address": address,
        "request_id": "first-request",
        **overrides,
    }
    windows.add(**values)


def test_a_window_becomes_one_record_per_key_when_it_ends() -> None:
    clock = FakeClock(start=START)
    windows = DenialWindows(10, max_keys=100, clock=clock)
    for _ in range(500):
        deny(windows)
    deny(windows, reason="bad_signature", request_id="other")
    deny(windows, status=429, reason="rate_limit_subject", identity=Identity("https://i/", "sam"))
    assert windows.close() == []  # the window is still open
    clock.advance(9.5)
    deny(windows)
    assert windows.close() == []
    clock.advance(0.5)
    records = windows.close()
    assert len(records) == 3
    by_reason = {record["details"]["reason"]: record for record in records}
    flood = by_reason["missing_token"]
    assert flood["details"] == {
        "status": 401,
        "reason": "missing_token",
        "method": "GET",
        "route": "/api/timesheets",
        "address": "198.51.100.1",
        "count": 501,
        "window_start": "2027-01-15T08:00:00.000Z",
        "window_end": "2027-01-15T08:00:10.000Z",
    }
    assert flood["request_id"] == "first-request"
    assert flood["actor"]["kind"] == "anonymous"
    assert flood["action"] == "access.denied"
    assert flood["outcome"] == "denied"
    assert flood["resource"] == {"type": "route", "id": "GET /api/timesheets"}
    assert flood["occurred_at"].startswith("2027-01-15T08:00:10")
    limited = by_reason["rate_limit_subject"]
    assert limited["actor"]["subject"] == "sam"  # a verified caller's refusals name the caller
    assert len(windows) == 0
    assert windows.close() == []


def test_a_flood_from_many_addresses_is_bounded_by_max_keys() -> None:
    clock = FakeClock(start=START)
    windows = DenialWindows(10, max_keys=5, clock=clock)
    for i in range(1000):
        deny(windows, address=f"2001:db8::{i:x}")
    clock.advance(10)
    records = windows.close()
    assert len(records) == 6  # five addresses, then everyone else together
    other = [record for record in records if record["details"]["address"] == OTHER_ADDRESS]
    assert [record["details"]["count"] for record in other] == [995]
    assert sum(record["details"]["count"] for record in records) == 1000


def test_shutdown_closes_the_open_window_up_to_now() -> None:
    clock = FakeClock(start=START)
    windows = DenialWindows(60, max_keys=5, clock=clock)
    deny(windows)
    clock.advance(12.5)
    [record] = windows.close(everything=True)
    assert record["details"]["window_end"] == "2027-01-15T08:00:12.500Z"


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
