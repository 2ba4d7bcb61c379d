"""The servers of ``bench/gateway.py`` other than the gateway itself (each run by uvicorn on core 0).

* ``upstream`` — a trivial raw-ASGI upstream answering a small JSON document.
* ``passthrough`` — a minimal raw-ASGI proxy on the gateway's stack (uvicorn + one shared aiohttp
  session), no authentication: the floor any Python proxy pays.
* ``pooled`` — the same minimal proxy over the gateway's own forwarding pool
  (:class:`gateway.upstream.UpstreamPool`) instead of aiohttp: the floor of the gateway's hop, so the
  benchmark can also say what verification, policy and observability cost on top of it.
* ``naive`` — what a typical hand-written verifier looks like: Starlette, a new ``PyJWKClient``
  (one JWKS fetch) and a new httpx client per request (as in
  the anchor of /work/shared/BENCHMARKS.md), PyJWT decode, then the upstream call.

Configured by ``BENCH_UPSTREAM_URL``, ``BENCH_JWKS_URL``, ``BENCH_ISSUER``, ``BENCH_AUDIENCE``.
"""

from __future__ import annotations

import os
from typing import Any

import aiohttp
import httpx
import jwt
from gateway.upstream import UpstreamPool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

BODY = b'{"items":[],"next_cursor":null}'
UPSTREAM = os.environ.get("BENCH_UPSTREAM_URL", "http://127.0.0.1:9")
HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"host", b"content-length"}


async def upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": BODY})


class Passthrough:
    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.session = aiohttp.ClientSession(
                        connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=4),
                        auto_decompress=False,
                    )
                    await send({"type": "lifespan.startup.complete"})
                else:
                    if self.session is not None:
                        await self.session.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        assert self.session is not None
        headers = [(k.decode(), v.decode()) for k, v in scope["headers"] if k not in HOP]
        target = scope["raw_path"].decode()[len("/api") :]
        async with self.session.request(scope["method"], UPSTREAM + target, headers=headers) as response:
            body = await response.read()
            out = [(k.lower(), v) for k, v in response.raw_headers if k.lower() not in HOP]
            out.append((b"content-length", str(len(body)).encode()))
            await send({"type": "http.response.start", "status": response.status, "headers": out})
            await send({"type": "http.response.body", "body": body})


passthrough = Passthrough()


class Pooled:
    def __init__(self) -> None:
        self.pool: UpstreamPool | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.pool = UpstreamPool(UPSTREAM, size=256, connect_timeout=2, read_timeout=30)
                    await send({"type": "lifespan.startup.complete"})
                else:
                    if self.pool is not None:
                        await self.pool.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        assert self.pool is not None
        lines = [scope["method"].encode(), b" ", scope["raw_path"][len("/api") :], b" HTTP/1.1\r\nhost: "]
        lines.append(self.pool.host_header)
        for key, value in scope["headers"]:
            if key not in HOP:
                lines += (b"\r\n", key, b": ", value)
        lines.append(b"\r\n\r\n")
        connection = await self.pool.acquire()
        try:
            connection.start(b"".join(lines), None, expect_body=True)
            await connection.read_head()
            body = await connection.read_body()
            out = [(k, v) for k, v in connection.headers if k not in HOP]
            out.append((b"content-length", str(len(body)).encode()))
            await send({"type": "http.response.start", "status": connection.status, "headers": out})
            await send({"type": "http.response.body", "body": body})
        finally:
            connection.finish()


pooled = Pooled()


async def naive_handler(request: Request) -> Response:
    authorization = request.headers.get("authorization", "")
    if not authorization.startswith("Bearer "):
        return JSONResponse({"detail": "no token"}, status_code=401)
    token = authorization[7:]
    try:
        signing_key = jwt.PyJWKClient(os.environ["BENCH_JWKS_URL"]).get_signing_key_from_jwt(token)
        claims = jwt.decode(
            token,
            signing_key.key,
            algorithms=["RS256"],
            audience=os.environ["BENCH_AUDIENCE"],
            issuer=os.environ["BENCH_ISSUER"],
        )
    except jwt.PyJWTError as exc:
        return JSONResponse({"detail": str(exc)}, status_code=401)
    if "read:timesheets" not in claims.get("scope", "").split():
        return JSONResponse({"detail": "insufficient scope"}, status_code=403)
    async with httpx.AsyncClient() as client:
        response = await client.get(
            UPSTREAM + "/timesheets", headers={"X-User": claims["sub"], "X-Scopes": claims["scope"]}
        )
        return Response(response.content, status_code=response.status_code, media_type="application/json")


naive = Starlette(routes=[Route("/api/timesheets", naive_handler)])
