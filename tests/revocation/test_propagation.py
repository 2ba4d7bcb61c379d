"""Revocation end to end (issue 14): the bundled provider revokes, two gateway processes refuse.

Real processes on loopback: the identity service, two gateways (one worker each, as two replicas) and
a private Redis (``testkit.redisproc``) that a test may restart empty; the gateways forward to an echo
upstream. Every scenario calls both gateways with the token first, so that each holds it in its
verified-token cache, then revokes it at the provider and measures how long until both answer 401.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis
from redis.exceptions import NoPermissionError, OutOfMemoryError

from testkit.fixtures import IsolatedEnv, ServiceProcess
from testkit.oidc import (
    SPA,
    Browser,
    code_request,
    exchange_code,
    hidden_field,
    params_of,
    pkce_pair,
    sign_in_tokens,
)
from testkit.providerstack import ComponentRedis, component_redis, echo_upstream, provider_and_gateways
from testkit.redisproc import PrivateRedis

REPO = Path(__file__).resolve().parents[2]
PROPAGATION_BOUND_SECONDS = 2.0
SCOPE = "openid offline_access read:timesheets"


@dataclass
class Stack:
    identity: ServiceProcess
    issuer: str
    gateways: list[ServiceProcess]
    gateway_env: dict[str, str]
    redis: PrivateRedis
    redis_urls: dict[str, str]  # each component's own Redis user (svckit.redisacl)

    @property
    def base(self) -> str:
        return self.issuer.rstrip("/")


@pytest.fixture(scope="module")
def revocation_env(isolated_env: IsolatedEnv) -> dict[str, str]:
    return isolated_env("revocation")


@pytest.fixture(scope="module")
def redis_users(revocation_env: dict[str, str]) -> Iterator[ComponentRedis]:
    with component_redis(revocation_env["REDIS_KEY_PREFIX"]) as users:
        yield users


@pytest.fixture(scope="module")
async def upstream() -> AsyncIterator[str]:
    async with echo_upstream() as url:
        yield url


@pytest.fixture(scope="module")
async def stack(
    revocation_env: dict[str, str],
    redis_users: ComponentRedis,
    upstream: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Stack]:
    logs = tmp_path_factory.mktemp("revocation-logs")
    async with provider_and_gateways(
        revocation_env, redis_users.urls, upstream, logs, gateways=2
    ) as provider:
        yield Stack(
            provider.identity,
            provider.issuer,
            provider.gateways,
            provider.gateway_env,
            redis_users.server,
            redis_users.urls,
        )


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


async def call(http: aiohttp.ClientSession, gateway: ServiceProcess, token: str) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    async with http.get(gateway.url + "/api/timesheets", headers=headers) as response:
        return response.status


async def all_accept(http: aiohttp.ClientSession, gateways: list[ServiceProcess], token: str) -> None:
    """Each gateway verifies the token and keeps it in its verified-token cache."""
    for gateway in gateways:
        for _ in range(2):  # the second call is a cache hit
            assert await call(http, gateway, token) == 200


async def seconds_until_refused(
    http: aiohttp.ClientSession, gateways: list[ServiceProcess], token: str, since: float, limit: float = 10.0
) -> list[float]:
    """For each gateway, seconds from ``since`` until it answered 401 (polled every 20 ms)."""

    async def watch(gateway: ServiceProcess) -> float:
        while time.monotonic() - since < limit:
            if await call(http, gateway, token) == 401:
                return time.monotonic() - since
            await asyncio.sleep(0.02)
        raise AssertionError(f"{gateway.url} still accepts the revoked token after {limit}s")

    return list(await asyncio.gather(*(watch(g) for g in gateways)))


async def revoke(http: aiohttp.ClientSession, stack: Stack, token: str, **hint: str) -> float:
    """The SPA revokes ``token`` at the provider (200: revoked in its database); when it asked."""
    asked = time.monotonic()
    form = {"client_id": "timesheets-spa", "token": token, **hint}
    async with http.post(stack.base + "/oauth/revoke", data=form) as response:
        assert response.status == 200
    return asked


async def signed_in(
    stack: Stack, http: aiohttp.ClientSession, **params: str
) -> tuple[Browser, dict[str, Any]]:
    browser = Browser(stack.base, http)
    tokens = await sign_in_tokens(browser, http, stack.base, "alice", scope=SCOPE, **params)
    return browser, tokens


async def test_revoked_access_token_is_refused_by_both_gateways_within_2s(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    _, tokens = await signed_in(stack, http)
    await all_accept(http, stack.gateways, tokens["access_token"])
    started = await revoke(http, stack, tokens["access_token"], token_type_hint="access_token")
    delays = await seconds_until_refused(http, stack.gateways, tokens["access_token"], started)
    print("revocation to 401 on both gateways (s):", [round(d, 3) for d in delays])
    assert max(delays) < PROPAGATION_BOUND_SECONDS, delays
    async with http.get(
        stack.gateways[0].url + "/api/timesheets",
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
    ) as response:
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


async def test_revoking_a_refresh_token_refuses_its_access_tokens(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    _, tokens = await signed_in(stack, http)
    form = {
        "grant_type": "refresh_token",
        "client_id": "timesheets-spa",
        "refresh_token": tokens["refresh_token"],
    }
    async with http.post(stack.base + "/oauth/token", data=form) as response:
        assert response.status == 200
        rotated = await response.json()
    for token in (tokens["access_token"], rotated["access_token"]):
        await all_accept(http, stack.gateways, token)
    started = await revoke(http, stack, rotated["refresh_token"])
    for token in (tokens["access_token"], rotated["access_token"]):
        delays = await seconds_until_refused(http, stack.gateways, token, started)
        assert max(delays) < PROPAGATION_BOUND_SECONDS, delays


async def test_signing_out_refuses_the_sessions_tokens(stack: Stack, http: aiohttp.ClientSession) -> None:
    browser, tokens = await signed_in(stack, http)
    await all_accept(http, stack.gateways, tokens["access_token"])
    started = time.monotonic()
    response = await browser.get(f"/v2/logout?client_id=timesheets-spa&returnTo={SPA}/")
    assert response.status == 302
    delays = await seconds_until_refused(http, stack.gateways, tokens["access_token"], started)
    assert max(delays) < PROPAGATION_BOUND_SECONDS, delays
    form = {
        "grant_type": "refresh_token",
        "client_id": "timesheets-spa",
        "refresh_token": tokens["refresh_token"],
    }
    async with http.post(stack.base + "/oauth/token", data=form) as refreshed:
        assert refreshed.status == 400


async def test_a_replayed_code_revokes_access_and_refresh(stack: Stack, http: aiohttp.ClientSession) -> None:
    browser = Browser(stack.base, http)
    verifier, challenge = pkce_pair()
    request = code_request(challenge, scope=SCOPE)
    response = await browser.sign_in_and_authorize("alice", **request)
    code = params_of(response.headers["Location"])["code"]
    status, tokens = await exchange_code(http, stack.base, code, verifier)
    assert status == 200
    await all_accept(http, stack.gateways, tokens["access_token"])
    started = time.monotonic()
    status, error = await exchange_code(http, stack.base, code, verifier)  # the replay
    assert (status, error["error"]) == (400, "invalid_grant")
    delays = await seconds_until_refused(http, stack.gateways, tokens["access_token"], started)
    assert max(delays) < PROPAGATION_BOUND_SECONDS, delays
    form = {
        "grant_type": "refresh_token",
        "client_id": "timesheets-spa",
        "refresh_token": tokens["refresh_token"],
    }
    async with http.post(stack.base + "/oauth/token", data=form) as refreshed:
        assert refreshed.status == 400
        assert (await refreshed.json())["error"] == "invalid_grant"


async def test_withdrawn_consent_refuses_the_apps_tokens_and_refreshes(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    browser = Browser(stack.base, http)
    verifier, challenge = pkce_pair()
    request = code_request(
        challenge, client_id="partner-spa", redirect_uri=f"{SPA}/partner/callback", scope=SCOPE
    )
    consent = await browser.sign_in_and_authorize("alice", **request)
    assert consent.status == 200
    assert "consent" in browser.last_html.lower()
    answer = {
        "csrf_token": hidden_field(browser.last_html, "csrf_token"),
        "request": hidden_field(browser.last_html, "request"),
        "decision": "allow",
    }
    response = await browser.post("/authorize/decision", answer)
    code = params_of(response.headers["Location"])["code"]
    status, tokens = await exchange_code(
        http, stack.base, code, verifier, client_id="partner-spa", redirect_uri=f"{SPA}/partner/callback"
    )
    assert status == 200
    await all_accept(http, stack.gateways, tokens["access_token"])
    refresh = {
        "grant_type": "refresh_token",
        "client_id": "partner-spa",
        "refresh_token": tokens["refresh_token"],
    }
    async with http.post(stack.base + "/oauth/token", data=refresh) as refreshed:
        assert refreshed.status == 200
        tokens = await refreshed.json()
    await all_accept(http, stack.gateways, tokens["access_token"])
    page = await browser.get("/account/consents")
    assert page.status == 200
    started = time.monotonic()
    withdrawn = await browser.post(
        "/account/consents/revoke",
        {"csrf_token": hidden_field(browser.last_html, "csrf_token"), "client_id": "partner-spa"},
    )
    assert withdrawn.status == 303
    delays = await seconds_until_refused(http, stack.gateways, tokens["access_token"], started)
    assert max(delays) < PROPAGATION_BOUND_SECONDS, delays
    refresh["refresh_token"] = tokens["refresh_token"]
    async with http.post(stack.base + "/oauth/token", data=refresh) as refreshed:
        assert refreshed.status == 400
        assert (await refreshed.json())["error"] == "invalid_grant"


async def test_revocations_survive_redis_losing_everything(stack: Stack, http: aiohttp.ClientSession) -> None:
    """Redis restarts empty while a revocation is made: the provider re-publishes from its database,
    the running gateways reconnect and catch up, and a gateway started afterwards knows it too."""
    _, before = await signed_in(stack, http)
    _, during = await signed_in(stack, http)
    for token in (before["access_token"], during["access_token"]):
        await all_accept(http, stack.gateways, token)
    await revoke(http, stack, before["access_token"])
    await seconds_until_refused(http, stack.gateways, before["access_token"], time.monotonic())

    stack.redis.stop()  # Redis gone: the next revocation cannot be published now
    await revoke(http, stack, during["access_token"])
    for gateway in stack.gateways:  # the gateways keep what they had
        assert await call(http, gateway, before["access_token"]) == 401
    stack.redis.start()  # back, empty
    restarted = time.monotonic()
    delays = await seconds_until_refused(http, stack.gateways, during["access_token"], restarted)
    print("Redis back empty to 401 on both gateways (s):", [round(d, 3) for d in delays])
    assert max(delays) < 5.0, delays  # reconnect back-off + the provider's 0.5 s check

    late = ServiceProcess("gateway", stack.gateway_env).start(wait_path="/readyz")
    try:
        for token in (before["access_token"], during["access_token"]):
            await seconds_until_refused(http, [late], token, time.monotonic(), limit=5.0)
        _, fresh = await signed_in(stack, http)
        assert await call(http, late, fresh["access_token"]) == 200
    finally:
        late.stop()


async def test_a_redis_writer_cannot_silence_revocations(stack: Stack, http: aiohttp.ClientSession) -> None:
    """One planted stream entry with the last possible id would silence the fan-out: the provider's
    ``XADD *`` fails from then on ("exhausted the last possible ID") and every gateway's ``XREAD``
    waits after that id forever, so a token revoked afterwards would keep passing at every gateway
    until it expires. Deleting the stream while its ``revocations:complete`` marker stays would lose
    every revocation until the gateways reconnect. Every component connects as its own Redis user
    (svckit.redisacl): a compromised timesheets, approvals or audit pod may only record its own
    replay nonces, and a gateway may only read the stream; each attempt is refused (NOPERM), and a
    revocation made afterwards still reaches both gateways within the bound."""
    _, tokens = await signed_in(stack, http)
    await all_accept(http, stack.gateways, tokens["access_token"])
    prefix = stack.gateway_env["REDIS_KEY_PREFIX"]
    stream = f"{prefix}revocations"
    last_id = f"{2**64 - 1}-{2**64 - 1}"
    planted = {"iss": stack.issuer, "jti": "planted", "exp": "0", "reason": "revoked"}
    for component in ("timesheets", "approvals", "audit", "gateway"):
        attacker = Redis.from_url(stack.redis_urls[component])  # what that component's REDIS_URL allows
        try:
            assert await attacker.ping()  # the credential works: what follows is refused, not failed
            with pytest.raises(NoPermissionError):
                await attacker.xadd(stream, planted, id=last_id)  # type: ignore[arg-type]
            with pytest.raises(NoPermissionError):
                await attacker.delete(stream)
            with pytest.raises(NoPermissionError):
                await attacker.set(f"{prefix}revocations:complete", "1")
            with pytest.raises(NoPermissionError):
                await attacker.flushall()
        finally:
            await attacker.aclose()
    admin = Redis.from_url(stack.redis.url)
    try:
        if await admin.exists(stream):  # nothing planted: the provider can still append
            assert (await admin.xinfo_stream(stream))["last-generated-id"] != last_id.encode()
    finally:
        await admin.aclose()
    started = await revoke(http, stack, tokens["access_token"])
    delays = await seconds_until_refused(http, stack.gateways, tokens["access_token"], started, limit=5.0)
    assert max(delays) < PROPAGATION_BOUND_SECONDS, delays


async def evict_the_stream(admin: Redis, prefix: str, readers: list[ServiceProcess]) -> dict[str, int]:
    """Fill the private Redis past a ``maxmemory`` with ``allkeys-lru`` (what an attacker does with
    keys of its choosing: a throttle counter per user name tried, a rate-limit counter per address)
    until Redis evicts the revocation stream while its marker stays. Which of the two goes first is
    Redis's sampling (``allkeys-random``: a coin toss; ``allkeys-lru``: the idler, and ``EXISTS``, the
    provider's check, does not refresh the marker's clock while its ``XTRIM`` and each gateway's
    ``XREAD`` refresh the stream's, so the marker usually goes first, and the stream when nobody read
    or trimmed it for longer — after a re-publication set the marker anew, say). Here that is made
    certain: the processes that touch the stream are stopped (SIGSTOP) while the test reads the
    marker. The pressure ends as soon as the stream is gone."""
    stream, marker = f"{prefix}revocations", f"{prefix}revocations:complete"
    for reader in readers:
        assert reader.process is not None
        reader.process.send_signal(signal.SIGSTOP)
    filled = 0
    try:
        deadline = time.monotonic() + 30
        while (await admin.object("idletime", stream) or 0) < 2:  # LRU clocks tick in seconds
            assert time.monotonic() < deadline, "the stream is still read"
            await admin.get(marker)
            await asyncio.sleep(0.1)
        filled = await fill_until_gone(admin, prefix)
        if not await admin.exists(marker):
            # the sampling took the marker too (rarely: a candidate kept from an earlier sample), which
            # is Redis losing both, tested above; the state this test wants is the one where it was set
            # anew (the provider is still stopped: it has not seen it missing)
            await admin.set(marker, "1")
    finally:
        for reader in readers:
            assert reader.process is not None
            reader.process.send_signal(signal.SIGCONT)
    return {"filled": filled, "evicted": int((await admin.info("stats"))["evicted_keys"])}


async def fill_until_gone(admin: Redis, prefix: str) -> int:
    """Keys written past ``maxmemory`` (``allkeys-lru``) until the stream is evicted; how many."""
    stream, marker = f"{prefix}revocations", f"{prefix}revocations:complete"
    used = int((await admin.info("memory"))["used_memory"])
    await admin.config_set("maxmemory-policy", "allkeys-lru")
    await admin.config_set("maxmemory", str(used + 2 * 1024 * 1024))
    filled = 0
    try:
        deadline = time.monotonic() + 30
        while await admin.exists(stream):
            assert time.monotonic() < deadline, "Redis never evicted the stream"
            async with admin.pipeline(transaction=False) as pipe:
                for _ in range(20):  # large values: few keys, so the stream is sampled soon
                    pipe.set(f"{prefix}fill:{filled}", b"x" * 16384, ex=600)
                    filled += 1
                pipe.get(marker)
                await pipe.execute()
    finally:
        await admin.config_set("maxmemory", "0")
        await admin.config_set("maxmemory-policy", "noeviction")
    return filled


async def test_revocations_survive_redis_evicting_the_stream(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    """Redis under memory pressure with an evicting policy (``allkeys-lru``, what the chart ran)
    drops the revocation stream and keeps its marker: the provider re-published nothing, the next
    revocation made a new stream holding only itself, and a gateway started afterwards accepted the
    tokens revoked before. Now the provider takes the stream's absence for a loss and re-publishes."""
    _, before = await signed_in(stack, http)
    _, after = await signed_in(stack, http)
    for token in (before["access_token"], after["access_token"]):
        await all_accept(http, stack.gateways, token)
    await revoke(http, stack, before["access_token"])
    await seconds_until_refused(http, stack.gateways, before["access_token"], time.monotonic())

    prefix = stack.gateway_env["REDIS_KEY_PREFIX"]
    admin = Redis.from_url(stack.redis.url)  # the private server's default user: the test's own
    try:
        figures = await evict_the_stream(admin, prefix, [stack.identity, *stack.gateways])
        print("filled until the stream was evicted:", figures)
        started = await revoke(http, stack, after["access_token"])
        delays = await seconds_until_refused(http, stack.gateways, after["access_token"], started, limit=5.0)
        assert max(delays) < PROPAGATION_BOUND_SECONDS, delays
        late = ServiceProcess("gateway", stack.gateway_env).start(wait_path="/readyz")
        try:
            for token in (after["access_token"], before["access_token"]):
                await seconds_until_refused(http, [late], token, time.monotonic(), limit=5.0)
        finally:
            late.stop()
    finally:
        async for key in admin.scan_iter(match=f"{prefix}fill:*", count=1000):
            await admin.unlink(key)
        await admin.aclose()


async def test_a_revocation_made_while_redis_is_full_reaches_the_gateways_once_memory_frees(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    """Redis full with ``noeviction`` (the chart's policy): the provider's ``XADD`` is refused
    (``OOM``), so a revocation cannot reach the gateways, which accept the token until memory frees —
    the price of evicting nothing, counted (``identity_revocations_published_total{outcome="failed"}``,
    alert TimesheetsRevocationsNotPublished) — and then reaches them within the check's period."""
    from testkit.fixtures import scrape

    _, tokens = await signed_in(stack, http)
    await all_accept(http, stack.gateways, tokens["access_token"])
    prefix = stack.gateway_env["REDIS_KEY_PREFIX"]
    admin = Redis.from_url(stack.redis.url)  # the private server's default user: the test's own

    async def failed() -> float:
        exposition = await scrape(stack.identity.url)
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in exposition.splitlines()
            if line.startswith("identity_revocations_published_total{") and 'outcome="failed"' in line
        )

    try:
        evicted = int((await admin.info("stats"))["evicted_keys"])
        used = int((await admin.info("memory"))["used_memory"])
        await admin.config_set("maxmemory-policy", "noeviction")
        await admin.config_set("maxmemory", str(used + 1024 * 1024))
        filled = 0
        while filled < 100_000:
            try:
                await admin.set(f"{prefix}fill:{filled}", b"x" * 1024, ex=600)
            except OutOfMemoryError:
                break
            filled += 1
        # full it stays: keys of the tests before expire meanwhile, and a few KiB freed let a write in
        await admin.config_set(
            "maxmemory", str(int((await admin.info("memory"))["used_memory"]) - 512 * 1024)
        )
        failed_before = await failed()
        await revoke(http, stack, tokens["access_token"])  # revoked in the provider's database
        deadline = time.monotonic() + 10
        while await failed() <= failed_before:
            assert time.monotonic() < deadline, (
                "the refused publication is not counted",
                stack.identity.logs(3000),
            )
            await asyncio.sleep(0.1)
        for gateway in stack.gateways:  # not told: they accept it while Redis refuses every write
            assert await call(http, gateway, tokens["access_token"]) == 200
        assert int((await admin.info("stats"))["evicted_keys"]) == evicted
        freed = time.monotonic()
        async for key in admin.scan_iter(match=f"{prefix}fill:*", count=1000):
            await admin.unlink(key)
        await admin.config_set("maxmemory", str(used + 1024 * 1024))  # the limit as it was
        delays = await seconds_until_refused(http, stack.gateways, tokens["access_token"], freed, limit=10.0)
        print("memory freed to 401 on both gateways (s):", [round(d, 3) for d in delays])
        assert max(delays) < 5.0, delays  # the provider's 0.5 s check, the guard's 0.5 s circuit
    finally:
        await admin.config_set("maxmemory", "0")
        async for key in admin.scan_iter(match=f"{prefix}fill:*", count=1000):
            await admin.unlink(key)
        await admin.aclose()
