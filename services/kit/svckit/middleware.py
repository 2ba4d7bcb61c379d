"""The kit's layer around every service's routes: request id, access log line, HTTP metrics, a 500
that keeps the connection usable, the body limit and the identity check — one raw-ASGI call.

It was four middlewares (request context, unhandled errors, body limit, identity), each a call of its
own with its own ``send`` wrapper that every response message went through; merged, a request costs
one call and one wrapper. Raw ASGI (not ``BaseHTTPMiddleware``) so streaming bodies pass through
untouched.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .context import is_valid_request_id, new_request_id, request_id_var
from .cycle import BODY_TIMED_OUT
from .identity import IdentityGate, body_too_large
from .metrics import UNMATCHED_ROUTE, observe
from .problems import Problem, unexpected_problem
from .server import refusals

#: bodies up to this size are not counted against the budget: too small to matter, and the hot routes
#: (a timesheet entry, a decision) pay nothing for it
UNCOUNTED_BODY = 64 * 1024
NO_BODY_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})


class BodyBudget:
    """The bytes of request bodies a worker process holds at once (``REQUEST_BODY_BUFFER_BYTES``).

    Why: a service reads a body whole and parses it, and nothing bounded how many it held. The
    timesheets service takes ~35 MiB for each of the largest uploads (16 MiB) it parses at once
    (docs/runbook.md, "Resource limits: where the figures come from"); each gateway worker lets four
    through at once (``GATEWAY_REQUEST_BODY_BUFFER_BYTES``), so more than two gateway workers uploading
    to one timesheets pod (the gateway scales to ten replicas) passed its 384Mi limit, and the kernel
    OOM-killed it (tests/packaging/test_pods_under_limits.py). A body over :data:`UNCOUNTED_BODY`
    (its ``Content-Length``; the body limit when it has none) takes its size here before a byte of it
    is read and gives it back when the request is answered; one that does not fit is answered 503
    ``request_body_budget`` with ``Retry-After`` (nothing of it stored); a body alone always fits, so a
    capacity below the body limit slows the largest bodies down, never refuses them for good.
    ``capacity`` 0: no bound.
    """

    RETRY_AFTER = 2

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held = 0

    def counts(self, size: int) -> bool:
        """A body of ``size`` bytes takes room here (a budget is set and the body is not small)."""
        return bool(self.capacity) and size > UNCOUNTED_BODY

    def hold(self, size: int) -> bool:
        """Room for ``size`` bytes taken (True, also when :meth:`counts` says it takes none)."""
        if self.counts(size):
            if self.held and self.held + size > self.capacity:  # alone, a body always fits
                return False
            self.held += size
        return True

    def give_back(self, size: int) -> None:
        if self.counts(size):
            self.held -= size

    def refused(self) -> Problem:
        return Problem(
            503,
            "Service Unavailable",
            "The service is holding as many request bodies as its memory allows; nothing was stored. "
            f"Retry in {self.RETRY_AFTER} s.",
            headers={"Retry-After": str(self.RETRY_AFTER)},
            reason="request_body_budget",
            outcome="not_stored",
        )


access_log = logging.getLogger("access")

QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

#: An exception handler as Starlette takes them: ``(request, exc) -> Response`` (or its awaitable).
Handler = Callable[[Request, Exception], Any]


def route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE


class ServiceFront:
    """Around every request, in this order:

    * **request context**: the inbound ``X-Request-Id`` when well formed, else a new one, in the
      context (log lines, outbound calls), in ``scope["state"]`` and on the response; when the
      request is over, its metrics (route template, method, status, duration) and one access log line
      (not for ``/healthz``, ``/readyz``, ``/metrics``);
    * **unhandled errors**: an exception before the response started is answered with a 500 problem
      *and the connection stays usable* (Starlette's outermost error middleware sends its 500 and then
      re-raises, and uvicorn closes a connection whose application raised, without ``Connection:
      close`` on the response: a keep-alive client such as the gateway's pool then sends its next
      request, possibly another user's, into a closing socket). An exception after the response
      started (a broken stream) still propagates, so the server ends the connection and the client
      sees the truncation;
    * **body budget**: a large body's room among those the worker holds (:class:`BodyBudget`), else
      503 ``request_body_budget``;
    * **body limit**: 413 as a problem document, up front from ``Content-Length``, or as soon as a
      chunked body grows past ``max_body_size`` (the body is counted only when it has no length:
      the HTTP parser delivers exactly ``Content-Length`` bytes);
    * **identity** (``gate``; none for services that verify nobody): see
      :class:`svckit.identity.IdentityGate`; its open paths skip it;
    * **direct routes** (``direct``): a service's busiest routes whose endpoint is a raw ASGI app are
      called from here, after the checks above, instead of through Starlette's exception middleware,
      router and route (the same route object is in the router too, for what does not match here).
      An exception they raise is answered by the app's handlers (``handlers``, by class, as
      Starlette looks them up), so the answers are the router's. A route with path parameters
      (``/approvals/{id}``) is matched as the router matches it (``Route.matches``: the same
      ``path_params`` in the scope), after the routes without; it must not be shadowed by a route
      the router would try first.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_body_size: int,
        gate: IdentityGate | None = None,
        direct: Sequence[Route] = (),
        handlers: Mapping[Any, Handler] | None = None,
        body_budget: int = 0,
    ) -> None:
        self.app = app
        self.max_body_size = max_body_size
        self.bodies = BodyBudget(body_budget)
        self.gate = gate
        self.open_paths = gate.open_paths if gate is not None else frozenset()
        if gate is not None:
            gate.max_body_size = max_body_size
        # without path parameters by (method, path): a path may have a direct route per method (a list
        # and a create); with them (``/approvals/{id}``) matched as the router matches them
        self.direct: dict[tuple[str, str], Route] = {}
        self.patterns = [route for route in direct if route.param_convertors]
        for route in direct:
            assert route.methods, "a direct route names its methods"
            if not route.param_convertors:
                for method in route.methods:
                    self.direct[(method, route.path)] = route
        self._direct_ids = frozenset(id(route) for route in direct)
        self.handlers: dict[Any, Handler] = dict(handlers or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        inbound = None
        length = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                if inbound is None:
                    inbound = value.decode("latin-1")
            elif key == b"content-length" and length is None:
                length = value
        request_id = inbound if inbound is not None and is_valid_request_id(inbound) else new_request_id()
        token = request_id_var.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        response_started = False
        request_id_header = (b"x-request-id", request_id.encode())
        # the client left before any answer began (None: it did not): "client_gone", or "body_timeout"
        # (its body stopped arriving: the HTTP layer answered 408); what is sent after it is dropped
        gone: str | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [*message.get("headers", ()), request_id_header]
            await send(message)

        async def receive_noting() -> Message:
            nonlocal gone
            message = await receive()
            if message["type"] == "http.disconnect" and not response_started:
                gone = "body_timeout" if message.get(BODY_TIMED_OUT) else "client_gone"
            return message

        try:
            try:
                await self._serve(scope, receive_noting, send_with_id, length)
            except Exception as exc:
                if response_started:
                    raise
                if gone is not None and isinstance(exc, ClientDisconnect):
                    return  # nothing to answer: no one is there (counted below)
                handler = self._handler(exc) if self._served_directly(scope) else None
                if handler is None:
                    await unexpected_problem(exc)(scope, receive, send_with_id)
                else:
                    response = handler(Request(scope, receive), exc)
                    if inspect.isawaitable(response):
                        response = await response
                    await response(scope, receive, send_with_id)
        finally:
            if gone is not None:
                # The client left before an answer began: whatever was sent after it was dropped, and
                # no failure of the service's (never a 500, never an error line). Counted as the kit
                # counts such a client elsewhere, not in http_requests_total: closed, with the requests
                # dropped unserved (http_requests_abandoned_total); timed out, the HTTP layer's 408.
                if gone == "client_gone":
                    refusals.left_mid_request()
            else:
                self._record(scope, status, started)
            request_id_var.reset(token)

    @staticmethod
    def _record(scope: Scope, status: int, started: float) -> None:
        """The request's series in the HTTP metrics and its access log line."""
        elapsed = time.perf_counter() - started
        route = route_template(scope)
        method = scope["method"]
        observe(route, method, status, elapsed)
        if access_log.isEnabledFor(logging.INFO) and scope["path"] not in QUIET_PATHS:
            access_log.info(
                "%s %s %d",
                method,
                route,
                status,
                extra={
                    "method": method,
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )

    def _served_directly(self, scope: Scope) -> bool:
        return id(scope.get("route")) in self._direct_ids

    def _handler(self, exc: Exception) -> Handler | None:
        for cls in type(exc).__mro__:
            if cls in self.handlers:
                return self.handlers[cls]
        return None

    def _app_for(self, scope: Scope) -> ASGIApp:
        """The direct route's endpoint for this request (noted in the scope as the router would), or
        the application."""
        route = self.direct.get((scope["method"], scope["path"])) if self.direct else None
        if route is None:
            for pattern in self.patterns:
                match, child = pattern.matches(scope)
                if match is Match.FULL:
                    scope.update(child)  # endpoint and path_params, as the router sets them
                    scope["route"] = pattern
                    return pattern.app
            return self.app
        scope["route"] = route
        scope["endpoint"] = route.endpoint
        return route.app

    async def _serve(self, scope: Scope, receive: Receive, send: Send, length: bytes | None) -> None:
        limit = self.max_body_size
        if length is not None and (not length.isdigit() or int(length) > limit):
            await body_too_large(limit).response()(scope, receive, send)
            return
        size = int(length) if length is not None else 0
        if length is None and self.bodies.capacity and scope["method"] not in NO_BODY_METHODS:
            # a body without a length (chunked) may be as large as the limit
            size = limit if any(k == b"transfer-encoding" for k, _ in scope["headers"]) else 0
        if not self.bodies.hold(size):
            await self.bodies.refused().response()(scope, receive, send)
            return
        try:
            await self._serve_held(scope, receive, send, length, limit)
        finally:
            self.bodies.give_back(size)

    async def _serve_held(
        self, scope: Scope, receive: Receive, send: Send, length: bytes | None, limit: int
    ) -> None:
        if self.gate is not None and scope["path"] not in self.open_paths:
            admitted = await self.gate.admit(scope, receive, send)  # reads the body within the limit
            if admitted is not None:
                await self._app_for(scope)(scope, admitted, send)
            return
        if length is not None:
            await self._app_for(scope)(scope, receive, send)
            return
        total = 0

        async def limited_receive() -> Message:
            nonlocal total
            message = await receive()
            if message["type"] == "http.request":
                total += len(message.get("body", b""))
                if total > limit:
                    raise body_too_large(limit)
            return message

        await self._app_for(scope)(scope, limited_receive, send)
