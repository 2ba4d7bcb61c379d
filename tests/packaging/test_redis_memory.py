"""The bundled Redis under memory pressure: it refuses writes (``noeviction``) below its memory limit
rather than evicting keys or being killed.

An evicting policy (``allkeys-lru``, what the chart ran) drops whatever keys it samples once full, and
anyone who can make keys (a throttle counter per user name tried, a rate-limit counter per address)
can fill it: a replay key evicted lets a signed request or a DPoP proof be replayed to another replica,
a throttle counter evicted resets the sign-in limit, the revocation stream evicted without its marker
hid revocations from a gateway starting later (measured on a private Redis: docs/runbook.md, "Redis
memory"). ``volatile-*`` policies spare only keys without a TTL (the stream, its marker, the audit
watermark) and still evict the replay keys and counters. Without ``maxmemory`` the policy is moot and
the container is killed at its memory limit, losing everything. With ``noeviction`` a full Redis
answers writes with ``OOM``, which the services take for Redis unavailable (svckit.redisguard): the
replay memories fall back to the database, the throttles to per-replica windows, the provider retries
its publications, and all of it ends when the TTLs free memory.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import redis
from redis.exceptions import OutOfMemoryError

from testkit.redisproc import PrivateRedis
from tests.packaging.support import SCENARIOS, Obj, component, render, rendered_scenario
from tests.packaging.test_policies import by_kind

SCENARIO = next(name for name, values in SCENARIOS.items() if values.get("redis", {}).get("enabled"))


def redis_args(objects: list[Obj]) -> list[str]:
    (deployment,) = [o for o in by_kind(objects, "Deployment") if component(o) == "redis"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args: list[str] = container["args"]
    return args


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_the_bundled_redis_refuses_writes_when_full_instead_of_evicting() -> None:
    args = redis_args(rendered_scenario(SCENARIO))
    assert option(args, "--maxmemory-policy") == "noeviction"
    assert option(args, "--maxmemory") == "192mb"  # below the 256Mi limit: fragmentation, buffers


def test_maxmemory_comes_from_the_values_and_the_schema_refuses_unlimited() -> None:
    values: dict[str, Any] = {**SCENARIOS[SCENARIO]}
    values["redis"] = {**values["redis"], "maxmemory": "900mb"}
    assert option(redis_args(render(values)), "--maxmemory") == "900mb"
    for wrong in ("0", "", "lots", "-1mb"):
        values["redis"] = {**values["redis"], "maxmemory": wrong}
        with pytest.raises(Exception, match="maxmemory"):
            render(values)


def test_a_redis_with_the_charts_arguments_refuses_writes_when_full_and_keeps_every_key() -> None:
    """The rendered memory options on a real server (the ACL file aside): filled past ``maxmemory``,
    writes fail with ``OOM`` and no key is evicted; once keys go, writes work again."""
    args = redis_args(rendered_scenario(SCENARIO))
    memory = ("--maxmemory-policy", option(args, "--maxmemory-policy"), "--maxmemory", "2mb")
    with PrivateRedis(args=memory) as server:
        client = redis.Redis.from_url(server.url, driver_info=None)
        client.xadd("tsp:revocations", {"jti": "a"})
        client.set("tsp:revocations:complete", "1")
        written = 0
        refused: OutOfMemoryError | None = None
        while refused is None and written < 100_000:
            try:
                client.set(f"tsp:gateway:rl:addr:{written}:1", b"x" * 1024, ex=60)
                written += 1
            except OutOfMemoryError as exc:
                refused = exc
        assert refused is not None, written
        assert written > 100, written
        assert client.info("stats")["evicted_keys"] == 0
        assert client.exists("tsp:revocations", "tsp:revocations:complete") == 2
        with pytest.raises(OutOfMemoryError):
            client.set("tsp:identity-replay:timesheets:n1", "1", nx=True, ex=60)
        for key in client.scan_iter(match="tsp:gateway:rl:*", count=1000):
            client.unlink(key)
        assert client.set("tsp:identity-replay:timesheets:n1", "1", nx=True, ex=60)
        with contextlib.suppress(redis.RedisError):
            client.close()
