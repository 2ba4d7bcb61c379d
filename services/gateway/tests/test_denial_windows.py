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


def test_the_address_budget_is_per_address_and_slides_with_the_window() -> None:
    clock = FakeClock(start=START + 20)
    limits = limiter(clock, per_address=3)
    for _ in range(3):
        assert limits.anonymous_refused("198.51.100.1").allowed
        limits.count_anonymous("198.51.100.1")
    refused = limits.anonymous_refused("198.51.100.1")
    # the window's three weigh 3 * (1 - f) in the next one: below 3 just after it begins, 40 s on
    assert (refused.allowed, refused.limit, refused.retry_after) == (False, "address", 41)
    assert limits.anonymous_refused("198.51.100.2").allowed
    clock.advance(40)
    assert not limits.anonymous_refused("198.51.100.1").allowed  # 3 * (1 - 0): still the budget
    clock.advance(1)
    assert limits.anonymous_refused("198.51.100.1").allowed  # 3 * 59/60
    limits.count_anonymous("198.51.100.1")
    assert not limits.anonymous_refused("198.51.100.1").allowed  # sliding: not a whole new budget
    clock.advance(60)
    assert limits.anonymous_refused("198.51.100.1").allowed


def test_addresses_beyond_the_bound_share_one_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ratelimit, "MAX_ADDRESSES", 4)
    clock = FakeClock(start=START)
    limits = limiter(clock, per_address=2)
    for i in range(4):  # each its own /64: one client to the limit (svckit.proxies.throttle_key)
        limits.count_anonymous(f"2001:db8:{i}::1")
    limits.count_anonymous("2001:db8:a::1")
    limits.count_anonymous("2001:db8:b::1")
    assert not limits.anonymous_refused("2001:db8:c::1").allowed  # the overflow bucket is full
    assert limits.anonymous_refused("2001:db8:0::1").allowed  # the first four keep their own


async def test_gateway_denial_windows_that_end_while_no_delivery_runs_are_bounded() -> None:
    """The gateway's delivery task backs off up to 30 s while the audit service is away; with a short
    AUDIT_DENIAL_WINDOW_SECONDS (down to 0.05 s) many windows end meanwhile, each with up to
    AUDIT_DENIAL_MAX_KEYS tallies, all kept until the next delivery runs. The services' recorder
    (svckit.denials.DenialRecorder) turns ended windows into bounded waiting records on the request
    path once more than two are open; the gateway's auditor, fed by every anonymous flood, must stay
    within the same kind of bound (its queue: AUDIT_QUEUE_SIZE, drops counted)."""
    from gateway.denials import DenialAuditor
    from svckit.http import HttpClient, SignedClient

    from testkit.fixtures import new_pair_keys, pair_signer

    clock = FakeClock(start=START)
    http = HttpClient()
    try:
        auditor = DenialAuditor(
            SignedClient(http, "http://127.0.0.1:9", pair_signer(new_pair_keys("unit"), "gateway", "audit")),
            queue_size=5,
            batch_size=5,
            flush_seconds=1,
            window_seconds=10,
            max_keys=3,
            clock=clock,
        )
        for window in range(50):  # no delivery at all: the task is backing off
            for i in range(3):
                auditor.aggregate(
                    status=401,
                    reason="malformed",
                    route="/api/timesheets",
                    method="GET",
                    request_id=f"r{window}-{i}",
                    identity=None,
                    address=f"198.51.100.{i}",
                )
            clock.advance(10)
        assert len(auditor.windows) + auditor.queued <= 2 * 3 + 5, (
            f"{len(auditor.windows)} tallies kept for {auditor.windows.open_windows} windows"
        )
    finally:
        await http.close()
