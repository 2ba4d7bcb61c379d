"""Key handling against a live provider: rotation, outages, refetch storms, the Redis layer."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from prometheus_client import REGISTRY

from testkit.clock import FakeClock
from testkit.fixtures import TcpProxy

from .conftest import Provider


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def wait_for_keys(api: Any, gateway: str, provider: Provider) -> None:
    status, _, body = await api("GET", f"{gateway}/api/timesheets", provider.token())
    assert status == 200, body


async def test_rotation_new_kid_accepted_after_one_refetch(
    api: Any, start_gateway: Any, provider: Provider
) -> None:
    async with start_gateway() as gateway:
        await wait_for_keys(api, gateway, provider)
        kid = f"rotated-{uuid.uuid4().hex[:6]}"
        provider.add_key(kid, "RS256")
        before = provider.jwks_hits
        status, _, body = await api("GET", f"{gateway}/api/timesheets", provider.token(kid))
        assert status == 200, body
        assert provider.jwks_hits - before == 1
        for _ in range(5):
            assert (await api("GET", f"{gateway}/api/timesheets", provider.token(kid)))[0] == 200
        assert provider.jwks_hits - before == 1
        # the old key keeps working while it is still published
        assert (await api("GET", f"{gateway}/api/timesheets", provider.token("rsa-1")))[0] == 200


async def test_refetch_storm_makes_one_fetch(api: Any, start_gateway: Any, provider: Provider) -> None:
    async with start_gateway(jwks_refetch_cooldown_seconds=30) as gateway:
        await wait_for_keys(api, gateway, provider)
        provider.add_key("storm", "RS256", publish=False)
        before = provider.jwks_hits
        provider.delay = 0.3  # a slow provider: every request of the storm overlaps the one fetch
        try:
            tokens = [provider.token("storm", headers={"kid": f"made-up-{i}"}) for i in range(300)]
            results = await asyncio.gather(*(api("GET", f"{gateway}/api/timesheets", t) for t in tokens))
        finally:
            provider.delay = 0.0
        assert {status for status, _, _ in results} == {401}
        assert {body["reason"] for _, _, body in results} == {"unknown_kid"}
        assert provider.jwks_hits - before == 1
        # and within the cool-down, more made-up kids cost the provider nothing
        for i in range(20):
            token = provider.token("storm", headers={"kid": f"later-{i}"})
            assert (await api("GET", f"{gateway}/api/timesheets", token))[0] == 401
        assert provider.jwks_hits - before == 1


async def test_provider_outage_cached_keys_keep_working(
    api: Any, start_gateway: Any, provider: Provider
) -> None:
    provider.max_age = 1  # before the gateway starts: its warm-up fetch must see the short TTL
    clock = FakeClock(start=time.time())
    try:
        async with start_gateway(clock, jwks_min_ttl_seconds=1) as gateway:
            await wait_for_keys(api, gateway, provider)
            errors_before = sample("gateway_jwks_fetch_total", issuer=provider.issuer, outcome="error")
            provider.down = True
            clock.advance(1.3)  # keys are now stale: each request may trigger a background refresh
            # requests keep succeeding while the background refresh fails (poll: a loaded machine is slow)
            for _ in range(60):
                status, _, body = await api("GET", f"{gateway}/api/timesheets", provider.token())
                assert status == 200, body
                if (
                    sample("gateway_jwks_fetch_total", issuer=provider.issuer, outcome="error")
                    > errors_before
                ):
                    break
                await asyncio.sleep(0.05)
            assert sample("gateway_jwks_fetch_total", issuer=provider.issuer, outcome="error") > errors_before
            assert sample("gateway_jwks_key_age_seconds", issuer=provider.issuer) >= 1.0
    finally:
        provider.down = False
        provider.max_age = 600


async def test_staleness_is_bounded(api: Any, start_gateway: Any, provider: Provider) -> None:
    provider.max_age = 1
    clock = FakeClock(start=time.time())
    async with start_gateway(clock, jwks_min_ttl_seconds=1, jwks_max_stale_seconds=2) as gateway:
        try:
            await wait_for_keys(api, gateway, provider)
            provider.down = True
            clock.advance(2.3)
            status, headers, body = await api("GET", f"{gateway}/api/timesheets", provider.token())
            assert status == 503, body
            assert headers["Retry-After"]
            provider.down = False
            status, _, body = await api("GET", f"{gateway}/api/timesheets", provider.token())
            assert status == 200, body
        finally:
            provider.down = False
            provider.max_age = 600


async def test_new_replica_with_warm_redis_never_calls_provider(
    api: Any, start_gateway: Any, provider: Provider, redis_prefix: str
) -> None:
    prefix = f"{redis_prefix}replicas-{uuid.uuid4().hex[:6]}:"
    async with start_gateway(redis_key_prefix=prefix) as first:
        await wait_for_keys(api, first, provider)
    before_hits = provider.jwks_hits + provider.discovery_hits
    redis_hits = sample("gateway_jwks_cache_total", layer="redis", result="hit")
    async with start_gateway(redis_key_prefix=prefix) as second:
        for kid in ("rsa-1", "ec-1", "ed-1"):
            assert (await api("GET", f"{second}/api/timesheets", provider.token(kid)))[0] == 200
    assert provider.jwks_hits + provider.discovery_hits == before_hits
    assert sample("gateway_jwks_cache_total", layer="redis", result="hit") > redis_hits


async def test_redis_outage_gateway_carries_on(
    api: Any, start_gateway: Any, provider: Provider, redis_url: str
) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(redis_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    await proxy.start()
    async with start_gateway(redis_url=proxy.url_for(redis_url), rate_limit_sync_seconds=0.05) as gateway:
        await wait_for_keys(api, gateway, provider)
        await proxy.cut()
        failopen = sample("gateway_ratelimit_failopen_total")
        loop = asyncio.get_running_loop()
        started = loop.time()
        for _ in range(100):  # the limiter notices at its next sync (every 0.05 s here)
            status, _, body = await api("GET", f"{gateway}/api/timesheets", provider.token())
            assert status == 200, body
            if sample("gateway_ratelimit_failopen_total") > failopen:
                break
            await asyncio.sleep(0.02)
        assert sample("gateway_ratelimit_failopen_total") > failopen
        assert loop.time() - started < 1.5  # an outage is noticed at once, not after client retries
        # a rotation while Redis is down still works (memory + provider)
        kid = f"no-redis-{uuid.uuid4().hex[:6]}"
        provider.add_key(kid, "ES256")
        assert (await api("GET", f"{gateway}/api/timesheets", provider.token(kid)))[0] == 200


async def test_replica_starting_while_redis_is_down(api: Any, start_gateway: Any, provider: Provider) -> None:
    from testkit.fixtures import free_port

    async with start_gateway(redis_url=f"redis://127.0.0.1:{free_port()}/0") as gateway:
        status, _, body = await api("GET", f"{gateway}/api/timesheets", provider.token())
        assert status == 200, body


async def test_jwks_uri_override_skips_discovery(
    api: Any, start_gateway: Any, provider: Provider, tmp_path: Any
) -> None:
    issuers = tmp_path / "issuers.yaml"
    issuers.write_text(
        f'issuers:\n  "{provider.issuer}":\n    jwks_uri: "{provider.base}/jwks"\n'
        "    scope_claims: [permissions]\n"
    )
    before = provider.discovery_hits
    async with start_gateway(gateway_issuers_file=issuers) as gateway:
        token = provider.token(scope="read:timesheets", permissions=["read:timesheets", "read:audit"])
        status, _, body = await api("GET", f"{gateway}/api/audit/events", token)
        assert status == 200, body
        assert body["identity"]["scopes"] == ["read:audit", "read:timesheets"]
        only_scope = provider.token(scope="read:timesheets")
        assert (await api("GET", f"{gateway}/api/timesheets", only_scope))[0] == 403
    assert provider.discovery_hits == before


async def test_two_issuers_never_collide(api: Any, start_gateway: Any, provider: Provider) -> None:
    from testkit.fixtures import serve_app

    other = Provider()
    async with serve_app(other.app()) as url:
        other.base = url
        async with start_gateway(oidc_issuer=[provider.issuer, other.issuer]) as gateway:
            _, _, one = await api("GET", f"{gateway}/api/timesheets", provider.token(sub="alice"))
            _, _, two = await api("GET", f"{gateway}/api/timesheets", other.token(sub="alice"))
            assert one["identity"]["issuer"] == provider.issuer
            assert two["identity"]["issuer"] == other.issuer
            # a token claiming one issuer but signed with the other's key fails
            forged = other.token(iss=provider.issuer)
            assert (await api("GET", f"{gateway}/api/timesheets", forged))[0] == 401
