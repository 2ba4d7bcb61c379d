"""The kit's Redis guard against a real server that is refused, hung (SIGSTOP) and back again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis
from svckit.redisguard import RedisGuard

from testkit.fixtures import free_port
from testkit.redisproc import PrivateRedis


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    with PrivateRedis() as server:
        yield server


async def test_calls_work_and_keys_carry_the_prefix(private_redis: PrivateRedis) -> None:
    guard = RedisGuard(private_redis.url, "tsp-x:", timeout=0.3, retry_seconds=1.0)
    try:
        key = guard.key("identity", "login", "a")
        assert key == "tsp-x:identity:login:a"
        assert await guard.call(lambda c: c.set(key, "1")) is True
        assert await guard.call(lambda c: c.get(key)) == b"1"
    finally:
        await guard.close()


async def test_refused_connection_fails_fast_and_opens_the_circuit() -> None:
    guard = RedisGuard(f"redis://127.0.0.1:{free_port()}/0", "p:", timeout=0.3, retry_seconds=60)
    try:
        started = time.monotonic()
        assert await guard.call(lambda c: c.ping()) is None
        assert time.monotonic() - started < 0.3
        assert not guard.available
        started = time.monotonic()
        for _ in range(100):  # circuit open: Redis is not even tried
            assert await guard.call(lambda c: c.ping()) is None
        assert time.monotonic() - started < 0.05
    finally:
        await guard.close()


async def test_a_hung_server_costs_one_timeout_not_one_per_retry(private_redis: PrivateRedis) -> None:
    """redis-py would retry a timed-out call (three times, with back-off) by default; the guard's
    client does not, so a hung server costs one socket timeout, then nothing until the retry time."""
    guard = RedisGuard(private_redis.url, "p:", timeout=0.3, retry_seconds=0.5)
    try:
        assert await guard.call(lambda c: c.ping()) is True  # connected before the hang
        private_redis.pause()
        started = time.monotonic()
        assert await guard.call(lambda c: c.ping()) is None
        elapsed = time.monotonic() - started
        assert 0.25 < elapsed < 0.6, elapsed
        started = time.monotonic()
        assert await guard.call(lambda c: c.ping()) is None
        assert time.monotonic() - started < 0.05
        private_redis.resume()
        await asyncio.sleep(0.6)
        assert guard.available
        assert await guard.call(lambda c: c.ping()) is True
    finally:
        private_redis.resume()
        await guard.close()


async def test_after_a_restart_the_pools_idle_connections_do_not_fail_one_by_one() -> None:
    """Six pooled connections, Redis killed (one call fails, the circuit opens) and started again:
    once the circuit closes, concurrent calls all succeed. Fails on main: the idle connections to the
    old server were kept, and each failed at its first use after Redis was back, opening the circuit
    again each time (a gateway checked DPoP proofs in process only 2-3 s after a restart)."""
    with PrivateRedis() as redis:
        guard = RedisGuard(redis.url, "p:", timeout=0.3, retry_seconds=0.2)
        try:

            async def held(client: aioredis.Redis) -> bool:
                await client.blpop(["p:nothing"], timeout=0.1)
                return True

            assert await asyncio.gather(*(guard.call(held) for _ in range(6))) == [True] * 6
            redis.stop()
            assert await guard.call(lambda c: c.ping()) is None
            redis.start()
            await asyncio.sleep(0.25)
            assert await asyncio.gather(*(guard.call(lambda c: c.ping()) for _ in range(3))) == [True] * 3
        finally:
            await guard.close()


async def test_a_cancelled_close_of_an_idle_connection_is_not_the_callers_cancellation(
    private_redis: PrivateRedis,
) -> None:
    """After a failed call the guard closes the pool's idle connections (best effort), and redis-py
    raises the first failure among those closes as its own — a ``CancelledError`` too, when a close's
    timeout cancelled it (CPython 3.11's ``asyncio.timeout`` can leave that cancellation pending past
    its block). That reached the caller as its own cancellation: the identity provider at its CPU
    request answered 500 to sign-ins in a storm (2-10 of 200, in ~1 run of 10). A call that fails
    answers None, whatever the close of someone else's connection does; the caller's own cancellation
    still cancels it."""
    guard = RedisGuard(private_redis.url, "p:", timeout=0.3, retry_seconds=0.0)
    dead = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.3)
    try:
        assert await guard.call(lambda c: c.ping()) is True  # one idle connection in the pool
        (idle,) = guard.client.connection_pool._available_connections
        close = idle.disconnect

        async def close_then_cancelled(*args: object, **kwargs: object) -> None:
            await close(*args, **kwargs)  # type: ignore[arg-type]
            raise asyncio.CancelledError  # what the close's leaked cancellation delivers

        idle.disconnect = close_then_cancelled  # type: ignore[method-assign]
        # a real failure (a refused connection), the guard's pool's idle connection closed after it
        assert await guard.call(lambda c: dead.ping()) is None
        assert not idle.is_connected
        idle.disconnect = close  # type: ignore[method-assign]

        # and a caller's own cancellation is still its own
        private_redis.pause()
        try:
            task = asyncio.create_task(guard.call(lambda c: c.ping()))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            private_redis.resume()
    finally:
        await dead.aclose()
        await guard.close()
