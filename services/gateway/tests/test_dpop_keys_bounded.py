"""One token's DPoP proofs make no more Redis keys than its rate limit admits requests.

The proof of possession is checked (stage 5) before the rate limit (stage 7), and each proof the
gateway accepts is a Redis key (``dpop-jti``, ~160 bytes) kept as long as the proof could be replayed
(``DPOP_MAX_AGE_SECONDS`` + twice the leeway, 120 s by default; more with an ``iat`` ahead by the leeway).
So one DPoP-bound token sending a fresh proof with every request made a key per request at whatever
rate the gateway answers, all of them answered 429 by the rate limit right after: ~150 s of a
gateway's full rate (a few thousand requests a second a worker) is hundreds of MB, and a full
``noeviction`` Redis refuses every write (runbook, "Redis memory"). Now a caller already over its
rate limit is refused before its proof is remembered.
"""

from __future__ import annotations

import secrets
import time

import aiohttp
import redis.asyncio as aioredis

from testkit.clock import FakeClock
from testkit.dpop import DpopKey

from .conftest import Provider, StartGateway

LIMIT = 5
ROUTE = "/api/timesheets"


async def test_proofs_over_the_rate_limit_leave_no_keys(
    http: aiohttp.ClientSession,
    start_gateway: StartGateway,
    provider: Provider,
    redis_prefix: str,
    redis_url: str,
) -> None:
    """Fails on main: 25 keys for 5 admitted requests."""
    prefix = f"{redis_prefix}gw-{secrets.token_hex(4)}:"
    key = DpopKey()
    token = provider.token(cnf={"jkt": key.jkt})
    # the clock stands still: no window boundary (where the estimate lets one more through) mid-test
    async with start_gateway(
        FakeClock(start=time.time()),
        rate_limit_per_subject=LIMIT,
        rate_limit_sync_seconds=10,
        redis_key_prefix=prefix,
    ) as gateway:
        url = f"{gateway}{ROUTE}"
        statuses = []
        for _ in range(LIMIT + 20):
            headers = {"Authorization": f"DPoP {token}", "DPoP": key.proof("GET", url, access_token=token)}
            async with http.get(url, headers=headers) as response:
                await response.read()
                statuses.append(response.status)
        assert statuses == [200] * LIMIT + [429] * 20, statuses
        admin = aioredis.from_url(redis_url)
        try:
            keys = [k async for k in admin.scan_iter(match=f"{prefix}dpop-jti:*", count=1000)]
        finally:
            await admin.aclose()
        assert len(keys) == LIMIT, len(keys)
