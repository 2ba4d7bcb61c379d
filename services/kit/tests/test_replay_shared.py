"""The replay memory shared by replicas (svckit.replay on Redis): batched round trips, what one replica
recorded refused at another, and writes refused / reads served while Redis is away."""

from __future__ import annotations

import asyncio
import uuid

from svckit.identity import new_nonce
from svckit.redisguard import RedisGuard
from svckit.replay import ReplayMemory

from testkit.redisproc import PrivateRedis


async def test_concurrent_nonces_share_round_trips_and_every_replica_sees_them(redis_url: str) -> None:
    """Requests arriving together are recorded in one pipelined round trip each batch, and what one
    replica recorded is a replay at another (the shared memory, on the session's Redis)."""
    prefix = f"test-replay-{uuid.uuid4().hex}:"
    first = RedisGuard(redis_url, prefix, timeout=1.0, retry_seconds=1.0)
    second = RedisGuard(redis_url, prefix, timeout=1.0, retry_seconds=1.0)
    try:
        one, other = ReplayMemory(first, "timesheets", 60), ReplayMemory(second, "timesheets", 60)
        nonces = [new_nonce() for _ in range(64)]
        verdicts = await asyncio.gather(*(one.first_use(n, "POST") for n in nonces))
        assert verdicts == ["fresh"] * 64
        assert one.round_trips == 1  # checked in the same turn of the loop: one round trip for all
        again = await asyncio.gather(*(other.first_use(n, "GET") for n in nonces))
        assert again == ["replay"] * 64
        # a lone request gets a round trip of its own, one turn of the loop later (no timer)
        assert await one.first_use(new_nonce(), "PUT") == "fresh"
        assert one.round_trips == 2
    finally:
        await first.close()
        await second.close()


async def test_writes_are_refused_and_reads_served_while_the_shared_memory_is_away() -> None:
    redis = PrivateRedis().start()
    guard = RedisGuard(redis.url, "replay:", timeout=0.5, retry_seconds=30.0)
    try:
        memory = ReplayMemory(guard, "timesheets", 60)
        assert await memory.first_use(new_nonce(), "POST") == "fresh"
        redis.stop()
        verdicts = await asyncio.gather(
            *(memory.first_use(new_nonce(), method) for method in ("POST", "GET", "DELETE", "HEAD"))
        )
        assert verdicts == ["unavailable", "fresh", "unavailable", "fresh"]
    finally:
        await guard.close()
        redis.stop()
