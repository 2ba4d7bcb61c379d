"""The CORS layer while the registered web origins cannot be read (the database away before any read):
an actual request goes on to its handler without CORS headers, a preflight gets the 503 problem with
``Retry-After`` (not a 403 saying the origin is unregistered). Served in process over a database the
layer could never reach (the stack's own outage case is tests/faults/test_provider_cors.py)."""

from __future__ import annotations

import httpx
from identity.cors import ClientOrigins, CorsMiddleware
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from svckit.db import Database

ORIGIN = "http://localhost:8080"


async def discovery(request: Request) -> JSONResponse:
    return JSONResponse({"issuer": "http://localhost:9000/"})


async def test_origins_never_read_let_requests_through_and_answer_preflights_503() -> None:
    never_started = Database("postgresql://nobody@127.0.0.1:9/nowhere")  # its pool is never made
    app = CorsMiddleware(
        Starlette(routes=[Route("/.well-known/openid-configuration", discovery)]),
        ClientOrigins(never_started, ttl=10.0),
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://provider") as http:
        reply = await http.get("/.well-known/openid-configuration", headers={"Origin": ORIGIN})
        assert reply.status_code == 200
        assert "access-control-allow-origin" not in reply.headers
        preflight = await http.options(
            "/oauth/token", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
        )
        assert preflight.status_code == 503, preflight.text
        assert preflight.headers["retry-after"]
        assert preflight.headers["content-type"].startswith("application/problem+json")
        assert "origins" in preflight.json()["detail"]
