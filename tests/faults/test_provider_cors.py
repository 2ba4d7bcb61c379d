"""The provider's cross-origin answers while Postgres is down. The SPA calls discovery, the JWKS and
the token endpoint from its own origin, and the provider's CORS middleware reads the registered
clients' web origins from the database (re-read every ``CORS_ORIGINS_REFRESH_SECONDS``, 1 s in the
fault stack): with Postgres stopped, a request with an
``Origin`` header failed in that read, outside the handlers' own fault answers — a 500. Now the
origins last read are used while the database is away (a registration is never *widened* by an
outage), and with none read yet the answer is the provider's 503 problem with ``Retry-After``."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from .conftest import Stack, wait_ready

pytestmark = pytest.mark.timeout(120)

SPA_ORIGIN = "http://localhost:8080"
STRANGER = "https://evil.example"
#: identity.cors logs this once a re-read of the origins failed and the last read stay in use
REREAD_FAILED = "registered web origins could not be read"


async def cross_origin(
    http: aiohttp.ClientSession, method: str, url: str, origin: str
) -> tuple[int, dict[str, str]]:
    headers = {"Origin": origin}
    if method == "OPTIONS":
        headers |= {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    data = {"grant_type": "refresh_token", "refresh_token": "x", "client_id": "timesheets-spa"}
    async with http.request(method, url, headers=headers, data=data if method == "POST" else None) as reply:
        await reply.read()
        return reply.status, dict(reply.headers)


async def reread_failed(http: aiohttp.ClientSession, stack: Stack, log_before: int) -> None:
    """Cross-origin requests until one made the provider re-read the origins with the database down
    (the first after ``CORS_ORIGINS_REFRESH_SECONDS``) and it said so in its log; each, that one
    included, allowed from the origins last read."""
    deadline = asyncio.get_running_loop().time() + 15
    while asyncio.get_running_loop().time() < deadline:
        path = "/.well-known/jwks.json"
        status, headers = await cross_origin(http, "GET", stack.identity.url + path, SPA_ORIGIN)
        assert status == 200, (path, status)
        assert headers.get("Access-Control-Allow-Origin") == SPA_ORIGIN, (path, headers)
        with stack.identity.log_path.open("rb") as log:
            log.seek(log_before)
            if REREAD_FAILED.encode() in log.read():
                return
        await asyncio.sleep(0.2)
    raise AssertionError("the provider never re-read its clients' origins while Postgres was down")


async def test_cross_origin_requests_while_postgres_is_down_get_no_500(stack: Stack) -> None:
    await stack.ensure_up()
    base = stack.identity.url
    async with aiohttp.ClientSession() as http:
        # the origins read once while the database is up
        status, headers = await cross_origin(
            http, "GET", base + "/.well-known/openid-configuration", SPA_ORIGIN
        )
        assert status == 200
        assert headers.get("Access-Control-Allow-Origin") == SPA_ORIGIN
        log_before = stack.identity.log_path.stat().st_size
        await asyncio.to_thread(stack.postgres.stop, "fast")
        try:
            await reread_failed(http, stack, log_before)
            for path in ("/.well-known/openid-configuration", "/.well-known/jwks.json"):
                status, headers = await cross_origin(http, "GET", base + path, SPA_ORIGIN)
                assert status == 200, (path, status)
                assert headers.get("Access-Control-Allow-Origin") == SPA_ORIGIN, (path, headers)
                status, headers = await cross_origin(http, "GET", base + path, STRANGER)
                assert status == 200, (path, status)
                assert "Access-Control-Allow-Origin" not in headers, (path, headers)
            status, headers = await cross_origin(http, "OPTIONS", base + "/oauth/token", SPA_ORIGIN)
            assert status < 500, status
            assert headers.get("Access-Control-Allow-Origin") == SPA_ORIGIN, headers
            status, headers = await cross_origin(http, "POST", base + "/oauth/token", SPA_ORIGIN)
            assert status == 503, status  # the token endpoint needs the database: its own fault answer
            assert headers.get("Access-Control-Allow-Origin") == SPA_ORIGIN, headers
        finally:
            await asyncio.to_thread(stack.postgres.start)
            await wait_ready(base)
