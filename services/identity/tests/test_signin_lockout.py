"""Someone else's wrong passwords must not lock a person out of their own sign-in.

A user name is no secret. While failures were counted per user name alone, five wrong passwords from
an attacker's address (``LOGIN_MAX_FAILURES_PER_USER``) had the provider refuse the person's right
password from their own address, 429 for the whole window, again every window. Now failures against a
name are limited per (name, address), and the name's failures from all addresses have a higher limit
of their own (``LOGIN_MAX_FAILURES_PER_USER_ALL_ADDRESSES``): a lockout needs that many failures from
several addresses, and still bounds guesses spread over many.

The provider here believes the loopback as a proxy, so each request's ``X-Forwarded-For`` is its
client address, as behind the ingress.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import aiohttp
import asyncpg
import pytest
from identity import store
from identity.models import User
from identity.passwords import hash_secret

from testkit.oidc import hidden_field

from .conftest import own_provider

PER_USER = 3
PER_USER_ALL = 6
ATTACKER = "203.0.113.66"
VICTIM = "198.51.100.20"


@pytest.fixture(scope="module")
def provider(seeded: dict[str, str]) -> Iterator[str]:
    with own_provider(
        seeded,
        IDENTITY_TRUSTED_PROXIES="127.0.0.1/32,::1/128",
        LOGIN_MAX_FAILURES_PER_USER=str(PER_USER),
        LOGIN_MAX_FAILURES_PER_USER_ALL_ADDRESSES=str(PER_USER_ALL),
        LOGIN_MAX_FAILURES_PER_ADDRESS="1000",
    ) as url:
        yield url


@pytest.fixture
async def user(db: asyncpg.Connection) -> str:
    name = "vic" + secrets.token_hex(4)
    await store.upsert_user(
        db, User(f"local|{name}", name, f"{name}@example.com", "Vic", ("employee",), hash_secret("right-one"))
    )
    return name


async def sign_in(base: str, address: str, username: str, password: str) -> int:
    """One sign-in from ``address`` in a fresh browser (no cookie of anyone else's)."""
    headers = {"X-Forwarded-For": address}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        async with session.get(base + "/login", headers=headers) as page:
            assert page.status == 200
            token = hidden_field(await page.text(), "csrf_token")
        form = {"username": username, "password": password, "csrf_token": token, "return_to": ""}
        async with session.post(base + "/login", data=form, headers=headers, allow_redirects=False) as answer:
            return answer.status


async def test_failures_from_one_address_do_not_lock_the_user_out_elsewhere(provider: str, user: str) -> None:
    statuses = [await sign_in(provider, ATTACKER, user, f"guess-{i}") for i in range(PER_USER + 5)]
    assert statuses == [401] * PER_USER + [429] * 5, statuses
    assert await sign_in(provider, ATTACKER, user, "right-one") == 429, "the attacker's address stays slowed"
    assert await sign_in(provider, VICTIM, user, "right-one") == 303, "the person signs in from their own"


async def test_guesses_spread_over_addresses_are_still_bounded(provider: str, user: str) -> None:
    statuses = []
    for i in range(PER_USER_ALL + 2):
        statuses.append(await sign_in(provider, f"192.0.2.{i + 1}", user, f"guess-{i}"))
    assert statuses == [401] * PER_USER_ALL + [429] * 2, statuses
    # the bounded, documented effect: a lockout took PER_USER_ALL failures from 2+ addresses
    assert await sign_in(provider, VICTIM, user, "right-one") == 429
