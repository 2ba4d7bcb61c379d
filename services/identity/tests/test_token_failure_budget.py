"""One address's failed token requests have a budget, spent before a DPoP proof is remembered.

Anyone can send ``/oauth/token`` a valid DPoP proof: a throwaway key signs it, a fresh ``jti`` each
time. Each such proof is remembered (``identity-dpop-jti:*`` in Redis, ``svckit.dpop.ReplayGuard``) for
its window whatever the request then turns out to be — a bogus code or refresh token, a client that does
not exist — and only failed *client authentication* was limited per address: one address kept ~15 MB
of proof ids per replica in Redis (runbook, "Redis memory"). Now failed token requests are counted per
address (``svckit.proxies.throttle_key``: an IPv6 client as its /64), a slot taken before the proof is
remembered and given back by a request that succeeds; at ``TOKEN_MAX_FAILURES_PER_ADDRESS`` in
``TOKEN_FAILURE_WINDOW_SECONDS`` the address is answered 429 with nothing remembered. A request that can
never succeed whatever is stored (an unknown grant type, a grant without its code or refresh token) is
refused before its proof is remembered, and not counted.

Each test runs its own provider on a private Redis (``testkit.redisproc.PrivateRedis``), whose keys are
all its own, with the loopback believed as a proxy: each request's ``X-Forwarded-For`` is its client.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from testkit.dpop import DpopKey
from testkit.oidc import SPA, Browser, code_request, params_of, pkce_pair
from testkit.redisproc import PrivateRedis, component_users

from .conftest import own_provider

LIMIT = 5
ATTACKER = "198.51.100.7"
NEIGHBOUR = "198.51.100.8"


@dataclass
class Provider:
    url: str
    redis: PrivateRedis
    prefix: str

    @property
    def token_url(self) -> str:
        return self.url + "/oauth/token"

    async def keys(self, pattern: str) -> set[str]:
        client = aioredis.from_url(self.redis.url, decode_responses=True)
        try:
            return {key async for key in client.scan_iter(match=self.prefix + pattern, count=1000)}
        finally:
            await client.aclose()

    async def proof_ids(self) -> int:
        """How many DPoP proof ids the provider keeps in Redis."""
        return len(await self.keys("identity-dpop-jti:*"))

    async def used_memory(self) -> int:
        client = aioredis.from_url(self.redis.url)
        try:
            return int((await client.info("memory"))["used_memory"])
        finally:
            await client.aclose()


def start_provider(seeded: dict[str, str], **settings: str) -> Iterator[Provider]:
    """A provider on a private Redis, connecting as its own Redis user as in production
    (``svckit.redisacl``: the budget's counters must be keys it may write); the tests look at the keys
    as the default user."""
    prefix = f"budget-{secrets.token_hex(3)}:"
    password = secrets.token_urlsafe(16)
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(PrivateRedis(acl=component_users(prefix, {"identity": password})))
        url = stack.enter_context(
            own_provider(
                seeded,
                REDIS_URL=redis.url_for("identity", password),
                REDIS_KEY_PREFIX=prefix,
                REDIS_TIMEOUT_SECONDS="2",  # a loaded machine's slow answer is not taken for Redis lost
                IDENTITY_TRUSTED_PROXIES="127.0.0.1/32,::1/128",
                TOKEN_MAX_FAILURES_PER_ADDRESS=str(LIMIT),
                CLIENT_AUTH_MAX_FAILURES_PER_ADDRESS="1000",  # the budget under test is the token one
                **settings,
            )
        )
        yield Provider(url, redis, prefix)


@pytest.fixture
def provider(seeded: dict[str, str]) -> Iterator[Provider]:
    yield from start_provider(seeded)


def bogus_grant(i: int) -> dict[str, str]:
    """The ``i``-th of an attacker's token requests: a bogus refresh token, a bogus code, an unknown
    client, in turn — each well-formed, each refused only after a look in the database."""
    kind = i % 3
    if kind == 0:
        form = {
            "grant_type": "refresh_token",
            "client_id": "timesheets-spa",
            "refresh_token": secrets.token_urlsafe(32),
        }
    elif kind == 1:
        form = {
            "grant_type": "authorization_code",
            "client_id": "timesheets-spa",
            "code": secrets.token_urlsafe(32),
            "code_verifier": secrets.token_urlsafe(32),
            "redirect_uri": f"{SPA}/callback",
        }
    else:
        form = {
            "grant_type": "refresh_token",
            "client_id": f"nobody-{i}",
            "refresh_token": secrets.token_urlsafe(32),
        }
    return form


async def post_token(
    http: aiohttp.ClientSession,
    provider: Provider,
    form: dict[str, str],
    address: str,
    proof: str | None = None,
) -> tuple[int, dict[str, Any], Any]:
    headers = {"X-Forwarded-For": address}
    if proof is not None:
        headers["DPoP"] = proof
    async with http.post(provider.token_url, data=form, headers=headers) as response:
        return response.status, await response.json(), response.headers


async def attack(http: aiohttp.ClientSession, provider: Provider, address: str, n: int) -> list[int]:
    """``n`` bogus token requests from ``address``, each with a fresh proof by a fresh key."""
    statuses = []
    for i in range(n):
        form = bogus_grant(i)
        status, _, _ = await post_token(
            http, provider, form, address, DpopKey().proof("POST", provider.token_url)
        )
        statuses.append(status)
    return statuses


async def test_fresh_proofs_with_bogus_grants_from_one_address_stop_at_the_budget(provider: Provider) -> None:
    """Fails on main: every one of the requests was answered 400/401 and left its proof id in Redis
    (LIMIT + 21 keys, and on without end at request rate: ~320 bytes of Redis a request)."""
    n = LIMIT + 20
    async with aiohttp.ClientSession() as http:
        statuses = await attack(http, provider, ATTACKER, n)
        status, body, headers = await post_token(
            http, provider, bogus_grant(0), ATTACKER, DpopKey().proof("POST", provider.token_url)
        )
    ids = await provider.proof_ids()
    assert ids <= LIMIT, f"{ids} proof ids kept for {n + 1} requests from one address"
    assert all(s in (400, 401) for s in statuses[:LIMIT]), statuses
    assert statuses[LIMIT:] == [429] * 20, statuses
    assert status == 429
    assert body["error"] == "too_many_attempts", body
    assert 1 <= int(headers["Retry-After"]) <= 300, headers
    assert headers["Cache-Control"] == "no-store"


async def test_fresh_proofs_revoking_unknown_tokens_from_one_address_stop_at_the_budget(
    provider: Provider,
) -> None:
    """``/oauth/revoke`` answers 200 for a token it does not know (RFC 7009 §2.2), and remembered each
    request's proof too: such a revocation spends the budget as a refusal does (fails on main: LIMIT + 5
    proof ids, never 429)."""
    revoke_url = provider.url + "/oauth/revoke"
    statuses = []
    async with aiohttp.ClientSession() as http:
        for _ in range(LIMIT + 5):
            headers = {"X-Forwarded-For": ATTACKER, "DPoP": DpopKey().proof("POST", revoke_url)}
            form = {"client_id": "timesheets-spa", "token": secrets.token_urlsafe(32)}
            async with http.post(revoke_url, data=form, headers=headers) as response:
                await response.read()
                statuses.append(response.status)
    ids = await provider.proof_ids()
    assert ids <= LIMIT, f"{ids} proof ids kept for {LIMIT + 5} revocations from one address"
    assert statuses == [200] * LIMIT + [429] * 5, statuses


async def test_a_client_at_the_edge_of_the_budget_is_still_served(
    provider: Provider, browser_at: Any
) -> None:
    """Behind one address (a NAT) one client fails LIMIT - 1 times; an SPA there goes on signing in and
    refreshing with its DPoP key, as often as it likes (successes give their slot back), and only
    once the address's failures reach the budget is it refused too (fails on main: never 429)."""
    async with aiohttp.ClientSession() as http:
        assert all(s in (400, 401) for s in await attack(http, provider, ATTACKER, LIMIT - 1))
        key = DpopKey()
        tokens = await dpop_sign_in(browser_at(provider.url), http, provider, key, ATTACKER)
        for _ in range(LIMIT + 3):  # more successes than the budget
            status, tokens, _ = await post_token(
                http, provider, refresh_form(tokens), ATTACKER, key.proof("POST", provider.token_url)
            )
            assert status == 200, tokens
        assert await attack(http, provider, ATTACKER, 1) == [400]  # the last failure the budget allows
        status, body, _ = await post_token(
            http, provider, refresh_form(tokens), ATTACKER, key.proof("POST", provider.token_url)
        )
        assert (status, body.get("error")) == (429, "too_many_attempts"), body


async def test_the_budget_is_per_address_and_an_ipv6_64_is_one_address(provider: Provider) -> None:
    """An address at its budget does not spend another's; the addresses of one /64 share one budget
    (fails on main: no 429 at all)."""
    async with aiohttp.ClientSession() as http:
        assert (await attack(http, provider, ATTACKER, LIMIT + 1))[-1] == 429
        assert all(s in (400, 401) for s in await attack(http, provider, NEIGHBOUR, LIMIT))
        statuses = []
        for i in range(LIMIT + 3):  # one host, a new address of its /64 for each request
            form = bogus_grant(i)
            address = f"2001:db8:1:2:{secrets.randbelow(1 << 16):x}::{i + 1:x}"
            status, _, _ = await post_token(
                http, provider, form, address, DpopKey().proof("POST", provider.token_url)
            )
            statuses.append(status)
        assert statuses[LIMIT:] == [429] * 3, statuses
        other_64 = await attack(http, provider, "2001:db8:1:3::1", 1)
        assert other_64 in ([400], [401]), other_64
    assert await provider.proof_ids() <= 3 * LIMIT + 1
    counters = {f"{provider.prefix}identity:token-fail:addr:{a}" for a in (ATTACKER, NEIGHBOUR)}
    counters |= {f"{provider.prefix}identity:token-fail:addr:2001:db8:1:{n}::/64" for n in (2, 3)}
    assert await provider.keys("identity:token-fail:*") == counters  # in Redis, one per address or /64


async def test_requests_that_cannot_succeed_leave_no_proof_id_and_spend_no_budget(provider: Provider) -> None:
    """An unknown grant type, a refresh without its refresh token, a code exchange without its code:
    refused whatever is stored, so their proofs need no replay protection (fails on main: a proof id
    kept for each). The same proof then serves a well-formed request once, and once only."""
    key = DpopKey()
    async with aiohttp.ClientSession() as http:
        malformed = [
            {"grant_type": "urn:example:nothing", "client_id": "timesheets-spa"},
            {"grant_type": "refresh_token", "client_id": "timesheets-spa"},
            {"grant_type": "authorization_code", "client_id": "timesheets-spa", "code_verifier": "x" * 43},
        ]
        for _ in range(LIMIT):
            for form in malformed:
                status, body, _ = await post_token(
                    http, provider, form, ATTACKER, DpopKey().proof("POST", provider.token_url)
                )
                assert status == 400, body
                assert body["error"] in ("unsupported_grant_type", "invalid_request"), body
        assert await provider.proof_ids() == 0
        proof = key.proof("POST", provider.token_url)
        status, body, _ = await post_token(http, provider, malformed[1], ATTACKER, proof)
        assert (status, body["error"]) == (400, "invalid_request")
        form = bogus_grant(0)
        status, body, _ = await post_token(http, provider, form, ATTACKER, proof)
        assert (status, body["error"]) == (400, "invalid_grant"), body  # the proof passed, once
        status, body, _ = await post_token(http, provider, form, ATTACKER, proof)
        assert (status, body["error"]) == (400, "invalid_dpop_proof"), body  # a replay now
    assert await provider.proof_ids() == 1


@pytest.mark.parametrize("nonces", ["true"])
async def test_the_dpop_nonce_step_spends_no_budget(
    seeded: dict[str, str], browser_at: Any, nonces: str
) -> None:
    """With DPOP_NONCES every DPoP request of an SPA starts with a 400 ``use_dpop_nonce`` whenever the
    nonce has moved on: the protocol's step, not a failure. Many of them from one address leave the
    budget whole; failures then spend it (fails on main: never 429)."""
    for provider in start_provider(seeded, DPOP_NONCES=nonces):
        key = DpopKey()
        async with aiohttp.ClientSession() as http:
            for _ in range(LIMIT + 3):
                status, body, headers = await post_token(
                    http, provider, bogus_grant(0), ATTACKER, key.proof("POST", provider.token_url)
                )
                assert (status, body["error"]) == (400, "use_dpop_nonce"), body
            nonce = headers["DPoP-Nonce"]
            statuses = []
            for i in range(LIMIT + 1):
                proof = DpopKey().proof("POST", provider.token_url, nonce=nonce)
                statuses.append((await post_token(http, provider, bogus_grant(i), ATTACKER, proof))[0])
            assert 429 not in statuses[:LIMIT], statuses
            assert statuses[-1] == 429, statuses


async def test_without_redis_each_replica_keeps_the_budget_in_process(provider: Provider) -> None:
    """Redis gone: proof ids are remembered in process (``svckit.dpop``), and the budget is counted
    there too, per replica, as the other throttles degrade (fails on main: no 429)."""
    provider.redis.stop()
    async with aiohttp.ClientSession() as http:
        statuses = await attack(http, provider, ATTACKER, LIMIT + 5)
        assert all(s in (400, 401) for s in statuses[:LIMIT]), statuses
        assert statuses[LIMIT:] == [429] * 5, statuses
        assert all(s in (400, 401) for s in await attack(http, provider, NEIGHBOUR, 2))


async def dpop_sign_in(
    browser: Browser, http: aiohttp.ClientSession, provider: Provider, key: DpopKey, address: str
) -> dict[str, Any]:
    """The SPA's code flow with a DPoP key: its refresh token is bound to ``key``."""
    verifier, challenge = pkce_pair()
    request = code_request(challenge, scope="openid offline_access read:timesheets")
    response = await browser.sign_in_and_authorize("alice", **request)
    assert response.status == 302, browser.last_html
    code = params_of(response.headers["Location"])["code"]
    form = {
        "grant_type": "authorization_code",
        "client_id": "timesheets-spa",
        "code": code,
        "code_verifier": verifier,
        "redirect_uri": request["redirect_uri"],
    }
    status, tokens, _ = await post_token(http, provider, form, address, key.proof("POST", provider.token_url))
    assert status == 200, tokens
    assert tokens["token_type"] == "DPoP"
    return tokens


def refresh_form(tokens: dict[str, Any]) -> dict[str, str]:
    return {
        "grant_type": "refresh_token",
        "client_id": "timesheets-spa",
        "refresh_token": tokens["refresh_token"],
    }


@pytest.fixture
async def browser_at() -> Any:
    sessions: list[aiohttp.ClientSession] = []

    def make(url: str) -> Browser:
        session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        sessions.append(session)
        return Browser(url, session)

    yield make
    for session in sessions:
        await session.close()
