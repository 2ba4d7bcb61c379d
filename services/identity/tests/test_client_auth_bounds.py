"""How much Argon2 work a caller without a client secret can make the provider do.

Every wrong client secret costs one Argon2 verification (~0.1 s of a core, in a worker thread, while
the request holds its database transaction), so failed client authentications are limited per
address (``CLIENT_AUTH_MAX_FAILURES_PER_ADDRESS``) wherever a client authenticates: the token and
the revocation endpoints, counted together, and a burst of concurrent guesses gets no more than the
limit.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator

import aiohttp
import pytest

from testkit.fixtures import ServiceProcess, free_port

LIMIT = 3


@pytest.fixture
def provider(seeded: dict[str, str]) -> Iterator[str]:
    """A provider of its own (its own throttle counters), allowing ``LIMIT`` failures per address."""
    port = free_port()
    env = {
        **seeded,
        "IDENTITY_ISSUER": f"http://localhost:{port}/",
        "REDIS_KEY_PREFIX": seeded["REDIS_KEY_PREFIX"] + f"client-auth-{secrets.token_hex(3)}:",
        "CLIENT_AUTH_MAX_FAILURES_PER_ADDRESS": str(LIMIT),
    }
    process = ServiceProcess("identity", env, port=port).start(wait_path="/readyz")
    try:
        yield f"http://localhost:{port}"
    finally:
        process.stop()


WRONG = {"Authorization": aiohttp.encode_basic_auth("timesheets-batch", "not-the-secret")}


async def test_wrong_secrets_at_the_revocation_endpoint_are_limited(provider: str) -> None:
    """``/oauth/revoke`` authenticates confidential clients with their secret, and was not throttled:
    every guess an Argon2 verification, without limit (fails on main: six 401s)."""
    async with aiohttp.ClientSession() as http:
        statuses = []
        for _ in range(LIMIT + 3):
            async with http.post(f"{provider}/oauth/revoke", data={"token": "x"}, headers=WRONG) as r:
                statuses.append(r.status)
        assert statuses == [401] * LIMIT + [429] * 3
        # and the token endpoint counts the same failures
        async with http.post(
            f"{provider}/oauth/token", data={"grant_type": "client_credentials"}, headers=WRONG
        ) as r:
            assert r.status == 429


async def test_a_burst_of_wrong_secrets_gets_no_more_than_the_limit(provider: str) -> None:
    """The token endpoint checked the address's count before the secret and counted a failure after
    it, so concurrent guesses all passed the check together: any number of Argon2 verifications at
    once, each holding a pooled database connection (fails on main: 12 of 12 were verified)."""
    async with aiohttp.ClientSession() as http:

        async def guess() -> int:
            async with http.post(
                f"{provider}/oauth/token", data={"grant_type": "client_credentials"}, headers=WRONG
            ) as r:
                await r.read()
                return r.status

        statuses = await asyncio.gather(*(guess() for _ in range(12)))
    assert statuses.count(401) <= LIMIT, statuses
    assert statuses.count(429) == 12 - statuses.count(401), statuses
