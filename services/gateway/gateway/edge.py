"""The API pipeline, as raw ASGI: the stages of :mod:`gateway.stages`, composed in one place.

:meth:`Edge._handle` reads top to bottom as the request travels: what is asked (preflight, target,
route, credentials) → who asks (authenticate) → may they (authorize, rate limit, requests in flight)
→ the body → forward. The first stage that answers ends the request; :meth:`Edge._answer` turns that
answer into the response — an RFC 9457 problem document, with the RFC 6750 ``WWW-Authenticate``
challenge on 401/403 — and counts and audits it (:mod:`gateway.denials`). A request admitted in
flight holds its place until :meth:`Edge.finish`.

This is the gateway's hot path, so it avoids per-request framework objects: one pass over the
headers, the verified-token cache, a local rate-limit decision, one pooled upstream request. A
request with a cached token and no body never suspends: :meth:`Edge.decide` sends it upstream from
the HTTP parser's callback and :mod:`gateway.serving` relays the answer from the upstream's; the
coroutine path (:meth:`Edge.serve`) is for everything else, and for servers other than the gateway's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import Any

from starlette.types import Receive, Scope, Send
from svckit.clock import SYSTEM_CLOCK, Clock
from svckit.context import request_id_var
from svckit.dpop import ProofVerifier, ReplayGuard
from svckit.problems import PROBLEM_JSON, problem_body

from . import metrics
from .accesslog import AccessLog
from .cors import VARY, Cors
from .denials import DenialAuditor
from .forwarded import ForwardedHeaders
from .proxy import Exchange, Forwarder, UpstreamBrokeOff
from .ratelimit import RateLimiter
from .request import (
    REALM,
    UNMATCHED,
    Answer,
    ApiRequest,
    ConnectionMemo,
    Refusal,
    Reply,
    challenge,
    dpop_challenge,
)
from .routes import RouteTable
from .stages import (
    _IDENTITY_PREFIX,
    NOT_PRINTABLE_DETAIL,
    Authenticate,
    Body,
    Credentials,
    Forward,
    InFlight,
    Possession,
    Preflight,
    RateLimit,
    Router,
    authorize,
    check_target,
)
from .tokens import TokenVerifier

__all__ = ["NOT_PRINTABLE_DETAIL", "REALM", "UNMATCHED", "_IDENTITY_PREFIX", "Edge", "challenge"]

log = logging.getLogger("gateway.edge")

#: where :meth:`Edge.serve` resumes a request that :meth:`Edge.decide` did not finish
START = 0
FORWARD = 1

_PROBLEM_HEAD = ((b"content-type", PROBLEM_JSON.encode()), (b"cache-control", b"no-store"))


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
        max_in_flight_per_subject: int = 0,
        request_body_budget: int = 0,
        proofs: ProofVerifier | None = None,
        replays: ReplayGuard | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        # DPoP: the defaults check proofs with the kit's settings and remember jtis in process only
        if proofs is None:
            proofs = ProofVerifier(clock=clock)
        if replays is None:
            replays = ReplayGuard(None, "dpop", proofs.window_seconds, clock=clock)
        self.cors = cors
        self.auditor = auditor
        self.metrics = request_metrics
        self.access_log = access_log
        # the stages, in the order _handle runs them
        self.preflight = Preflight(cors, routes)
        self.router = Router(routes)
        self.credentials = Credentials(forwarded)
        self.authenticate = Authenticate(
            verifier, limiter, dpop_challenge(" ".join(proofs.algorithms).encode())
        )
        self.possession = Possession(proofs, replays, self.authenticate)
        self.rate_limit = RateLimit(limiter)
        self.in_flight = InFlight(max_in_flight_per_subject)
        self.body = Body(max_body_bytes, request_body_budget)
        self.forward = Forward(forwarder, max_body_bytes, clock)
        self._auth_failures: dict[str, Any] = {}

    # --- the pipeline ---------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.serve(self.begin(scope), receive, send)

    def begin(self, scope: Scope, memo: ConnectionMemo | None = None) -> ApiRequest:
        """The request as the stages see it, its clock started and its base response headers set;
        ``memo``: the client connection's (:class:`ConnectionMemo`), if the server keeps one."""
        started = time.perf_counter()
        request = ApiRequest(scope, memo)
        request.started = started
        origin = request.origin
        request.base_headers = (
            [(b"x-request-id", request.request_id.encode()), VARY]
            if origin is None
            else [(b"x-request-id", request.request_id.encode()), *self.cors.response_headers(origin)]
        )
        return request

    async def serve(
        self,
        request: ApiRequest,
        receive: Receive,
        send: Send,
        resume: Answer | Exchange | int = 0,
    ) -> None:
        """The pipeline for a request from :meth:`begin`, with its last-resort answer, metrics and
        access line; ``resume``: where :meth:`decide` left it (an answer to send, :data:`FORWARD`,
        or an exchange already sent upstream), else from the start."""
        context = request_id_var.set(request.request_id)
        try:
            if resume == START:
                await self._handle(request, receive, send)
            else:
                answer = (
                    resume
                    if isinstance(resume, Refusal | Reply)
                    else await self.forward(request, send, resume if isinstance(resume, Exchange) else None)
                )
                if answer is not None:
                    await self._answer(send, request, answer)
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
            self.finish(request)
            request_id_var.reset(context)

    def finish(self, request: ApiRequest) -> None:
        """The request's place in flight and its body's room given back, its metrics and access line,
        once it has been answered (every request ends here, exactly once: :meth:`serve`, or the
        callback relay)."""
        self.in_flight.release(request)
        self.body.release(request)
        elapsed = time.perf_counter() - request.started
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

    async def _handle(self, request: ApiRequest, receive: Receive, send: Send) -> None:
        """The stages, top to bottom; the first one that answers ends the request."""
        # what is asked, and by whom — no I/O
        answer = (
            self.preflight(request)
            or check_target(request)
            or self.router(request)
            or self.credentials(request)
        )
        # verify: a cached token costs no suspension; anything else is an anonymous caller until verified
        if answer is None and not self.authenticate.cached(request):
            answer = self.authenticate.anonymous_budget(request) or await self.authenticate.verify(request)
        # proof of possession: only DPoP requests (and bound tokens, and where DPoP is required) pay
        if answer is None and Possession.needed(request):
            answer = await self.possession(request)
        # authorize, then admit: requests per window, then in flight (counted until finish)
        if answer is None:
            answer = (
                authorize(request)
                or self.rate_limit(request)
                or self.in_flight(request)
                or self.body.check(request, receive)
            )
        if answer is None and request.read_body:
            answer = await self.body.read(request, receive)
        # forward
        if answer is None:
            answer = await self.forward(request, send)
        if answer is not None:
            await self._answer(send, request, answer)

    def decide(self, request: ApiRequest, receive: Receive) -> Answer | Exchange | int:
        """:meth:`_handle` as far as it goes without suspending, for the callback path of
        :mod:`gateway.serving`: an :class:`Exchange` already sent upstream (a cached bearer token,
        allowed, no body, an idle upstream connection: the hot path), or where :meth:`serve` must
        take over — an answer to send, :data:`FORWARD` (no idle connection), :data:`START` (a token
        to verify, a proof to check, a body to read: the stages before the rate limit run again,
        which they may, as they change nothing but the request; should this fail after admitting
        the request in flight, a bug, :class:`InFlight` sees it admitted and does not count it twice).

        The stages run in :meth:`_handle`'s order and answer the same; the one difference is that
        the body's framing is looked at before the rate limit instead of after it, and only to send
        a request that has a body, or a framing to refuse, to :meth:`_handle` from the start.
        """
        answer = (
            self.preflight(request)
            or check_target(request)
            or self.router(request)
            or self.credentials(request)
        )
        if answer is not None:
            return answer
        if not self.authenticate.cached(request) or Possession.needed(request):
            return START
        if self.body.check(request, receive) is not None or request.read_body:
            return START
        answer = authorize(request) or self.rate_limit(request) or self.in_flight(request)
        if answer is not None:
            return answer
        return self.forward.start(request) or FORWARD

    # --- answers --------------------------------------------------------------------------------

    async def _answer(self, send: Send, request: ApiRequest, answer: Answer) -> None:
        """Send a stage's answer; count an authentication failure, audit a denial."""
        request.status = answer.status
        if isinstance(answer, Reply):
            headers = [request.base_headers[0], *answer.headers]
            await send({"type": "http.response.start", "status": answer.status, "headers": headers})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        if answer.silent:
            return
        if answer.failure:
            self._count_failure(answer.reason)
        if answer.audit and self.auditor is not None:
            self._audit(request, answer)
        base = request.base_headers if answer.cors else request.base_headers[:1]
        extensions: dict[str, Any] = {}
        if answer.reason:
            extensions["reason"] = answer.reason
        if answer.required_scope:
            extensions["required_scope"] = answer.required_scope
        if answer.outcome:
            extensions["outcome"] = answer.outcome
        await self._problem(
            send, answer.status, answer.detail, [*base, *answer.headers], answer.title, **extensions
        )

    def _audit(self, request: ApiRequest, refusal: Refusal) -> None:
        assert self.auditor is not None
        principal = request.principal
        identity = principal.identity if principal is not None else None
        if refusal.audit == "each":
            self.auditor.record(
                status=refusal.status,
                reason=refusal.reason,
                route=request.route,
                method=request.method,
                request_id=request.request_id,
                identity=identity,
                client_ip=request.client_ip,
                required_scope=refusal.required_scope,
            )
        else:
            self.auditor.aggregate(
                status=refusal.status,
                reason=refusal.reason,
                route=request.route,
                method=request.method,
                request_id=request.request_id,
                identity=identity,
                address=request.client_ip,
            )

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
                "headers": [*_PROBLEM_HEAD, (b"content-length", str(len(body)).encode()), *headers],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})
