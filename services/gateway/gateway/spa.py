"""The SPA's static files and its runtime configuration (``/config.json``).

* Hashed build assets (``/assets/…`` or names like ``app.3f9a1c2b.js``) are cached for a year,
  ``immutable``; ``index.html`` and everything else is ``no-cache`` so a deploy is seen at once.
* A GET for a path that is not a file, from a client that accepts HTML, gets ``index.html``
  (client-side routing: ``/callback``, ``/approvals``…); anything else is a 404 problem.
* Files are served whole: a ``Range`` is ignored (:class:`WholeFile`).
* HTML carries a strict Content-Security-Policy: scripts, styles and connections only from the
  gateway's own origin, plus ``connect-src`` and ``frame-src`` for the configured authorization
  server (token endpoint calls and silent renewal in a hidden iframe).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send
from svckit.problems import problem_response

from .settings import GatewaySettings

HASHED = re.compile(r"[.-][0-9A-Za-z_]{8,}\.(?:js|mjs|css|woff2?|png|svg|jpg|webp|ico|map)$")
IMMUTABLE = "public, max-age=31536000, immutable"
NOT_BUILT = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Timesheets</title></head>
<body><h1>Timesheets</h1><p>The web app is not built yet. Run <code>make spa</code> (or
<code>cd spa &amp;&amp; npm ci &amp;&amp; npm run build</code>) and reload. The API is served under
<code>/api</code>.</p></body></html>"""


class WholeFile(FileResponse):
    """A file served whole, whatever ``Range`` the request asks for, and ``Accept-Ranges: none``.

    The SPA's files are small build assets that no browser fetches in parts, and RFC 9110 §14.2 lets a
    server ignore ``Range`` (an unknown range unit it must ignore). Starlette's range handling answers
    what it cannot parse (``pages=1-2``, ``bytes=5-1``) with a ``text/plain`` 400 and a range past the
    end with an empty ``text/plain`` 416: answers no client of these files needs, and not the
    problem+json every other refusal of the gateway is. Without ranges there is nothing to refuse."""

    def __init__(self, path: Path, headers: dict[str, str]) -> None:
        super().__init__(path, headers=headers)
        self.headers["accept-ranges"] = "none"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(name, value) for name, value in scope["headers"] if name != b"range"]
        await super().__call__({**scope, "headers": headers}, receive, send)


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def content_security_policy(settings: GatewaySettings) -> str:
    issuer = origin_of(settings.spa_issuer)
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            "font-src 'self'",
            f"connect-src 'self' {issuer}",
            f"frame-src {issuer}",
            f"form-action 'self' {issuer}",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "object-src 'none'",
        ]
    )


#: what the SPA's request timeout adds to the gateway's own worst case: the way between the browser and
#: the gateway (an ingress, a slow link) and the gateway's own work around the upstream call
REQUEST_TIMEOUT_MARGIN_SECONDS = 5.0


def spa_request_timeout_ms(settings: GatewaySettings) -> int:
    """How long the SPA waits for one API answer before it gives the attempt up as a network failure
    (browsers have no fetch timeout: a frozen gateway or a hung ingress would leave the page waiting
    forever). Longer than the gateway may take before it answers by itself — a JWKS fetch for an
    unknown key, the wait for a pooled connection, connecting, the upstream's read timeout, after
    which it answers 503/504 — so that a slow service is reported by the gateway, whose answer says
    whether a write was stored, and only a gateway that answers nothing is timed out by the page."""
    worst = (
        settings.jwks_fetch_timeout_seconds
        + settings.upstream_pool_wait_seconds
        + settings.upstream_connect_timeout_seconds
        + settings.upstream_read_timeout_seconds
    )
    return math.ceil((worst + REQUEST_TIMEOUT_MARGIN_SECONDS) * 1000)


def spa_config(settings: GatewaySettings) -> dict[str, str | int]:
    return {
        "issuer": settings.spa_issuer,
        "clientId": settings.spa_client_id,
        "audience": settings.spa_audience or settings.oidc_audience,
        "flow": settings.spa_auth_flow,
        "scopes": settings.spa_scopes,
        "apiBase": "/api",
        "requestTimeoutMs": spa_request_timeout_ms(settings),
    }


def spa_routes(settings: GatewaySettings) -> list[Route]:
    root = settings.spa_dist_dir.resolve()
    html_headers = {
        "Content-Security-Policy": content_security_policy(settings),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }
    config_body = json.dumps(spa_config(settings)).encode()

    async def config(request: Request) -> Response:
        return Response(
            config_body,
            media_type="application/json",
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    def file(path: Path) -> Response:
        name = path.relative_to(root).as_posix()
        if path.name == "index.html" or path.suffix == ".html":
            return WholeFile(path, headers=html_headers)
        cache = IMMUTABLE if name.startswith("assets/") or HASHED.search(name) else "no-cache"
        return WholeFile(path, headers={"Cache-Control": cache, "X-Content-Type-Options": "nosniff"})

    async def static(request: Request) -> Response:
        index = root / "index.html"
        relative = request.path_params.get("path", "")
        if relative and "\0" not in relative:
            candidate = (root / relative).resolve()
            if candidate.is_relative_to(root) and candidate.is_file():
                return file(candidate)
        if not relative or "text/html" in request.headers.get("accept", ""):
            # the page, or how to build it: an API client gets the same 404 either way
            return file(index) if index.is_file() else HTMLResponse(NOT_BUILT, headers=html_headers)
        return problem_response(404, None, "No such file.")

    return [
        Route("/config.json", config, methods=["GET", "HEAD"]),
        Route("/{path:path}", static, methods=["GET", "HEAD"]),
    ]
