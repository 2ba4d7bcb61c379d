"""Key handling against a live provider: rotation, outages, refetch storms, the Redis layer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from gateway.issuers import load_issuers
from gateway.jwks import JwksCache
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
            # the failed fetch put the issuer in back-off (JWKS_RETRY_MIN_SECONDS, jittered): requests
            # fail fast until it has passed, then the next one fetches
            status, _, body = await api("GET", f"{gateway}/api/timesheets", provider.token())
            assert status == 503, body
            clock.advance(1.0)
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


async def test_keys_of_a_discovery_document_naming_another_issuer_are_never_used(
    api: Any, start_gateway: Any, provider: Provider
) -> None:
    """OIDC Discovery §4.3, RFC 8414 §3.3, RFC 9700 §4.4: the document fetched from an issuer's URL
    must name that very issuer; one that names another (a copied or spoofed document) is not that
    issuer's, and its ``jwks_uri`` is not followed: its keys verify nothing."""
    from testkit.fixtures import serve_app

    impostor = Provider()
    async with serve_app(impostor.app()) as url:
        impostor.base = url
        impostor.discovery_issuer = provider.issuer
        async with start_gateway(oidc_issuer=[provider.issuer, impostor.issuer]) as gateway:
            status, _, body = await api("GET", f"{gateway}/api/timesheets", impostor.token())
            assert status == 503, body
            assert impostor.jwks_hits == 0
            # the same document naming its own issuer is used
            impostor.discovery_issuer = None
            for _ in range(100):  # the failed fetch put the issuer in back-off (jittered)
                status, _, body = await api("GET", f"{gateway}/api/timesheets", impostor.token())
                if status == 200:
                    break
                await asyncio.sleep(0.1)
            assert status == 200, body


def fresh_token(provider: Provider, clock: FakeClock) -> str:
    """A token valid on the gateway's (fake) clock, however far the test moved it."""
    now = int(clock.time())
    return provider.token(iat=now, exp=now + 600)


def provider_calls(provider: Provider) -> int:
    return provider.discovery_hits + provider.jwks_hits


async def test_a_failing_provider_is_asked_a_bounded_number_of_times(
    start_gateway: Any, provider: Provider, caplog: pytest.LogCaptureFixture
) -> None:
    """Stale keys, the provider failing, and ten simulated minutes of steady traffic (6,000 look-ups):
    every look-up is answered from the cached keys, while the provider is asked a bounded number of
    times (back-off doubling from 1 s to 60 s, jittered) and the failure is logged once, then at most
    once a minute (issue 11: 298 fetches and 298 warnings in 2.6 s)."""
    provider.max_age = 1
    clock = FakeClock(start=time.time())
    caplog.set_level(logging.INFO, logger="gateway.jwks")
    settings = start_gateway.settings(jwks_min_ttl_seconds=1)
    async with aiohttp.ClientSession() as session:
        cache = JwksCache(settings, load_issuers(settings), None, session, clock)
        try:
            await cache.warm()
            assert cache.ready() == [provider.issuer]
            provider.down = True
            before = provider_calls(provider)
            caplog.clear()
            per_minute = []
            for _ in range(10):
                start = provider_calls(provider)
                for _ in range(600):
                    clock.advance(0.1)
                    key = await cache.key_for(provider.issuer, "rsa-1", "RS256")
                    assert key.kid == "rsa-1"
                    await asyncio.sleep(0)
                    inflight = cache.state[provider.issuer].inflight
                    if inflight is not None:
                        await asyncio.shield(inflight)  # the fetch ends
                per_minute.append(provider_calls(provider) - start)
                cache.maintain()  # the gateway's 1 s task adds nothing beyond the back-off either
            fetches = provider_calls(provider) - before
            warnings = [r for r in caplog.records if "fetching signing keys failed" in r.getMessage()]
            print(f"issuer down, stale keys: {fetches} fetches in 10 min of traffic, per minute {per_minute}")
            # the back-off's own bound: delays jittered down to half their ceiling (0.5, 1, 2, … 30 s)
            # allow 6 fetches in the first 32 s, then one per 30 s at most: 26 in 600 s (the mean is
            # ~19, so the bound of 20 this once had failed now and then)
            assert fetches <= 6 + 600 // 30, per_minute
            assert max(per_minute[2:]) <= 2, per_minute  # capped at one per 30-60 s
            assert len(warnings) <= 11, len(warnings)  # the first, then at most one a minute
            assert cache.ready() == [provider.issuer]  # stale, but usable
            # the provider is back: within the longest back-off, the keys are fresh again
            provider.down = False
            for _ in range(700):
                clock.advance(0.1)
                cache.maintain()
                await asyncio.sleep(0)
                inflight = cache.state[provider.issuer].inflight
                if inflight is not None:
                    await asyncio.shield(inflight)
                keyset = cache.state[provider.issuer].keyset
                if keyset is not None and keyset.fresh(clock.time()):
                    break
            keyset = cache.state[provider.issuer].keyset
            assert keyset is not None
            assert keyset.fresh(clock.time())
            assert "signing keys fetched again" in caplog.text
        finally:
            provider.down = False
            provider.max_age = 600
            await cache.close()


async def readyz(api: Any, gateway: str) -> tuple[int, Any]:
    status, _, body = await api("GET", f"{gateway}/readyz")
    return status, body


async def test_readiness_tells_whether_any_trusted_issuer_has_usable_keys(
    api: Any, start_gateway: Any, provider: Provider
) -> None:
    clock = FakeClock(start=time.time())
    provider.down = True  # before the gateway starts: no keys anywhere (its Redis prefix is new)
    provider.max_age = 1
    try:
        async with start_gateway(clock, jwks_min_ttl_seconds=1) as gateway:
            for _ in range(20):
                await asyncio.sleep(0.05)
            status, body = await readyz(api, gateway)
            assert status == 503, body
            assert body["failed"] == ["signing_keys"]
            assert "usable signing keys" in body["checks"]["signing_keys"]
            status, _, body = await api("GET", f"{gateway}/api/timesheets", provider.token())
            assert status == 503, body  # cannot verify: fails fast, no fetch per request
            # the provider comes back: the gateway fetches by itself (no request needed), then is ready
            provider.down = False
            for _ in range(200):
                await clock.tick(0.5)
                await asyncio.sleep(0.01)
                status, body = await readyz(api, gateway)
                if status == 200:
                    break
            assert status == 200, body
            # the provider goes down again: cached keys still verify, so the gateway stays ready
            provider.down = True
            clock.advance(30)  # past the keys' max-age (1 s): stale, within JWKS_MAX_STALE_SECONDS
            status, body = await readyz(api, gateway)
            assert status == 200, body
            status, _, body = await api("GET", f"{gateway}/api/timesheets", fresh_token(provider, clock))
            assert status == 200, body
    finally:
        provider.down = False
        provider.max_age = 600


async def test_keys_planted_in_redis_are_not_trusted(
    api: Any, start_gateway: Any, provider: Provider, redis_url: str, redis_prefix: str
) -> None:
    """Every service and the provider can write to Redis (replay memory, revocations), so an attacker
    holding any of them could plant a key set of their own in the gateway's JWKS cache and sign tokens
    for anyone with any scope. A cached key set counts only with the gateway's own MAC over it
    (``GATEWAY_CACHE_KEY``): a planted one is ignored and the provider asked instead."""
    import json

    import jwt
    import redis.asyncio as aioredis
    from cryptography.hazmat.primitives.asymmetric import rsa

    prefix = f"{redis_prefix}planted-{uuid.uuid4().hex[:6]}:"
    evil = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(evil.public_key()))
    planted_jwks = {"keys": [{**jwk, "kid": "evil-1", "alg": "RS256", "use": "sig"}]}
    forged = jwt.encode(
        provider.claims(scope="read:timesheets approve:timesheets read:audit"),
        evil,
        algorithm="RS256",
        headers={"kid": "evil-1", "typ": "at+jwt"},
    )
    client = aioredis.from_url(redis_url)
    key = f"{prefix}gateway:jwks:{provider.issuer}"
    try:
        async with start_gateway(redis_key_prefix=prefix) as gateway:
            await wait_for_keys(api, gateway, provider)
            cached = await client.get(key)
            assert cached is not None, "the gateway cached no key set in Redis"
            stored = json.loads(cached)
            # the attacker rewrites the entry as it is stored, with the key set swapped
            if "payload" in stored:
                payload = json.loads(stored["payload"])
                payload["jwks"] = planted_jwks
                payload["fetched_at"] = time.time()
                stored["payload"] = json.dumps(payload)
            else:
                stored["jwks"], stored["fetched_at"] = planted_jwks, time.time()
            await client.set(key, json.dumps(stored))
            rejected = sample("gateway_jwks_cache_total", layer="redis", result="rejected")
            status, _, body = await api("GET", f"{gateway}/api/timesheets", forged)
            assert status == 401, f"a token signed with a planted key was accepted: {body}"
            assert body["reason"] == "unknown_kid"
            assert sample("gateway_jwks_cache_total", layer="redis", result="rejected") == rejected + 1
            # and the provider's own keys still work (the planted entry was replaced)
            assert (await api("GET", f"{gateway}/api/timesheets", provider.token()))[0] == 200
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "envelope", [{"payload": "\ud800", "mac": "0" * 64}, {"payload": "{}", "mac": "\ud800"}]
)
async def test_an_unencodable_entry_in_redis_is_ignored_like_any_copy_the_mac_refuses(
    api: Any, start_gateway: Any, provider: Provider, redis_url: str, redis_prefix: str, envelope: Any
) -> None:
    """The MAC is there because Redis is not trusted with keys, so whatever a writer puts in the
    cache entry must leave the gateway fetching from the provider. An envelope whose ``payload`` or
    ``mac`` holds a lone surrogate (``"\\ud800"``: valid JSON, not encodable as UTF-8) must be a copy
    the MAC refuses, not an exception in every load (a 500, and no key fetched from the provider for
    as long as the entry stays): a key the provider rotated in must still be fetched."""
    import json

    import redis.asyncio as aioredis

    prefix = f"{redis_prefix}surrogate-{uuid.uuid4().hex[:6]}:"
    client = aioredis.from_url(redis_url)
    key = f"{prefix}gateway:jwks:{provider.issuer}"
    try:
        async with start_gateway(redis_key_prefix=prefix) as gateway:
            await wait_for_keys(api, gateway, provider)
            await client.set(key, json.dumps(envelope))
            kid = f"rotated-{uuid.uuid4().hex[:6]}"
            provider.add_key(kid, "RS256")
            status, _, body = await api("GET", f"{gateway}/api/timesheets", provider.token(kid))
            assert status == 200, f"a key the provider published was not fetched: {status} {body}"
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def replicas(
    api: Any, start_gateway: Any, provider: Provider, clock: FakeClock, prefix: str, **options: Any
) -> AsyncIterator[list[str]]:
    """Three gateways sharing one Redis copy of the keys (a 10 s TTL), each holding them already."""
    provider.max_age = 10
    try:
        async with contextlib.AsyncExitStack() as stack:
            settings = {"redis_key_prefix": prefix, "jwks_min_ttl_seconds": 10, **options}
            gateways = [await stack.enter_async_context(start_gateway(clock, **settings)) for _ in range(3)]
            for gateway in gateways:
                await wait_for_keys(api, gateway, provider)
            yield gateways
    finally:
        provider.max_age = 600


async def everyone(api: Any, gateways: list[str], provider: Provider, each: int = 1) -> None:
    """``each`` requests to every gateway at once, all answered (stale keys serve meanwhile)."""
    calls = (api("GET", f"{g}/api/timesheets", provider.token()) for g in gateways for _ in range(each))
    assert {status for status, _, _ in await asyncio.gather(*calls)} == {200}


async def test_the_renewal_lease_outlasts_a_slow_provider(
    api: Any, start_gateway: Any, provider: Provider, redis_prefix: str
) -> None:
    """The lease holder's fetch is two requests (discovery, then the key set), each allowed the fetch
    timeout: a lease of one timeout ran out in the middle of a slow provider's answers, and another
    replica took it and asked the provider too."""
    prefix = f"{redis_prefix}slow-lease-{uuid.uuid4().hex[:6]}:"
    clock = FakeClock(start=time.time())
    async with replicas(
        api, start_gateway, provider, clock, prefix, jwks_fetch_timeout_seconds=0.5
    ) as gateways:
        clock.advance(11)  # stale everywhere at once
        before = provider.jwks_hits + provider.discovery_hits
        provider.delay = provider.discovery_delay = 0.4  # each within the timeout, both together not
        try:
            await everyone(api, gateways, provider)  # one replica takes the lease and asks
            await asyncio.sleep(0.6)  # past one timeout: the holder is still on its second request
            clock.advance(1)  # the others look again
            await everyone(api, gateways, provider)
            await asyncio.sleep(0.6)
        finally:
            provider.delay = provider.discovery_delay = 0.0
        assert provider.jwks_hits + provider.discovery_hits - before == 2  # one discovery, one JWKS


async def test_replicas_renewing_stale_keys_together_ask_the_provider_once(
    api: Any, start_gateway: Any, provider: Provider, redis_prefix: str
) -> None:
    """Every replica (and every worker of each) holds the same key set, loaded from one copy in Redis:
    it goes stale at the same instant everywhere, and under traffic each of them starts its background
    refresh within moments of the others. One of them asks the provider; the others take the copy it
    leaves in Redis, instead of N replicas x W workers calls (twice that with discovery) every TTL."""
    prefix = f"{redis_prefix}stampede-{uuid.uuid4().hex[:6]}:"
    clock = FakeClock(start=time.time())
    async with replicas(api, start_gateway, provider, clock, prefix) as gateways:
        for _round in range(2):
            clock.advance(11)  # stale everywhere at once
            before = provider.jwks_hits + provider.discovery_hits
            taken = sample("gateway_jwks_cache_total", layer="redis", result="hit")
            provider.delay = 0.3  # a provider across the internet: the refreshes overlap
            try:
                await everyone(api, gateways, provider, each=3)
                await asyncio.sleep(0.6)  # the one fetch is done, its copy is in Redis
            finally:
                provider.delay = 0.0
            clock.advance(1)  # the others look at Redis again
            await everyone(api, gateways, provider, each=3)
            await asyncio.sleep(0.2)
            assert provider.jwks_hits + provider.discovery_hits - before == 2  # discovery + JWKS
            assert sample("gateway_jwks_cache_total", layer="redis", result="hit") - taken == 2


LEASE_OUTCOMES = ("taken", "held", "handed_off", "lapsed")


def lease_counts() -> dict[str, float]:
    return {outcome: sample("gateway_jwks_lease_total", outcome=outcome) for outcome in LEASE_OUTCOMES}


def since(before: dict[str, float]) -> dict[str, float]:
    return {outcome: value - before[outcome] for outcome, value in lease_counts().items()}


async def test_the_renewal_lease_is_counted_taken_held_and_handed_off(
    api: Any, start_gateway: Any, provider: Provider, redis_prefix: str
) -> None:
    """Replicas that find the lease held keep serving the stale keys and read the holder's copy later:
    that hand-off is invisible in the fetch and cache counters (a Redis hit looks like any other). One
    counter says it: the holder's lease ``taken``, each waiter ``held`` and then ``handed_off``."""
    prefix = f"{redis_prefix}lease-count-{uuid.uuid4().hex[:6]}:"
    clock = FakeClock(start=time.time())
    async with replicas(api, start_gateway, provider, clock, prefix) as gateways:
        before = lease_counts()
        clock.advance(11)  # stale everywhere at once
        provider.delay = 0.3  # the holder's fetch is still running when the others ask for the lease
        try:
            await everyone(api, gateways, provider)
            await asyncio.sleep(0.6)  # the holder's copy is in Redis
        finally:
            provider.delay = 0.0
        clock.advance(1)  # the others look at Redis again
        await everyone(api, gateways, provider)
        await asyncio.sleep(0.2)
        assert since(before) == {"taken": 1, "held": 2, "handed_off": 2, "lapsed": 0}


async def test_a_lease_that_ended_without_a_copy_is_counted_lapsed(
    api: Any, start_gateway: Any, provider: Provider, redis_prefix: str, redis_url: str
) -> None:
    """The replica holding the lease died in the middle of its fetch (or its fetch failed): the lease
    runs out and no copy was written. The replicas waiting for it go on serving the stale keys until
    one of them finds the lease free and renews the keys itself — ``lapsed``, what an SRE looks for
    when the keys of every replica grow old together."""
    import redis.asyncio as aioredis

    prefix = f"{redis_prefix}lease-lapse-{uuid.uuid4().hex[:6]}:"
    clock = FakeClock(start=time.time())
    client = aioredis.from_url(redis_url)
    try:
        async with replicas(api, start_gateway, provider, clock, prefix) as gateways:
            before = lease_counts()
            # a replica took the lease and was killed before it wrote a copy
            assert await client.set(f"{prefix}gateway:jwks-refresh:{provider.issuer}", "1", nx=True, px=300)
            clock.advance(11)
            await everyone(api, gateways, provider)  # all three find it held
            await asyncio.sleep(0.1)  # their background renewals have looked
            assert since(before) == {"taken": 0, "held": 3, "handed_off": 0, "lapsed": 0}
            await asyncio.sleep(0.5)  # the dead holder's lease runs out
            fetched = provider.jwks_hits
            clock.advance(1)
            await everyone(api, gateways, provider)
            await asyncio.sleep(0.3)
            assert provider.jwks_hits - fetched == 1  # one of them renewed the keys for all
            counted = since(before)
            assert (counted["lapsed"], counted["taken"]) == (1, 0), counted
    finally:
        await client.aclose()
