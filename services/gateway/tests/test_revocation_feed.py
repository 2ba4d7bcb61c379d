"""The revocation stream reader against a real (private) Redis: it reads, it reconnects, and stopping it
is bounded whatever Redis is doing (blocked in XREAD, hung, gone)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest
from gateway.revocations import DenyList, RevocationFeed
from prometheus_client import REGISTRY
from svckit.redisguard import RedisGuard

from testkit.redisproc import PrivateRedis

ISSUER = "http://localhost:9000/"


@pytest.fixture
async def redis_server() -> AsyncIterator[PrivateRedis]:
    server = PrivateRedis().start()
    yield server
    server.close()


async def wait_for(check: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_reads_entries_and_stops_promptly_while_blocked(redis_server: PrivateRedis) -> None:
    guard = RedisGuard(redis_server.url, "p:", timeout=0.3, retry_seconds=0.2)
    deny = DenyList()
    feed = RevocationFeed(guard, deny, {ISSUER: 0}, block_seconds=5.0)
    feed.start()
    try:
        exp = str(int(time.time()) + 60)
        await guard.client.xadd(
            "p:revocations", {"iss": ISSUER, "jti": "j1", "exp": exp, "reason": "revoked"}
        )
        await wait_for(lambda: deny.denied(ISSUER, "j1"))
        await asyncio.sleep(0.2)  # now blocked in XREAD for up to 5 s
    finally:
        started = time.monotonic()
        await feed.stop()
        assert time.monotonic() - started < 1.0
        await guard.close()


@pytest.mark.parametrize("fault", ["hung", "gone"])
async def test_stopping_is_bounded_when_redis_hangs_or_is_gone(
    redis_server: PrivateRedis, fault: str
) -> None:
    guard = RedisGuard(redis_server.url, "p:", timeout=0.3, retry_seconds=0.2)
    feed = RevocationFeed(guard, DenyList(), {ISSUER: 0}, block_seconds=0.5)
    feed.start()
    await wait_for(feed.connected.is_set)
    if fault == "hung":
        redis_server.pause()
    else:
        redis_server.stop()
    await asyncio.sleep(1.2)  # the read times out; the reader backs off and retries
    try:
        started = time.monotonic()
        await feed.stop()
        assert time.monotonic() - started < 2.5
    finally:
        redis_server.resume()
        await guard.close()


async def test_catches_up_from_the_start_after_reconnecting(redis_server: PrivateRedis) -> None:
    guard = RedisGuard(redis_server.url, "p:", timeout=0.3, retry_seconds=0.2)
    deny = DenyList()
    feed = RevocationFeed(guard, deny, {ISSUER: 0}, block_seconds=0.5)
    feed.start()
    try:
        await wait_for(feed.connected.is_set)
        redis_server.restart()  # empty; the reader's connection breaks
        exp = str(int(time.time()) + 60)
        writer = RedisGuard(redis_server.url, "p:", timeout=0.3, retry_seconds=0.2)
        await writer.client.xadd("p:revocations", {"iss": ISSUER, "jti": "after", "exp": exp, "reason": "x"})
        await wait_for(lambda: deny.denied(ISSUER, "after"))
        await writer.close()
    finally:
        await feed.stop()
        await guard.close()


async def test_a_cutoff_is_kept_across_a_redis_loss_and_learnt_again_when_republished(
    redis_server: PrivateRedis,
) -> None:
    """A cutoff entry (no jti) is applied as soon as it is written; Redis restarting empty does not make
    a running reader forget it, and a reader started afterwards learns it from the provider's
    re-publication (identity.revocation re-publishes held cutoffs when the stream's marker is gone)."""
    guard = RedisGuard(redis_server.url, "p:", timeout=0.3, retry_seconds=0.2)
    deny, late_deny = DenyList(), DenyList()
    running = RevocationFeed(guard, deny, {ISSUER: 0}, block_seconds=0.5)
    late: RevocationFeed | None = None
    now = int(time.time())
    fields = {"iss": ISSUER, "issued_before": str(now), "until": str(now + 600), "reason": "restore"}
    running.start()
    try:
        await guard.client.xadd("p:revocations", fields)  # type: ignore[arg-type]
        await wait_for(lambda: deny.cut_off(ISSUER, now - 1, time.time()))
        assert not deny.cut_off(ISSUER, now, time.time())
        redis_server.restart()  # empty; the reader's connection breaks
        await asyncio.sleep(0.5)
        assert deny.cut_off(ISSUER, now - 1, time.time()), "a running gateway keeps what it learnt"
        late = RevocationFeed(guard, late_deny, {ISSUER: 0}, block_seconds=0.5)
        late.start()
        await wait_for(late.connected.is_set)
        assert not late_deny.cut_off(ISSUER, now - 1, time.time()), "the stream lost it"
        writer = RedisGuard(redis_server.url, "p:", timeout=0.3, retry_seconds=0.2)
        await writer.client.xadd("p:revocations", fields)  # type: ignore[arg-type]  # re-published
        await wait_for(lambda: late_deny.cut_off(ISSUER, now - 1, time.time()))
        await wait_for(running.connected.is_set)
        assert deny.cutoffs(ISSUER) == ((now, now + 600),), "read again: held once"
        await writer.close()
    finally:
        await running.stop()
        if late is not None:
            await late.stop()
        await guard.close()


#: the loggers a reader's outage is told on: its own and its Redis guard's
LOGGERS = ("gateway.revocations", "svckit.redis")


class OwnLines(logging.Handler):
    """The records a logger emits from one asyncio task (one reader's own lines)."""

    def __init__(self, task: asyncio.Task[None] | None) -> None:
        super().__init__()
        self.task = task
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            current = asyncio.current_task()
        except RuntimeError:  # no event loop in this thread
            return
        if current is not None and current is self.task:
            self.records.append(record)


async def test_a_redis_outage_is_retried_with_back_off_and_logged_sparingly(
    redis_server: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis stopped for 6 s: the reader's first retry is quick, then they spread out (capped); the
    outage is logged when it starts (and then every tenth attempt), its end once; the reader is back
    within a capped retry of Redis being back. It was: one attempt and one warning every
    ``retry_seconds`` (here 0.2 s: ~30 of each)."""
    caplog.set_level(logging.INFO)
    guard = RedisGuard(redis_server.url, "p:", timeout=0.3, retry_seconds=0.2)
    feed = RevocationFeed(guard, DenyList(), {ISSUER: 0}, block_seconds=0.5, max_retry_seconds=1.6)
    errors = "gateway_revocation_feed_errors_total"
    feed.start()
    # this feed's own lines (its reader's and its guard's, logged from its task): other readers and
    # guards in this worker process (gateways other tests started) log to the same loggers — CI runs
    # counted their "readable again" and "redis unavailable" beside this feed's
    own_records = OwnLines(feed._task)
    for name in LOGGERS:
        logging.getLogger(name).addHandler(own_records)
    try:
        await wait_for(feed.connected.is_set)
        before = REGISTRY.get_sample_value(errors) or 0.0
        caplog.clear()
        own_records.records.clear()
        redis_server.stop()
        await wait_for(lambda: not feed.connected.is_set())
        await asyncio.sleep(6.0)
        attempts = (REGISTRY.get_sample_value(errors) or 0.0) - before
        down_lines = [r for r in own_records.records if r.levelno >= logging.WARNING]
        redis_server.start()
        back_at = time.monotonic()
        await wait_for(feed.connected.is_set, timeout=5.0)
        recovered_in = time.monotonic() - back_at
    finally:
        for name in LOGGERS:
            logging.getLogger(name).removeHandler(own_records)
        await feed.stop()
        await guard.close()
    assert 3 <= attempts <= 12, attempts
    feed_lines = [r.getMessage() for r in down_lines if r.name == "gateway.revocations"]
    # the Redis guard's lines, from this feed's task
    guard_lines = [r.getMessage() for r in down_lines if r.name == "svckit.redis"]
    assert 1 <= len(feed_lines) <= 2, feed_lines  # the first attempt's, perhaps the tenth's
    assert len(guard_lines) <= 1, guard_lines  # the guard's circuit opened once, not per attempt
    back_lines = [r for r in own_records.records if "again" in r.getMessage()]
    assert len(back_lines) == 1, [r.getMessage() for r in own_records.records]
    assert recovered_in < 1.6 + 1.0, recovered_in
