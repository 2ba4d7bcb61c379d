"""CORS for the endpoints single-page apps call with ``fetch``: token, userinfo and discovery.

Allowed origins are the registered clients' web origins (Auth0's "Allowed Web Origins", derived from
their redirect URIs), looked up from the database with a short cache. No credentials are allowed:
these endpoints authenticate with parameters and bearer tokens, never cookies.
"""

from __future__ import annotations

import time

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from svckit.db import Database

from . import store

CORS_PATHS = frozenset(
    {
        "/oauth/token",
        "/oauth/revoke",
        "/userinfo",
        "/.well-known/openid-configuration",
        "/.well-known/jwks.json",
    }
)
# DPoP-Nonce: a DPoP client retries a use_dpop_nonce answer with it (RFC 9449 §8)
EXPOSED = b"WWW-Authenticate, X-Request-Id, DPoP-Nonce"
ALLOWED_HEADERS = frozenset({"authorization", "content-type", "auth0-client", "x-request-id", "dpop"})


class ClientOrigins:
    """The union of every registered client's web origins, re-read every ``ttl`` seconds."""

    def __init__(self, database: Database, ttl: float = 10.0) -> None:
        self.database = database
        self.ttl = ttl
        self._origins: frozenset[str] = frozenset()
        self._loaded_at = float("-inf")

    async def allowed(self) -> frozenset[str]:
        if time.monotonic() - self._loaded_at > self.ttl:
            origins: set[str] = set()
            for client in await store.all_clients(self.database.pool):
                origins |= client.allowed_origins
            self._origins = frozenset(origins)
            self._loaded_at = time.monotonic()
        return self._origins


class CorsMiddleware:
    def __init__(self, app: ASGIApp, origins: ClientOrigins) -> None:
        self.app = app
        self.origins = origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in CORS_PATHS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is None:
            await self.app(scope, receive, send)
            return
        allowed = origin in await self.origins.allowed()
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            await self._preflight(origin, allowed, headers)(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [(b"vary", b"Origin")]
                if allowed:
                    extra.append((b"access-control-allow-origin", origin.encode("latin-1")))
                    extra.append(
                        (b"access-control-expose-headers", b"WWW-Authenticate, X-Request-Id, DPoP-Nonce")
                    )
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_cors)

    @staticmethod
    def _preflight(origin: str, allowed: bool, headers: Headers) -> Response:
        if not allowed:
            return Response(status_code=403, headers={"Vary": "Origin"})
        requested = {
            h.strip().lower()
            for h in headers.get("access-control-request-headers", "").split(",")
            if h.strip()
        }
        return Response(
            status_code=204,
            headers={
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Methods": "GET, POST",
                "Access-Control-Allow-Headers": ", ".join(sorted(requested & ALLOWED_HEADERS)),
                "Access-Control-Max-Age": "600",
                "Vary": "Origin",
            },
        )
