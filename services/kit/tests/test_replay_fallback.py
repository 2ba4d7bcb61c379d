"""The replay memory's Postgres fallback (svckit.replayfallback) with a real Redis stopped and a real
Postgres: an unsafe nonce is accepted once across replicas while Redis is away, refused when the
database is away too, remembered across Redis coming back, and purged once expired. The memories
write as a runtime role holding only what ``svckit/schema/replay/privileges.txt`` grants."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest
import svckit.app
from prometheus_client import REGISTRY
from svckit import replayfallback
from svckit.app import create_service_app
from svckit.db import Database
from svckit.identity import new_nonce
from svckit.migrations import migrate
from svckit.redisguard import RedisGuard
from svckit.replay import ReplayMemory
from svckit.replayfallback import FallbackMemory
from svckit.settings import RedisSettings, load_settings

from testkit.fixtures import free_port, receiver_env, replica_pools, runtime_role, runtime_url, serve_app
from testkit.redisproc import PrivateRedis

SKEW = 60


@pytest.fixture
async def schema(database_url: str) -> str:
    name = f"replay_{secrets.token_hex(4)}"
    await migrate(database_url, name, None, kit=["replay"], role=runtime_role(name))
    return name


@pytest.fixture
async def databases(database_url: str, schema: str) -> AsyncIterator[list[Database]]:
    """Two replicas' pools on the same schema, as its runtime role."""
    async with replica_pools(database_url, schema) as pools:
        yield pools


@asynccontextmanager
async def two_replicas(
    databases: list[Database], retry_seconds: float
) -> AsyncIterator[tuple[PrivateRedis, ReplayMemory, ReplayMemory]]:
    """A Redis of their own (for the test to stop) and two replicas' replay memories on it, each with
    its own guard (circuit) and its own pool on the fallback's schema."""
    redis = PrivateRedis().start()
    guards = [RedisGuard(redis.url, "replay:", timeout=0.5, retry_seconds=retry_seconds) for _ in range(2)]
    try:
        first, second = (
            ReplayMemory(guard, "timesheets", SKEW, database=db)
            for guard, db in zip(guards, databases, strict=True)
        )
        yield redis, first, second
    finally:
        for guard in guards:
            await guard.close()
        redis.stop()


async def stored_nonces(database_url: str, schema: str) -> list[str]:
    """The nonces in the fallback's table, read as its owner."""
    owner = await asyncpg.connect(database_url)
    try:
        rows = await owner.fetch(f'SELECT nonce FROM "{schema}".identity_replay')
    finally:
        await owner.close()
    return [row["nonce"] for row in rows]


def fallback_count(outcome: str) -> float:
    value = REGISTRY.get_sample_value("identity_replay_fallback_total", {"outcome": outcome})
    return value or 0.0


async def test_with_redis_stopped_an_unsafe_request_is_accepted_once_by_any_replica(
    databases: list[Database],
) -> None:
    async with two_replicas(databases, retry_seconds=30.0) as (redis, first, second):
        redis.stop()
        before = {outcome: fallback_count(outcome) for outcome in ("accepted", "replay")}
        nonce = new_nonce()
        assert await first.first_use(nonce, "POST") == "fresh"
        assert await second.first_use(nonce, "POST") == "replay"  # the other replica: the database
        assert await second.first_use(nonce, "DELETE") == "replay"  # now its own memory first
        assert await first.first_use(nonce, "POST") == "replay"  # the same one: its own memory first
        assert await second.first_use(new_nonce(), "PATCH") == "fresh"
        assert fallback_count("accepted") == before["accepted"] + 2
        assert fallback_count("replay") == before["replay"] + 1
        # reads do not go to the database: each replica's own memory, as before
        read = new_nonce()
        assert await first.first_use(read, "GET") == "fresh"
        assert await second.first_use(read, "GET") == "fresh"
        assert fallback_count("accepted") == before["accepted"] + 2


async def test_with_postgres_unavailable_too_unsafe_requests_are_refused(schema: str) -> None:
    redis = PrivateRedis().start()
    guard = RedisGuard(redis.url, "replay:", timeout=0.5, retry_seconds=30.0)
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/none"  # nobody listens there
    nowhere = Database(dead, schema=schema, connect_timeout=0.5)
    nowhere.start()
    try:
        memory = ReplayMemory(guard, "timesheets", SKEW, database=nowhere)
        redis.stop()
        before = fallback_count("unavailable")
        verdicts = await asyncio.gather(
            *(memory.first_use(new_nonce(), method) for method in ("POST", "GET", "PUT", "HEAD"))
        )
        assert verdicts == ["unavailable", "fresh", "unavailable", "fresh"]
        assert fallback_count("unavailable") == before + 2
    finally:
        await guard.close()
        await nowhere.close()
        redis.stop()


async def test_a_nonce_accepted_during_the_outage_is_refused_after_redis_is_back(
    databases: list[Database],
) -> None:
    """For one window after a replica last found Redis unavailable it records unsafe nonces in the
    fallback as well: what another replica accepted there during the outage is not in Redis."""
    async with two_replicas(databases, retry_seconds=0.2) as (redis, first, second):
        redis.stop()
        during = new_nonce()
        assert await first.first_use(during, "POST") == "fresh"  # through the database
        assert await second.first_use(new_nonce(), "GET") == "fresh"  # the second sees the outage too
        redis.start()
        await asyncio.sleep(0.3)  # both circuits closed again
        assert await second.first_use(during, "POST") == "replay"  # Redis never saw it; the table did
        after = new_nonce()
        assert await second.first_use(after, "POST") == "fresh"  # recorded in Redis and in the table
        assert await first.first_use(after, "PUT") == "replay"
        assert second.redis is not None
        assert second.redis.available


async def test_while_redis_is_up_nothing_goes_to_the_database(
    databases: list[Database], redis_url: str, redis_prefix: str, database_url: str, schema: str
) -> None:
    guard = RedisGuard(redis_url, redis_prefix + "fallback:", timeout=1.0, retry_seconds=1.0)
    try:
        memory = ReplayMemory(guard, "timesheets", SKEW, database=databases[0])
        assert await memory.first_use(new_nonce(), "POST") == "fresh"
        assert await stored_nonces(database_url, schema) == []
    finally:
        memory.close()
        await guard.close()


async def test_expired_nonces_are_purged_a_bounded_batch_at_a_time(
    databases: list[Database], database_url: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    expired = FallbackMemory(databases[0], 0)  # expires the moment it is recorded
    kept = FallbackMemory(databases[1], 122)
    for _ in range(5):
        assert await expired.record(new_nonce()) == "fresh"
    live = new_nonce()
    assert await kept.record(live) == "fresh"
    monkeypatch.setattr(replayfallback, "PURGE_BATCH", 3)
    assert await kept.purge() is True  # three deleted: there may be more
    assert await kept.purge() is False  # the last two
    assert await stored_nonces(database_url, schema) == [live]
    assert await kept.record(live) == "replay"


async def test_a_service_app_purges_the_expired_nonces_itself(
    identity_keys: dict[str, str],
    databases: list[Database],
    database_url: str,
    schema: str,
    redis_url: str,
    redis_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``create_service_app(replay_fallback=True)`` runs the purge as a task of its own (every minute;
    here every tenth of a second)."""
    monkeypatch.setattr(svckit.app, "PURGE_INTERVAL", 0.1)
    expired = FallbackMemory(databases[0], 0)
    for _ in range(3):
        assert await expired.record(new_nonce()) == "fresh"
    env = {**receiver_env(identity_keys), "REDIS_URL": redis_url, "REDIS_KEY_PREFIX": redis_prefix}
    settings = load_settings(RedisSettings, env=env)
    database = Database(runtime_url(database_url, schema), schema=schema, max_size=2)
    app = create_service_app(settings, [], database=database, replay_fallback=True)
    async with serve_app(app):
        for _ in range(100):
            if not await stored_nonces(database_url, schema):
                break
            await asyncio.sleep(0.05)
        assert await stored_nonces(database_url, schema) == []
