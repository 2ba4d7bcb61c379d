"""One host's IPv6 addresses are one client to the provider's per-address limits.

A host holds a whole /64 and may send from any of its 2**64 addresses. Counted per address, each new
one was a new client: the failed client authentications of a /64 (each an Argon2 verification) and its
sign-in guesses were never limited, and every request left a Redis counter of its own for the limit's
window (900 s): one host filled Redis at request rate (runbook, "Redis memory"), which under
``noeviction`` refuses every write — revocations unpublished, rate limits open. Now an IPv6 address is
counted as its /64 (``svckit.proxies.throttle_key``).

The provider believes the loopback as a proxy, so each request's ``X-Forwarded-For`` is its client
address, as behind the ingress.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import aiohttp
import pytest
import redis.asyncio as aioredis

from testkit.oidc import hidden_field

from .conftest import own_provider

LIMIT = 3
HOST = "2001:db8:1:2"  # one /64


@pytest.fixture
def provider(seeded: dict[str, str]) -> Iterator[tuple[str, str]]:
    """A provider with a Redis prefix of its own (its counters are the only keys under it)."""
    prefix = seeded["REDIS_KEY_PREFIX"] + f"v6-{secrets.token_hex(3)}:"
    with own_provider(
        seeded,
        REDIS_KEY_PREFIX=prefix,
        IDENTITY_TRUSTED_PROXIES="127.0.0.1/32,::1/128",
        CLIENT_AUTH_MAX_FAILURES_PER_ADDRESS=str(LIMIT),
        LOGIN_MAX_FAILURES_PER_ADDRESS=str(LIMIT),
        LOGIN_MAX_FAILURES_PER_USER="1000",
        LOGIN_MAX_FAILURES_PER_USER_ALL_ADDRESSES="1000",
    ) as url:
        yield url, prefix


async def keys_under(redis_url: str, pattern: str) -> list[bytes]:
    client = aioredis.from_url(redis_url)
    try:
        return [key async for key in client.scan_iter(match=pattern, count=1000)]
    finally:
        await client.aclose()


async def test_failed_client_authentication_from_one_64_is_one_client(
    provider: tuple[str, str], redis_url: str
) -> None:
    """Fails on main: every guess from a new address of the /64 answered 401 (no limit) and left a
    counter of its own (10 keys)."""
    base, prefix = provider
    wrong = {"Authorization": aiohttp.encode_basic_auth("timesheets-batch", "not-the-secret")}
    statuses = []
    async with aiohttp.ClientSession() as http:
        for i in range(LIMIT + 7):
            headers = {**wrong, "X-Forwarded-For": f"{HOST}:{i:x}:{secrets.randbelow(1 << 16):x}::1"}
            async with http.post(
                f"{base}/oauth/token", data={"grant_type": "client_credentials"}, headers=headers
            ) as r:
                await r.read()
                statuses.append(r.status)
    assert statuses == [401] * LIMIT + [429] * 7, statuses
    keys = await keys_under(redis_url, f"{prefix}identity:client-auth-fail:*")
    assert keys == [f"{prefix}identity:client-auth-fail:addr:{HOST}::/64".encode()], keys


async def test_sign_in_guesses_from_one_64_are_one_client(provider: tuple[str, str], redis_url: str) -> None:
    """Fails on main: every guess from a new address of the /64 was let through to the password check
    and made three counters (30 keys)."""
    base, prefix = provider
    statuses = []
    for i in range(LIMIT + 7):
        headers = {"X-Forwarded-For": f"{HOST}::{i + 1:x}"}
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            async with session.get(base + "/login", headers=headers) as page:
                token = hidden_field(await page.text(), "csrf_token")
            form = {"username": f"nobody{i}", "password": "guess", "csrf_token": token, "return_to": ""}
            async with session.post(base + "/login", data=form, headers=headers, allow_redirects=False) as r:
                statuses.append(r.status)
    assert statuses == [401] * LIMIT + [429] * 7, statuses
    keys = await keys_under(redis_url, f"{prefix}identity:login:*")
    # the /64's counter, and a user name's two for each guess that was let through to the check
    assert len(keys) == 1 + 2 * LIMIT, keys
    assert f"{prefix}identity:login:addr:{HOST}::/64".encode() in keys, keys
