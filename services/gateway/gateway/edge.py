"""The API pipeline, as raw ASGI: preflight → path safety → route → token → scopes → rate limit → forward.

This is the gateway's hot path, so it avoids per-request framework objects: one pass over the
headers, the verified-token cache, a local rate-limit decision, one pooled upstream request. Every
refusal is an RFC 9457 problem document; 401/403 carry the RFC 6750 ``WWW-Authenticate`` challenge,
and 401/403/429 are queued for the audit trail (:mod:`gateway.denials`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import time
from typing import Any

from starlette.types import Receive, Scope, Send
from svckit.context import is_valid_request_id, request_id_var
from svckit.identity import PREFIX as IDENTITY_PREFIX
from svckit.identity import Identity
from svckit.problems import PROBLEM_JSON, problem_body

from . import metrics
from .accesslog import AccessLog
from .cors import Cors
from .denials import DenialAuditor
from .forwarded import ForwardedHeaders, Forwarding
from .proxy import (
    NO_BODY_METHODS,
    SMALL_BODY,
    STRIPPED_INBOUND,
    BodyStream,
    BodyTooLarge,
    ClientGone,
    Forwarder,
    UpstreamBrokeOff,
    UpstreamFailure,
    read_body,
)
from .ratelimit import RateLimiter
from .routes import API_PREFIX, Route, RouteTable, unsafe_path
from .tokens import Principal, TokenError, TokenVerifier

log = logging.getLogger("gateway.edge")

REALM = "timesheets"
# Request ids need to be unique, not secret: a Mersenne Twister seeded from os.urandom, re-seeded in
# forked children so that two workers never share a sequence
_rng = random.Random()
os.register_at_fork(after_in_child=_rng.seed)
_random_bits = _rng.getrandbits
UNMATCHED = "unmatched"
_IDENTITY_PREFIX = IDENTITY_PREFIX.encode()
_NOT_PRINTABLE = re.compile(rb"[^\x21-\x7e]")  # raw bytes beyond ASCII would sign differently
NOT_PRINTABLE_DETAIL = "The request target must be printable ASCII; percent-encode the rest."
_DESCRIPTION_SAFE = frozenset(range(0x20, 0x7F)) - {0x22, 0x5C}


def challenge(error: str = "", description: str = "", scope: str = "") -> bytes:
    """An RFC 6750 §3 ``WWW-Authenticate`` value (quoted strings restricted to safe characters)."""
    parts = [f'Bearer realm="{REALM}"']
    if error:
        parts.append(f'error="{error}"')
    if description:
        safe = "".join(ch for ch in description if ord(ch) in _DESCRIPTION_SAFE)
        parts.append(f'error_description="{safe}"')
    if scope:
        parts.append(f'scope="{scope}"')
    return ", ".join(parts).encode()


class Edge:
    def __init__(
        self,
        *,
        routes: RouteTable,
        verifier: TokenVerifier,
        forwarder: Forwarder,
        cors: Cors,
        limiter: RateLimiter | None,
        auditor: DenialAuditor | None,
        request_metrics: metrics.RequestMetrics,
        max_body_bytes: int,
        access_log: AccessLog | None,
        forwarded: ForwardedHeaders,
    ) -> None:
        self.routes = routes
        self.verifier = verifier
        self.forwarder = forwarder
        self.cors = cors
        self.limiter = limiter
        self.auditor = auditor
        self.metrics = request_metrics
        self.max_body = max_body_bytes
        self.access_log = access_log
        self.forwarded = forwarded
        self._auth_failures: dict[str, Any] = {}

    # --- helpers --------------------------------------------------------------------------------

    def _count_failure(self, reason: str) -> None:
        child = self._auth_failures.get(reason)
        if child is None:
            child = self._auth_failures[reason] = metrics.auth_failures.labels(reason)
        child.inc()

    @staticmethod
    async def _problem(
        send: Send,
        status: int,
        detail: str,
        headers: list[tuple[bytes, bytes]],
        title: str | None = None,
        **extensions: Any,
    ) -> None:
        body = json.dumps(problem_body(status, title, detail, **extensions)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", PROBLEM_JSON.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"),
                    *headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})

    # --- the pipeline ---------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request = _Request(scope)
        context = request_id_var.set(request.request_id)
        try:
            await self._handle(request, scope, receive, send)
        except UpstreamBrokeOff:
            request.status = 502  # the client got a head and a truncated body; already logged
        except Exception:
            # a bug must still answer as a problem document (if nothing was sent yet), never a trace
            log.exception("unhandled error in the API pipeline", extra={"route": request.route})
            request.status = 500
            with contextlib.suppress(Exception):  # the response may already have started
                await self._problem(
                    send, 500, "An unexpected error occurred; it has been logged.", request.base_headers
                )
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.observe(request.route, request.method, request.status, elapsed)
            if self.access_log is not None:
                self.access_log.record(
                    method=request.method,
                    route=request.route,
                    status=request.status,
                    seconds=elapsed,
                    request_id=request.request_id,
                    subject=request.subject,
                    client_id=request.client_id,
                )
            request_id_var.reset(context)

    async def _handle(self, request: _Request, scope: Scope, receive: Receive, send: Send) -> None:
        method = request.method
        path: str = scope["path"]
        raw_path: bytes = scope.get("raw_path") or path.encode()
        query: bytes = scope.get("query_string", b"")
        base_headers = request.base_headers = [
            (b"x-request-id", request.request_id.encode()),
            *self.cors.response_headers(request.origin),
        ]

        # CORS preflight: answered here, never forwarded.
        if method == "OPTIONS" and request.acr_method is not None:
            methods = self.routes.methods_for(path) if not unsafe_path(raw_path.decode("latin-1")) else ()
            allow, why = self.cors.preflight(request.origin, request.acr_method, request.acr_headers, methods)
            request.route = "preflight"
            if allow is None:
                request.status = 403
                await self._problem(
                    send, 403, why, [base_headers[0], (b"vary", b"Origin")], "CORS Preflight Refused"
                )
                return
            request.status = 204
            await send({"type": "http.response.start", "status": 204, "headers": [base_headers[0], *allow]})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return

        # --- path safety and routing ----------------------------------------------------------------
        if _NOT_PRINTABLE.search(raw_path) or _NOT_PRINTABLE.search(query):
            request.status = 400
            await self._problem(send, 400, NOT_PRINTABLE_DETAIL, base_headers)
            return
        if unsafe_path(raw_path.decode("ascii")):
            request.status = 400
            await self._problem(
                send, 400, "The path contains encoded separators or dot segments.", base_headers
            )
            return
        match = self.routes.match(method, path)
        route = match.route
        if route is None:
            if match.allowed_methods:
                request.status = 405
                allow_header = (b"allow", ", ".join(match.allowed_methods).encode())
                await self._problem(
                    send, 405, f"{method} is not allowed here.", [*base_headers, allow_header]
                )
            else:
                request.status = 404
                await self._problem(send, 404, "No API route matches this path.", base_headers)
            return
        request.route = route.template
        if b"access_token=" in query:
            request.status = 400
            await self._problem(
                send,
                400,
                "Access tokens are accepted only in the Authorization header.",
                [*base_headers, (b"www-authenticate", challenge("invalid_request", "token in query"))],
            )
            return

        # --- authentication ---------------------------------------------------------------------
        forwarding = self.forwarded.resolve(
            _peer(scope),
            scope.get("scheme", "http"),
            request.host,
            request.xff,
            request.xf_proto,
            request.xf_host,
        )
        request.client_ip = forwarding.client_ip
        authorization = request.authorization
        if len(authorization) > 1:
            request.status = 400
            self._count_failure("malformed")
            await self._problem(
                send,
                400,
                "Send exactly one Authorization header.",
                [
                    *base_headers,
                    (b"www-authenticate", challenge("invalid_request", "multiple Authorization headers")),
                ],
            )
            return
        token = ""
        if authorization:
            scheme, _, credentials = authorization[0].decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                token = credentials.strip()
                if not token:
                    token = "\0"  # noqa: S105 - "Bearer" with nothing after it: a malformed token, not a missing one
        if not token:
            self._count_failure("missing_token")
            await self._deny(
                send,
                request,
                route,
                None,
                status=401,
                reason="missing_token",
                detail="This API needs a bearer access token.",
                www=challenge(),
            )
            return
        try:
            principal = self.verifier.cached(token) or await self.verifier.verify(token)
        except TokenError as exc:
            self._count_failure(exc.reason)
            if exc.status == 503:
                request.status = 503
                await self._problem(send, 503, exc.description, [*base_headers, (b"retry-after", b"5")])
                return
            await self._deny(
                send,
                request,
                route,
                None,
                status=401,
                reason=exc.reason,
                detail=exc.description,
                www=challenge("invalid_token", exc.description),
            )
            return
        identity = principal.identity
        request.subject = identity.subject
        request.client_id = identity.client_id

        # --- authorization ----------------------------------------------------------------------
        if not route.allows(identity.scopes):
            self._count_failure("insufficient_scope")
            needed = route.scope_text
            await self._deny(
                send,
                request,
                route,
                identity,
                status=403,
                reason="insufficient_scope",
                detail=f"This route needs the scope{'s' if len(route.scopes) > 1 else ''} "
                f"{needed}{' (any of them)' if route.require == 'any' and len(route.scopes) > 1 else ''}.",
                www=challenge("insufficient_scope", "The token lacks a required scope.", needed),
                required_scope=needed,
            )
            return

        # --- rate limits ------------------------------------------------------------------------
        if self.limiter is not None:
            decision = self.limiter.check(principal.subject_key, principal.client_key)
            if not decision.allowed:
                await self._deny(
                    send,
                    request,
                    route,
                    identity,
                    status=429,
                    reason=f"rate_limit_{decision.limit}",
                    detail=f"Too many requests for this {decision.limit}; retry in {decision.retry_after} s.",
                    extra=[(b"retry-after", str(decision.retry_after).encode())],
                )
                return

        # --- body -------------------------------------------------------------------------------
        body: bytes | BodyStream | None = None
        length = -1
        if request.content_length is not None:
            try:
                length = int(request.content_length)
                if length < 0:
                    raise ValueError
            except ValueError:
                request.status = 400
                await self._problem(send, 400, "The Content-Length header is not a number.", base_headers)
                return
            if length > self.max_body:
                request.status = 413
                await self._problem(
                    send, 413, f"The request body exceeds {self.max_body} bytes.", base_headers
                )
                return
        try:
            if length > SMALL_BODY:
                body = BodyStream(receive, self.max_body)  # known to be large: streamed from the start
            elif length > 0 or request.chunked or method not in NO_BODY_METHODS:
                body = await read_body(receive, self.max_body, stream_above=SMALL_BODY)
        except BodyTooLarge:
            request.status = 413
            await self._problem(send, 413, f"The request body exceeds {self.max_body} bytes.", base_headers)
            return
        except ClientGone:
            request.status = 499
            return

        # --- forward ----------------------------------------------------------------------------
        target = raw_path[len(API_PREFIX) :]
        if query:
            target = target + b"?" + query
        headers, signed = self._upstream_headers(scope, request, principal, target, forwarding)

        def on_status(status: int) -> None:
            request.status = status

        try:
            await self.forwarder.forward(
                service=route.upstream,
                method=method,
                target=target,
                headers=headers,
                signed=signed,
                body=body,
                send=send,
                extra_response_headers=base_headers,
                on_status=on_status,
            )
        except BodyTooLarge:
            request.status = 413
            await self._problem(send, 413, f"The request body exceeds {self.max_body} bytes.", base_headers)
        except ClientGone:
            request.status = 499
        except UpstreamFailure as exc:
            request.status = exc.status
            extra = [] if exc.status == 504 else [(b"retry-after", b"2")]
            await self._problem(send, exc.status, exc.detail, [*base_headers, *extra])

    @staticmethod
    def _upstream_headers(
        scope: Scope, request: _Request, principal: Principal, target: bytes, forwarding: Forwarding
    ) -> tuple[list[tuple[bytes, bytes]], bytes]:
        """The client's end-to-end headers plus the forwarding ones, and the signed identity block."""
        dropped = STRIPPED_INBOUND
        if request.connection is not None:
            dropped = dropped | frozenset(token.strip().lower() for token in request.connection.split(b","))
        headers = [
            (key, value)
            for key, value in scope["headers"]
            if key not in dropped and not key.startswith(_IDENTITY_PREFIX)
        ]
        headers.append((b"x-forwarded-for", forwarding.forwarded_for))
        headers.append((b"x-forwarded-proto", forwarding.proto))
        if forwarding.host is not None:
            headers.append((b"x-forwarded-host", forwarding.host))
        signed = principal.signed.header_block(
            method=request.method,
            target=target,
            request_id=request.base_headers[0][1],
            timestamp=str(int(time.time())).encode(),
        )
        return headers, signed

    async def _deny(
        self,
        send: Send,
        request: _Request,
        route: Route,
        identity: Identity | None,
        *,
        status: int,
        reason: str,
        detail: str,
        www: bytes | None = None,
        extra: list[tuple[bytes, bytes]] | None = None,
        required_scope: str = "",
    ) -> None:
        """Answer 401/403/429 as a problem document and queue the denial for the audit trail."""
        request.status = status
        headers = [*request.base_headers, *(extra or [])]
        if www is not None:
            headers.append((b"www-authenticate", www))
        if self.auditor is not None:
            self.auditor.record(
                status=status,
                reason=reason,
                route=route.template,
                method=request.method,
                request_id=request.request_id,
                identity=identity,
                client_ip=request.client_ip,
                required_scope=required_scope,
            )
        extensions: dict[str, Any] = {"reason": reason}
        if required_scope:
            extensions["required_scope"] = required_scope
        await self._problem(send, status, detail, headers, **extensions)


class _Request:
    """What the pipeline knows about one request: parsed headers (one pass) and its outcome so far."""

    __slots__ = (
        "acr_headers",
        "acr_method",
        "authorization",
        "base_headers",
        "chunked",
        "client_id",
        "client_ip",
        "connection",
        "content_length",
        "host",
        "method",
        "origin",
        "request_id",
        "route",
        "status",
        "subject",
        "xf_host",
        "xf_proto",
        "xff",
    )

    def __init__(self, scope: Scope) -> None:
        self.method: str = scope["method"]
        self.route = UNMATCHED
        self.status = 500
        self.subject = ""
        self.client_id = ""
        self.client_ip = ""
        self.base_headers: list[tuple[bytes, bytes]] = []
        authorization: list[bytes] = []
        xff: list[bytes] = []
        origin = xf_proto = xf_host = inbound_id = acr_method = acr_headers = host = content_length = (
            connection
        ) = None
        chunked = False
        for key, value in scope["headers"]:
            if key == b"authorization":
                authorization.append(value)
            elif key == b"origin":
                origin = value
            elif key == b"x-request-id":
                inbound_id = value
            elif key == b"host":
                host = value
            elif key == b"content-length":
                content_length = value
            elif key == b"transfer-encoding":
                chunked = True
            elif key == b"connection":
                connection = value
            elif key == b"access-control-request-method":
                acr_method = value
            elif key == b"access-control-request-headers":
                acr_headers = value
            elif key == b"x-forwarded-for":
                xff.append(value)
            elif key == b"x-forwarded-proto":
                xf_proto = value
            elif key == b"x-forwarded-host":
                xf_host = value
        self.authorization = authorization
        self.origin: bytes | None = origin
        self.acr_method: bytes | None = acr_method
        self.acr_headers: bytes | None = acr_headers
        self.host: bytes | None = host
        self.content_length: bytes | None = content_length
        self.connection: bytes | None = connection
        self.chunked = chunked
        self.xff = xff
        self.xf_proto: bytes | None = xf_proto
        self.xf_host: bytes | None = xf_host
        request_id = inbound_id.decode("latin-1") if inbound_id is not None else ""
        if not is_valid_request_id(request_id):
            request_id = f"{_random_bits(128):032x}"  # uuid4().hex costs a syscall per request
        self.request_id = request_id


def _peer(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else ""
