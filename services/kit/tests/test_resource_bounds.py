"""What a caller who holds no key can make a service keep in memory, over real HTTP.

Every request a service refuses must leave nothing behind that grows with what the caller chose to
send: the memory a process keeps for requests it refused is measured with :mod:`tracemalloc` around
a burst of them (the service runs in this process, served on a loopback socket as in production).
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from collections.abc import AsyncIterator

import aiohttp
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from svckit.app import create_service_app
from svckit.authz import requires_scope
from svckit.identity import (
    CONTENT_DIGEST,
    EMPTY_DIGEST,
    ISSUER,
    KEY_ID,
    KIND,
    NONCE,
    SCOPES,
    SIGNATURE,
    SUBJECT,
    TIMESTAMP,
    new_nonce,
)
from svckit.settings import ServiceSettings, load_settings

from testkit.fixtures import receiver_env, serve_app


@requires_scope("read:things")
async def things(request: Request) -> Response:
    return JSONResponse({"ok": True})


@pytest.fixture(scope="module")
async def service(identity_keys: dict[str, str]) -> AsyncIterator[str]:
    settings = load_settings(ServiceSettings, env=receiver_env(identity_keys))
    async with serve_app(create_service_app(settings, [Route("/things", things)])) as url:
        yield url


def forged(number: int) -> dict[str, str]:
    """Identity headers nobody signed: the gateway's key id (it names its pair, as the chart generates
    it: no secret), a fresh timestamp, and ~60 KB of scopes that differ from one request to the next."""
    return {
        KEY_ID: "gateway-timesheets-1",
        TIMESTAMP: str(int(time.time())),
        NONCE: new_nonce(),
        CONTENT_DIGEST: EMPTY_DIGEST,
        SIGNATURE: "forged",
        ISSUER: "https://issuer.example/",
        SUBJECT: f"mallory-{number}",
        KIND: "user",
        SCOPES: " ".join(f"s{number}.{index}" for index in range(6000)),
    }


async def test_refused_identities_leave_nothing_behind(service: str) -> None:
    """The verifier kept what it made of each request's identity headers (an ``Identity`` whose
    scopes are a set of every word sent, and its part of the signed string) *before* checking the
    signature, up to 10,000 of them: about 1 MB a request for 60 KB of headers, ~10 GB per worker for
    anyone who can reach a service and knows a key id (fails on main: ~50 MB kept for 50 requests)."""
    requests = 50
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{service}/things", headers=forged(-1)) as response:  # warm up
            assert response.status == 401
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for number in range(requests):
                async with http.get(f"{service}/things", headers=forged(number)) as response:
                    assert response.status == 401
                    assert (await response.json())["reason"] == "bad_signature"
            gc.collect()
            kept = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
    assert kept < 5_000_000, f"{kept / 1e6:.1f} MB kept for {requests} refused requests"
