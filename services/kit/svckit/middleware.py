"""The outermost middleware: request id, access log line, HTTP metrics.

Written as raw ASGI (not ``BaseHTTPMiddleware``) so streaming bodies pass through untouched and
the per-request overhead stays a few microseconds.
"""

from __future__ import annotations

import logging
import time

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .context import is_valid_request_id, new_request_id, request_id_var
from .metrics import UNMATCHED_ROUTE, observe
from .problems import Problem, problem_response, unexpected_problem

access_log = logging.getLogger("access")

QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        inbound = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                inbound = value.decode("latin-1")
                break
        request_id = inbound if inbound is not None and is_valid_request_id(inbound) else new_request_id()
        token = request_id_var.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = route_template(scope)
            observe(route, scope["method"], status, elapsed)
            if scope["path"] not in QUIET_PATHS:
                access_log.info(
                    "%s %s %d",
                    scope["method"],
                    route,
                    status,
                    extra={
                        "method": scope["method"],
                        "route": route,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 2),
                    },
                )
            request_id_var.reset(token)


class UnhandledErrorMiddleware:
    """Answers an unexpected exception with a 500 problem *and keeps the connection usable*.

    Starlette's outermost error middleware sends its 500 and then re-raises, and uvicorn closes a
    connection whose application raised, without ``Connection: close`` on the response: a
    keep-alive client (the gateway's pool) then sends its next request, possibly another user's,
    into a closing socket. Handled here instead, nothing propagates after a complete response; an
    exception after the response started (a broken stream) still propagates, so the server ends
    the connection and the client sees the truncation.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                raise
            await unexpected_problem(exc)(scope, receive, send)


class BodyLimitMiddleware:
    """413 as a problem document: up front from ``Content-Length``, or while a chunked body streams in."""

    def __init__(self, app: ASGIApp, max_body_size: int) -> None:
        self.app = app
        self.max_body_size = max_body_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope["headers"]:
            if key == b"content-length":
                if not value.isdigit() or int(value) > self.max_body_size:
                    await self._too_large()(scope, receive, send)
                    return
                break
        total = 0

        async def limited_receive() -> Message:
            nonlocal total
            message = await receive()
            if message["type"] == "http.request":
                total += len(message.get("body", b""))
                if total > self.max_body_size:
                    raise Problem(413, "Content Too Large", self._detail())
            return message

        await self.app(scope, limited_receive, send)

    def _detail(self) -> str:
        return f"The request body is larger than {self.max_body_size} bytes."

    def _too_large(self) -> Response:
        return problem_response(413, "Content Too Large", self._detail())
