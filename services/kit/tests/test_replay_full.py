"""A full Redis (``noeviction`` under ``maxmemory``: writes refused with ``OOM``, reads served) must
not let a signed request or a DPoP proof recorded in Redis before it filled up be accepted again by
another replica. Before, ``OOM`` was taken for Redis unavailable: the other replica went to the
Postgres fallback (signed writes) or its own memory (reads, DPoP proofs), neither of which knew the
key that was still in Redis, and accepted the replay once (svckit.replayfallback's residual 1, there
for an outage, where nothing can be read; with a full Redis the key can). Now the replicas look the
key up (``EXISTS``; the DPoP memories ``GET``) when the ``SET NX`` is refused that way.

On a private Redis of the test's own, as the components' Redis users (svckit.redisacl): the lookups
must be what the ACL grants, and nothing more."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError
from svckit.db import Database
from svckit.dpop import Proof, ReplayGuard
from svckit.identity import new_nonce
from svckit.migrations import migrate
from svckit.redisguard import RedisGuard, refuses_writes_only
from svckit.replay import ReplayMemory

from testkit.fixtures import replica_pools, runtime_role
from testkit.redisproc import PrivateRedis, component_users

SKEW = 60
PREFIX = "full:"
PASSWORDS = {c: secrets.token_hex(8) for c in ("gateway", "identity", "timesheets", "audit")}


@pytest.fixture
async def databases(database_url: str) -> AsyncIterator[list[Database]]:
    """Two replicas' pools on one schema with the kit set ``replay``, as its runtime role."""
    schema = f"replay_{secrets.token_hex(4)}"
    await migrate(database_url, schema, None, kit=["replay"], role=runtime_role(schema))
    async with replica_pools(database_url, schema) as pools:
        yield pools


@pytest.fixture
def server() -> Iterator[PrivateRedis]:
    with PrivateRedis(
        acl=component_users(PREFIX, PASSWORDS), args=("--maxmemory-policy", "noeviction")
    ) as private:
        yield private


def fill(server: PrivateRedis) -> None:
    """Write as the test's own user until Redis refuses with ``OOM``, then keep it full (a limit below
    what it holds: keys expiring meanwhile free nothing that a write could take)."""
    admin = redis.Redis.from_url(server.url)
    used = int(admin.info("memory")["used_memory"])
    admin.config_set("maxmemory", str(used + 1024 * 1024))
    for n in range(100_000):
        try:
            admin.set(f"filler:{n}", b"x" * 1024)
        except OutOfMemoryError:
            break
    else:
        raise AssertionError("Redis never refused a write")
    admin.config_set("maxmemory", str(int(admin.info("memory")["used_memory"]) - 256 * 1024))
    with pytest.raises(OutOfMemoryError):
        admin.set("one-more", b"x")
    admin.close()


def guard(server: PrivateRedis, component: str, retry_seconds: float = 30.0) -> RedisGuard:
    url = server.url_for(component, PASSWORDS[component])
    return RedisGuard(url, PREFIX, timeout=1.0, retry_seconds=retry_seconds)


@pytest.mark.parametrize("wire", [True, False], ids=["wire", "redis-py"])
async def test_a_signed_request_recorded_before_redis_filled_up_is_not_accepted_again(
    server: PrivateRedis, databases: list[Database], wire: bool
) -> None:
    guards = [guard(server, "timesheets") for _ in range(3)]
    first, second, third = (
        ReplayMemory(g, "timesheets", SKEW, database=db)
        for g, db in zip(guards, [*databases, databases[0]], strict=True)
    )
    if not wire:  # a URL the wire does not speak (rediss://): redis-py's pipeline, the same answers
        for memory in (first, second, third):
            memory._wire = None
    try:
        write, read = new_nonce(), new_nonce()
        assert await first.first_use(write, "POST") == "fresh"
        assert await first.first_use(read, "GET") == "fresh"
        assert await third.first_use(new_nonce(), "GET") == "fresh"  # connected before: the wire's callbacks
        fill(server)
        assert await third.first_use(write, "PATCH") == "replay"
        # the first request while full finds out (OOM), those after it find the circuit open: both
        assert await second.first_use(write, "POST") == "replay"
        assert await second.first_use(read, "GET") == "replay"
        assert not guards[1].available
        assert guards[1].readable
        # what is not in Redis is accepted once, as in an outage: through the database fallback
        during = new_nonce()
        assert await second.first_use(during, "PUT") == "fresh"
        assert await first.first_use(during, "PUT") == "replay"
        assert await first.first_use(new_nonce(), "GET") == "fresh"  # reads: this replica's memory
        # many at once: one batch, one lookup for the lot
        batch = [new_nonce() for _ in range(5)]
        assert await asyncio.gather(*(first.first_use(n, "DELETE") for n in [write, *batch])) == [
            "replay",
            *["fresh"] * 5,
        ]
        assert not guards[0].available
    finally:
        for memory in (first, second, third):
            memory.close()
        for g in guards:
            await g.close()


async def test_a_dpop_proof_recorded_before_redis_filled_up_is_not_accepted_again(
    server: PrivateRedis,
) -> None:
    """The gateway's and the provider's DPoP memories (the same class, their own users and keys).
    Also when the circuit was opened by another write of the process (a rate-limit counter): the
    proof is then looked up without trying its own write."""
    memories = {"gateway": "dpop-jti", "identity": "identity-dpop-jti"}
    guards = {component: [guard(server, component) for _ in range(3)] for component in memories}
    replicas = {c: [ReplayGuard(g, memories[c], 65) for g in guards[c]] for c in memories}
    try:
        proofs = {c: Proof("jkt", f"jti-{c}", time.time()) for c in memories}
        for component in memories:
            assert await replicas[component][0].first_use(proofs[component])
        fill(server)
        for component, other in (("gateway", "gateway:rl:x"), ("identity", "identity:login:x")):
            proof, (_, second, third) = proofs[component], replicas[component]
            assert not await second.first_use(proof)  # its own write refused: OOM
            counter = f"{PREFIX}{other}"

            async def count(client: Any, key: str = counter) -> int:
                return int(await client.incrby(key, 1))

            assert await guards[component][2].call(count) is None
            assert not guards[component][2].available  # OOM, from the counter
            assert not await third.first_use(proof)
            fresh = Proof("jkt", f"new-{component}", time.time())
            assert await third.first_use(fresh)  # not in Redis: accepted, in process
            assert not await third.first_use(fresh)
    finally:
        for component in memories:
            for replica in replicas[component]:
                await replica.close()
            for g in guards[component]:
                await g.close()


async def test_redis_down_is_not_taken_for_a_full_redis(databases: list[Database]) -> None:
    """A stopped Redis serves no reads: nothing is looked up, the circuit stays shut for everything
    (the fallback decides, as before)."""
    with PrivateRedis() as private:
        g = RedisGuard(private.url, PREFIX, timeout=0.5, retry_seconds=30.0)
        memory = ReplayMemory(g, "timesheets", SKEW, database=databases[0])
        try:
            nonce = new_nonce()
            private.stop()
            assert await memory.first_use(nonce, "POST") == "fresh"
            assert not g.available
            assert not g.readable
            assert await g.read(lambda client: client.exists("x")) is None
        finally:
            memory.close()
            await g.close()


def test_which_refusals_leave_reads_served() -> None:
    """On real servers: full (OOM), a replica (READONLY) and too few replicas (NOREPLICAS) refuse a
    write and answer the read; the classes redis-py raises for them are the guard's write refusals."""
    with (
        PrivateRedis(args=("--min-replicas-to-write", "1")) as primary,
        PrivateRedis(args=("--replicaof", "127.0.0.1", str(primary.port))) as replica,
    ):
        errors: list[BaseException] = []
        for private in (primary, replica):
            client = redis.Redis.from_url(private.url)
            with pytest.raises(ResponseError) as refused:
                client.set("k", "1", nx=True, ex=5)
            errors.append(refused.value)
            assert client.exists("k") == 0  # the read is answered
            client.close()
        assert str(errors[0]).startswith("NOREPLICAS")
        assert isinstance(errors[1], ReadOnlyError)
        assert all(refuses_writes_only(error) for error in errors)
    assert refuses_writes_only(OutOfMemoryError("command not allowed"))
    for other in (ResponseError("LOADING x"), ResponseError("BUSY x"), ConnectionError(), TimeoutError()):
        assert not refuses_writes_only(other)
