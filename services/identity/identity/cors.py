"""CORS for the endpoints single-page apps call with ``fetch``: token, userinfo and discovery.

Allowed origins are the registered clients' web origins (Auth0's "Allowed Web Origins", derived from
their redirect URIs), looked up from the database with a short cache. No credentials are allowed:
these endpoints authenticate with parameters and bearer tokens, never cookies.

This middleware sits outside the kit's fault answers, so the database being away is handled here:
the origins last read stay in use until a read succeeds again (an outage never widens them, and the
SPA keeps reading discovery and the JWKS, which need no database); with none read yet, an actual
request goes on without CORS headers (its handler answers as it would) and a preflight gets the
kit's 503 problem with ``Retry-After`` — not a 403 that would say the origin is not registered.
"""

from __future__ import annotations

import logging
import time

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from svckit.db import UNAVAILABLE_ERRORS, Database
from svckit.problems import RETRY_AFTER, problem_response

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


log = logging.getLogger("identity.cors")


class ClientOrigins:
    """The union of every registered client's web origins, re-read every ``ttl`` seconds
    (``CORS_ORIGINS_REFRESH_SECONDS``); the last read kept while the database is away (``None``: none
    read yet)."""

    def __init__(self, database: Database, ttl: float) -> None:
        self.database = database
        self.ttl = ttl
        self._origins: frozenset[str] | None = None
        self._loaded_at = float("-inf")
        self._stale = False

    async def allowed(self) -> frozenset[str] | None:
        if time.monotonic() - self._loaded_at > self.ttl:
            try:
                clients = await store.all_clients(self.database.queries)
            except UNAVAILABLE_ERRORS as exc:
                # tried again after ``ttl``, not on every request of the outage
                self._loaded_at = time.monotonic()
                if not self._stale:
                    self._stale = True
                    log.warning(
                        "registered web origins could not be read; the last read stay in use",
                        extra={"error": type(exc).__name__, "known": self._origins is not None},
                    )
                return self._origins
            origins: set[str] = set()
            for client in clients:
                origins |= client.allowed_origins
            self._origins = frozenset(origins)
            self._loaded_at = time.monotonic()
            self._stale = False
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
        known = await self.origins.allowed()
        allowed = known is not None and origin in known
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            if known is None:
                unknown = problem_response(
                    503,
                    "Service Unavailable",
                    "The registered web origins cannot be read while the database is unavailable.",
                    headers={**RETRY_AFTER, "Vary": "Origin"},
                )
                await unknown(scope, receive, send)
                return
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
