"""The rate limit's sliding window: no doubled limit across a window boundary (real Redis, fake clock).

The limits used to be fixed windows: a caller that spent its whole limit at the end of one window
and again at the start of the next got twice the limit within one window's length, on every replica
together. The estimate now weighs the previous window's total by the part of it that still lies
within one window's length (gateway/ratelimit.py). The limiters here count as the gateway's own
Redis user (svckit.redisacl), so a command its ACL does not grant fails these tests.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis
from gateway.ratelimit import Decision, RateLimiter
from prometheus_client import REGISTRY
from svckit.redisguard import RedisGuard

from testkit.clock import FakeClock
from testkit.fixtures import TcpProxy

from .conftest import Provider

LIMIT = 10
WINDOW = 10


def next_boundary(after: float, window: int = WINDOW) -> float:
    """The first window boundary at least two windows after ``after`` (tokens carry real times)."""
    return float((int(after) // window + 2) * window)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def guards(
    redis_user: Callable[..., str], redis_prefix: str
) -> AsyncIterator[Callable[..., RedisGuard]]:
    """``guards(url=None)`` → a RedisGuard on one prefix of this test's own, as the gateway connects."""
    url = redis_user("gateway", redis_prefix, any_suffix=True)
    prefix = f"{redis_prefix}sw-{uuid.uuid4().hex[:8]}:"
    made: list[RedisGuard] = []

    def make(via: str | None = None) -> RedisGuard:
        guard = RedisGuard(via or url, prefix, timeout=2.0, retry_seconds=0.1)
        made.append(guard)
        return guard

    make.url = url  # type: ignore[attr-defined]
    yield make
    for guard in made:
        await guard.close()


def limiter(guard: RedisGuard, clock: FakeClock, limit: int = LIMIT, window: int = WINDOW) -> RateLimiter:
    return RateLimiter(
        guard,
        window_seconds=window,
        per_subject=limit,
        per_client=10**6,
        anonymous_per_address=limit,
        sync_seconds=0.25,
        clock=clock,
    )


# --- through the gateway: its settings, its clock, real Redis ------------------------------------


async def test_a_burst_either_side_of_a_window_boundary_is_held_to_the_limit(
    api: Any, start_gateway: Any, provider: Provider
) -> None:
    boundary = next_boundary(time.time())
    clock = FakeClock(start=boundary - 0.5)  # half a second before a window ends
    settings = {"rate_limit_per_subject": LIMIT, "rate_limit_window_seconds": WINDOW}
    token = provider.token(sub=f"bursty-{uuid.uuid4().hex[:6]}")
    async with start_gateway(clock, **settings) as gateway:
        first = [(await api("GET", f"{gateway}/api/timesheets", token))[0] for _ in range(LIMIT)]
        assert first == [200] * LIMIT
        clock.advance(1.0)  # half a second into the next window
        answers = [await api("GET", f"{gateway}/api/timesheets", token) for _ in range(LIMIT)]
        # the previous window still weighs 10 * 0.95 = 9.5: one more request, not ten (fixed windows
        # let all ten through: twenty within one second)
        assert [status for status, _, _ in answers] == [200] + [429] * (LIMIT - 1)
        _, headers, body = answers[-1]
        assert body["reason"] == "rate_limit_subject"
        # 10 * (1 - f) + 1 < 10 once f > 0.1, i.e. 1.0 s into the window: 0.5 s from now
        assert headers["Retry-After"] == "1"
        clock.advance(0.4)
        assert (await api("GET", f"{gateway}/api/timesheets", token))[0] == 429
        clock.advance(0.2)
        assert (await api("GET", f"{gateway}/api/timesheets", token))[0] == 200


# --- the limiter itself, on real Redis --------------------------------------------------------------


async def test_a_steady_rate_just_under_the_limit_is_never_refused(guards: Any) -> None:
    clock = FakeClock(start=next_boundary(time.time()) - 3.3)
    limits = limiter(guards(), clock)
    try:
        step = WINDOW / (LIMIT - 1)  # LIMIT - 1 requests per window's length, evenly spaced
        refused = []
        for n in range(6 * (LIMIT - 1)):  # six windows' worth: five boundaries crossed
            decision = limits.check("steady", "")
            if not decision.allowed:
                refused.append((n, clock.time() % WINDOW))
            await limits.sync()
            clock.advance(step)
        assert refused == []
    finally:
        await limits.stop()


async def test_retry_after_says_when_the_estimate_falls_below_the_limit(guards: Any) -> None:
    boundary = next_boundary(time.time())
    clock = FakeClock(start=boundary - 8.0)  # 2 s into a window
    limits = limiter(guards(), clock)
    try:

        def fill(key: str) -> Decision:
            for _ in range(LIMIT):
                assert limits.check(key, "").allowed
            return limits.check(key, "")

        # the whole limit 2 s into a window: the estimate stays at 10 until the next window begins and
        # falls below it right after (10 * (1 - f) < 10 once f > 0): 8 s from now, strictly after → 9
        refused = fill("early")
        assert (refused.allowed, refused.limit, refused.retry_after) == (False, "subject", 9)
        clock.advance(8.0)
        assert not limits.check("early", "").allowed  # f = 0: still 10
        clock.advance(0.5)
        assert limits.check("early", "").allowed  # 10 * 0.95 + 0 = 9.5; now 1 in this window
        clock.advance(3.5)  # 4 s into the window: 10 * 0.6 + 1 = 7
        assert [limits.check("early", "").allowed for _ in range(3)] == [True] * 3
        refused = limits.check("early", "")  # 10 * 0.6 + 4 = 10
        # 10 * (1 - f) + 4 < 10 once f > 0.4: just after now → 1 (never less)
        assert (refused.allowed, refused.retry_after) == (False, 1)
        clock.advance(0.5)
        assert limits.check("early", "").allowed  # 10 * 0.55 + 4 = 9.5
        # three in one window, then eight 1 s into the next (3 * 0.9 + 7 = 9.7 admitted the eighth):
        # 3 * (1 - f) + 8 < 10 once f > 1/3, i.e. 3.33 s into the window, 2.33 s from now → 3
        clock.set_time(boundary + 2 * WINDOW - 1.0)
        assert [limits.check("mid", "").allowed for _ in range(3)] == [True] * 3
        clock.advance(2.0)
        assert [limits.check("mid", "").allowed for _ in range(8)] == [True] * 8
        refused = limits.check("mid", "")
        assert (refused.allowed, refused.retry_after) == (False, 3)
        clock.advance(2.2)
        assert not limits.check("mid", "").allowed  # 3 * 0.68 + 8 = 10.04
        clock.advance(0.2)
        assert limits.check("mid", "").allowed  # 3 * 0.66 + 8 = 9.98
        # a caller far over the limit (the other replicas' admissions, learnt at a sync): 60 in the
        # window 1 s in, so the estimate stays above the limit into the next window, until
        # 60 * (1 - f) < 10 there, f > 5/6: 18.33 s after this window began, 17.33 s from now → 18
        clock.set_time(boundary + 4 * WINDOW + 1.0)
        for _ in range(LIMIT):
            limits.check("heavy", "")
        limits._counters[("subject", "heavy")].known = 5 * LIMIT
        refused = limits.check("heavy", "")
        assert (refused.allowed, refused.retry_after) == (False, 18)
        clock.advance(17.3)  # told 18: refused just before the estimate falls below the limit
        assert not limits.check("heavy", "").allowed
        clock.advance(0.1)  # 60 * (1 - 0.844) = 9.4
        assert limits.check("heavy", "").allowed
    finally:
        await limits.stop()


async def test_the_anonymous_budget_slides_too(guards: Any) -> None:
    boundary = next_boundary(time.time())
    clock = FakeClock(start=boundary - 0.5)
    limits = limiter(guards(), clock)
    try:
        for _ in range(LIMIT):
            assert limits.anonymous_refused("198.51.100.9").allowed
            limits.count_anonymous("198.51.100.9")
        refused = limits.anonymous_refused("198.51.100.9")
        assert (refused.allowed, refused.limit) == (False, "address")
        clock.advance(1.0)  # the next window: the last one still weighs 9.5
        assert limits.anonymous_refused("198.51.100.9").allowed
        limits.count_anonymous("198.51.100.9")
        refused = limits.anonymous_refused("198.51.100.9")
        assert (refused.allowed, refused.retry_after) == (False, 1)
        assert limits.anonymous_refused("198.51.100.10").allowed
    finally:
        await limits.stop()


async def test_two_replicas_together_are_held_to_the_limit_across_a_boundary(guards: Any) -> None:
    boundary = next_boundary(time.time())
    clock = FakeClock(start=boundary - 0.5)
    one, two = limiter(guards(), clock), limiter(guards(), clock)
    try:

        async def alternate(count: int) -> list[bool]:
            admitted = []
            for n in range(count):
                here, there = (one, two) if n % 2 == 0 else (two, one)
                admitted.append(here.check("shared", "").allowed)
                await here.sync()  # push, then the other learns it
                await there.sync()
            return admitted

        assert sum(await alternate(2 * LIMIT)) == LIMIT  # together, not each
        clock.advance(1.0)
        # half a second into the next window, the last one weighs 9.5: one more between them
        assert sum(await alternate(2 * LIMIT)) == 1
        # a replica that never saw the caller before learns the previous window from Redis
        three = limiter(guards(), clock)
        try:
            await three.sync()
            three.check("shared", "")  # first sight: counted here, the sync learns the rest
            await three.sync()
            assert not three.check("shared", "").allowed
            counter = three._counters[("subject", "shared")]
            assert counter.before == LIMIT
        finally:
            await three.stop()
        # what a replica keeps: the keys it counted in the last two windows, not every key the others
        # go on counting (its memory stays bounded by its own traffic)
        clock.advance(WINDOW)
        assert one.check("shared", "").allowed  # 1 * 0.95 + 0 (the window before: one request)
        await one.sync()
        await two.sync()  # two counted nothing in the window before: its counter is rolled no more
        assert ("subject", "shared") not in two._counters
        assert ("subject", "shared") in one._counters
        clock.advance(WINDOW)
        await one.sync()
        assert one._counters[("subject", "shared")].before == 1  # still weighs in this window
        clock.advance(WINDOW)
        await one.sync()
        await two.sync()
        assert one._counters == {}
        assert two._counters == {}
    finally:
        await one.stop()
        await two.stop()


async def test_with_redis_away_the_limits_fail_open_as_before(guards: Any, redis_url: str) -> None:
    url = guards.url
    parts = urlsplit(url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    await proxy.start()
    clock = FakeClock(start=next_boundary(time.time()) - 0.5)
    limits = limiter(guards(proxy.url_for(url)), clock)
    try:
        for _ in range(LIMIT):
            assert limits.check("away", "").allowed
        await limits.sync()
        assert not limits.check("away", "").allowed
        await proxy.cut()
        await limits.sync()  # fails: the circuit opens
        failopen = sample("gateway_ratelimit_failopen_total")
        assert all(limits.check("away", "").allowed for _ in range(5))
        assert sample("gateway_ratelimit_failopen_total") - failopen == 5
        clock.advance(1.0)  # across the boundary too
        assert limits.check("away", "").allowed
        # the address budget keeps counting in the worker meanwhile
        for _ in range(LIMIT):
            limits.count_anonymous("198.51.100.11")
        assert not limits.anonymous_refused("198.51.100.11").allowed
        await proxy.start()
        await asyncio.sleep(0.15)  # the circuit's retry_seconds
        await limits.sync()
        # counting resumes: the previous window (ten) still weighs 9.5 and refuses a second one
        assert limits.check("away", "").allowed
        assert not limits.check("away", "").allowed
    finally:
        await limits.stop()
        await proxy.cut()


async def test_a_boundary_crossed_while_a_sync_is_under_way_counts_each_request_once(
    guards: Any, redis_url: str
) -> None:
    import redis.asyncio as aioredis

    boundary = next_boundary(time.time())
    clock = FakeClock(start=boundary - 0.5)
    guard = guards()
    limits = limiter(guard, clock)
    admin = aioredis.from_url(redis_url)
    try:
        for _ in range(LIMIT):
            assert limits.check("racing", "").allowed  # ten pending, not pushed yet
        pushing = asyncio.create_task(limits.sync())
        await asyncio.sleep(0)  # the sync took its ten and waits for Redis
        clock.advance(1.0)
        assert limits.check("racing", "").allowed  # rolls the counter on meanwhile: 10 * 0.95 + 0
        await pushing
        await limits.sync()
        window = int(boundary // WINDOW)
        keys = [guard.key("gateway", "rl", "subject", "racing", str(w)) for w in (window - 1, window)]
        stored = [await admin.get(key) for key in keys]
        assert stored == [b"10", b"1"]  # the ten pushed once, not again as the previous window's
        assert not limits.check("racing", "").allowed
    finally:
        await admin.aclose()
        await limits.stop()


async def test_one_hosts_ipv6_addresses_share_one_anonymous_budget_and_one_key(
    guards: Any, redis_url: str
) -> None:
    """A host holds a /64 and may send from any address of it. Counted per address, each new one had
    a fresh budget of anonymous denials (the flood was never refused) and a Redis counter of its own
    (two windows + 5 s) per request, up to ``MAX_ADDRESSES`` per window on each worker, ~165 bytes
    each: 100 000 addresses a minute on each of ten workers filled the chart's 192 MB Redis. Now an
    IPv6 address counts as its /64 (fails on main: never refused, 30 keys)."""
    guard = guards()
    limits = limiter(guard, FakeClock(start=next_boundary(time.time()) + 1.0))
    try:
        refused = []
        for i in range(3 * LIMIT):
            address = f"2001:db8:77:1:{i:x}::{i + 1:x}"
            decision = limits.anonymous_refused(address)
            refused.append(not decision.allowed)
            if decision.allowed:
                limits.count_anonymous(address)
        assert refused == [False] * LIMIT + [True] * 2 * LIMIT, refused
        await limits.sync()
        admin = aioredis.from_url(redis_url)  # the gateway's own user may not SCAN
        try:
            keys = [key async for key in admin.scan_iter(match=guard.key("gateway", "rl", "address", "*"))]
        finally:
            await admin.aclose()
        assert len(keys) == 1, keys
        assert limits.anonymous_refused("2001:db8:77:2::1").allowed, "another /64 is another client"
    finally:
        await limits.stop()
