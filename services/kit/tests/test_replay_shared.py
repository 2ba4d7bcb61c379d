"""The replay memory shared by replicas (svckit.replay on Redis): batched round trips, what one replica
recorded refused at another, and writes refused / reads served while Redis is away."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from redis.exceptions import AuthenticationError, OutOfMemoryError
from svckit.identity import new_nonce
from svckit.redisguard import RedisGuard
from svckit.replay import ReplayMemory, SetOnceWire

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


async def test_nonces_seen_before_and_during_an_outage_stay_used_once_after_redis_came_back_empty() -> None:
    """Replica A accepts a write through Redis, Redis dies (a restart without persistence) and A
    serves a read meanwhile; Redis comes back empty. Replayed to replica B then, neither may pass: A
    writes its window back into Redis. Fails on main: B accepted both, for the rest of the window
    (the chaos hunt saw captured writes accepted by the other timesheets replica after Redis
    restarted, also by a replica that had seen the outage, which the stated residuals do not cover)."""
    import redis.asyncio as aioredis

    redis = PrivateRedis().start()
    guards = [RedisGuard(redis.url, "replay:", timeout=0.3, retry_seconds=0.2) for _ in range(2)]
    a, b = (ReplayMemory(guard, "timesheets", 60) for guard in guards)
    try:
        write, read = new_nonce(), new_nonce()
        assert await a.first_use(write, "POST") == "fresh"
        redis.stop()
        assert await a.first_use(read, "GET") == "fresh"  # this replica's memory only
        redis.start()  # empty
        client = aioredis.from_url(redis.url)
        try:
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and len(await client.keys("replay:*")) < 2:
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()
        assert await b.first_use(write, "POST") == "replay"
        assert await b.first_use(read, "GET") == "replay"
        assert await b.first_use(new_nonce(), "POST") == "fresh"
    finally:
        for memory in (a, b):
            memory.close()
        for guard in guards:
            await guard.close()
        redis.stop()


async def test_a_restart_between_two_requests_is_noticed_and_the_window_written_back() -> None:
    """Redis restarts empty between two requests of replica A: A's next request finds it up (the
    wire connects again, no error), yet what A accepted before is written back, because Redis
    closed A's connection. Fails without the connection hook: B accepted the write again (the
    chaos hunt's replays after a quick Redis restart)."""
    redis = PrivateRedis().start()
    guards = [RedisGuard(redis.url, "replay:", timeout=0.3, retry_seconds=0.2) for _ in range(2)]
    a, b = (ReplayMemory(guard, "timesheets", 60) for guard in guards)
    try:
        write = new_nonce()
        assert await a.first_use(write, "POST") == "fresh"
        redis.restart()
        await asyncio.sleep(0.05)  # the loop reads the closed connection
        assert await a.first_use(new_nonce(), "POST") == "fresh"  # through Redis: no error seen
        await asyncio.sleep(0.6)  # the rewrite: one retry period, one round trip
        assert await b.first_use(write, "POST") == "replay"
    finally:
        for memory in (a, b):
            memory.close()
        for guard in guards:
            await guard.close()
        redis.stop()


async def test_the_wire_records_each_key_once_with_the_window_as_expiry(redis_url: str) -> None:
    """The replay memory's own connection (svckit.replay.SetOnceWire): what redis-py's SET NX EX did,
    read back with redis-py; a replayed nonce is a replay whichever client recorded it first."""
    prefix = f"test-wire-{uuid.uuid4().hex}:"
    guard = RedisGuard(redis_url, prefix, timeout=1.0, retry_seconds=1.0)
    wire = SetOnceWire(redis_url, timeout=1.0)
    try:
        keys = [guard.key("identity-replay", "timesheets", new_nonce()) for _ in range(5)]
        assert await guard.call(lambda c: c.set(keys[0], b"1")) is True  # recorded by redis-py
        assert await wire.set_once(keys, 121) == [False, True, True, True, True]
        assert await wire.set_once(keys[2:4], 121) == [False, False]
        ttl = await guard.call(lambda c: c.ttl(keys[1]))
        assert ttl is not None
        assert 110 < ttl <= 121
        memory = ReplayMemory(guard, "timesheets", 60)
        assert memory._wire is not None  # the lean path is the one in use for this URL
        nonce = new_nonce()
        assert await memory.first_use(nonce, "POST") == "fresh"
        other = ReplayMemory(RedisGuard(redis_url, prefix, timeout=1.0, retry_seconds=1.0), "timesheets", 60)
        assert await other.first_use(nonce, "POST") == "replay"  # another replica refuses the replay
        memory.close()
        other.close()
    finally:
        wire.close()
        await guard.close()


async def test_the_wire_authenticates_and_selects_the_database_of_the_url() -> None:
    with PrivateRedis() as redis:
        admin = RedisGuard(redis.url, "", timeout=1.0, retry_seconds=1.0)
        assert await admin.call(lambda c: c.config_set("requirepass", "s3cret")) is True
        await admin.close()
        url = f"redis://:s3cret@127.0.0.1:{redis.port}/3"
        wire = SetOnceWire(url, timeout=1.0)
        wrong = SetOnceWire(f"redis://:wrong@127.0.0.1:{redis.port}/3", timeout=1.0)
        reader = RedisGuard(url, "", timeout=1.0, retry_seconds=1.0)
        try:
            assert await wire.set_once(["k"], 10) == [True]
            assert await reader.call(lambda c: c.exists("k")) == 1  # in database 3, behind the password
            with pytest.raises(AuthenticationError):  # WRONGPASS, as redis-py names it
                await wrong.set_once(["k2"], 10)
            assert wrong._writer is None  # a failed round trip leaves no connection behind
        finally:
            wire.close()
            wrong.close()
            await reader.close()


async def test_the_wire_names_redis_errors_as_redis_py_does() -> None:
    """A full Redis (``noeviction``: ``-OOM command not allowed…``) and a refused credential raise the
    classes redis-py raises for them (``OutOfMemoryError``, ``AuthenticationError``), so the guard's
    warning ``redis unavailable`` names the cause at the services as at the gateway (the runbook's
    "Redis memory" and "Redis users" read it); before, the wire's were all ``ResponseError``."""
    with PrivateRedis(args=("--maxmemory-policy", "noeviction")) as redis:
        admin = RedisGuard(redis.url, "", timeout=1.0, retry_seconds=1.0)
        wire = SetOnceWire(redis.url, timeout=1.0)
        wrong = SetOnceWire(f"redis://nobody:wrong@127.0.0.1:{redis.port}/0", timeout=1.0)
        try:
            assert await wire.set_once(["k"], 10) == [True]
            assert await admin.call(lambda c: c.config_set("maxmemory", "1")) is True
            # answered, not raised: Redis refused the write but serves reads (the memory looks the
            # key up, test_replay_full.py), and the memory's guard opens its circuit with it
            (refused,) = await wire.set_once(["k2"], 10)
            assert isinstance(refused, OutOfMemoryError)
            assert await wire.exists(["k", "k2"]) == [True, False]
            assert await admin.call(lambda c: c.config_set("maxmemory", "0")) is True
            assert await wire.set_once(["k2"], 10) == [True]  # memory freed: recorded again
            with pytest.raises(AuthenticationError):
                await wrong.set_once(["k3"], 10)
        finally:
            wire.close()
            wrong.close()
            await admin.close()


async def test_a_hung_store_refuses_writes_within_the_timeout_and_recovers() -> None:
    """A round trip that gets no answer opens the circuit after one timeout: unsafe methods are
    refused, reads go on; the late connection is dropped (no reply can be taken for another batch's),
    and once Redis answers again a fresh connection records nonces and refuses their replays."""
    with PrivateRedis() as redis:
        guard = RedisGuard(redis.url, "replay:", timeout=0.3, retry_seconds=0.5)
        memory = ReplayMemory(guard, "timesheets", 60)
        try:
            assert await memory.first_use(new_nonce(), "POST") == "fresh"  # connected before the hang
            redis.pause()
            started = time.monotonic()
            verdicts = await asyncio.gather(*(memory.first_use(new_nonce(), m) for m in ("PUT", "GET")))
            assert verdicts == ["unavailable", "fresh"]
            assert 0.25 < time.monotonic() - started < 0.6
            assert memory._wire is not None
            assert memory._wire._writer is None
            redis.resume()
            await asyncio.sleep(0.6)
            nonce = new_nonce()
            assert await memory.first_use(nonce, "POST") == "fresh"
            memory._seen.clear()  # forget locally: the refusal must come from Redis
            assert await memory.first_use(nonce, "POST") == "replay"
        finally:
            redis.resume()
            memory.close()
            await guard.close()


def test_a_tls_url_keeps_redis_py() -> None:
    assert SetOnceWire.for_url("rediss://127.0.0.1:6380/0", timeout=1.0) is None
    assert SetOnceWire.for_url("unix:///tmp/redis.sock?db=2", timeout=1.0) is not None
    guard = RedisGuard("rediss://127.0.0.1:6380/0", "p:", timeout=1.0, retry_seconds=1.0)
    assert ReplayMemory(guard, "timesheets", 60)._wire is None


async def test_a_reply_that_came_while_the_loop_was_stalled_is_read_not_taken_for_a_timeout(
    redis_url: str,
) -> None:
    """Under heavy load the event loop may not run for longer than the timeout while Redis answers in
    time: the reply is then read (the batch's deadline gives the socket one more turn of the loop),
    not taken for Redis being away. Before, the deadline fired before the socket was read: the circuit
    opened and writes were refused with 503 ``replay_store_unavailable`` for ``retry_seconds``."""
    guard = RedisGuard(redis_url, f"test-stall-{uuid.uuid4().hex}:", timeout=0.2, retry_seconds=5.0)
    memory = ReplayMemory(guard, "timesheets", 60)
    try:
        assert await memory.first_use(new_nonce(), "POST") == "fresh"  # connected
        wire = memory._wire
        assert wire is not None
        verdict = asyncio.ensure_future(memory.first_use(new_nonce(), "POST"))
        while wire._reply is None:  # the batch is on its way
            await asyncio.sleep(0)
        time.sleep(0.5)  # the loop stalls past the deadline; Redis answers meanwhile
        assert await verdict == "fresh"
        assert guard.available
        assert wire.connected
        # and a store that really does not answer still fails after the timeout (and the grace turn)
        stalled = SetOnceWire(redis_url, timeout=0.2)
        await stalled.connect()
        reply = stalled.send(b"", 1)  # nothing asked: no reply will come
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await reply
        assert 0.15 < time.monotonic() - started < 0.5
        assert not stalled.connected
    finally:
        memory.close()
        await guard.close()
