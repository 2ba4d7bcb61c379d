"""The stages of an API request, each a small unit with one job (composed in :mod:`gateway.edge`).

A stage looks at an :class:`ApiRequest`, records what it learnt on it (the route, the caller's
address and token, the verified principal, the body) and returns ``None`` to let the request go on,
or an answer that ends it: a :class:`Refusal` (a problem document, possibly a denial for the audit
trail) or a :class:`Reply` (the preflight's 204). Most stages are plain functions or synchronous
methods — on the hot path (a verified-token cache hit, no body) nothing here suspends, and nothing
is allocated beyond what the request needs anyway; refusals are built only when refusing.

In order (``Edge._handle`` reads the same, top to bottom):

1. :class:`Preflight` — CORS preflights are answered here and never forwarded;
2. :func:`check_target` — the request target is printable ASCII, literally under ``/api/`` (no
   percent-encoded letters in the prefix), with no encoded separators or dot segments — so the path
   the gateway routes and authorizes is byte for byte the path it forwards;
3. :class:`Router` — the route table, on that same raw path (404 / 405);
4. :class:`Credentials` — who is asking: the client address (through the trusted proxies) and the
   bearer token (one ``Authorization`` header, never in the query);
5. :class:`Authenticate` — a verified-token cache hit, else the per-address budget of anonymous
   denials (429 before any verification work), else the signature and the claims (401 / 503);
   :class:`Possession` — for requests that use DPoP (or must), the proof of possession of the key the
   token is bound to (401 ``invalid_dpop_proof`` / ``use_dpop_nonce``); bearer requests skip it;
6. :func:`authorize` — the route's scopes (403);
7. :class:`RateLimit` — per subject and per client (429);
   :class:`InFlight` — per subject, the requests this worker is still answering (429): counted until
   the answer has been handed over (:meth:`Edge.finish` gives the place back);
8. :class:`Body` — ``Content-Length`` (400 / 413), then the body itself (read whole when small);
9. :class:`Forward` — the signed identity and the forwarding headers, the upstream's answer
   streamed back (upstream failures become 502 / 503 / 504).
"""

from __future__ import annotations

from starlette.types import Receive, Send
from svckit.clock import SYSTEM_CLOCK, Clock
from svckit.dpop import ProofError, ProofVerifier, ReplayGuard, request_url
from svckit.identity import EMPTY_DIGEST, content_digest, new_nonce
from svckit.identity import PREFIX as IDENTITY_PREFIX
from svckit.middleware import BodyBudget

from . import metrics
from .cors import Cors
from .forwarded import ForwardedHeaders
from .proxy import (
    NO_BODY_METHODS,
    STRIPPED_INBOUND,
    BodyStream,
    BodyTooLarge,
    ClientGone,
    Exchange,
    Forwarder,
    UpstreamFailure,
    read_body,
)
from .ratelimit import Decision, RateLimiter
from .request import GONE, Answer, ApiRequest, Refusal, Reply, challenge, dpop_challenge
from .routes import API_PREFIX, RouteTable, unsafe_path
from .tokens import TOKEN_CLOCK_SKEW, TokenError, TokenVerifier

_IDENTITY_PREFIX = IDENTITY_PREFIX.encode()
_EMPTY_DIGEST = EMPTY_DIGEST.encode()
_PRINTABLE = bytes(range(0x21, 0x7F))  # raw bytes beyond ASCII would sign differently


def _not_printable(raw: bytes) -> bool:
    """Any byte outside ``\\x21-\\x7e`` (what is left once the printable ones are deleted: a C loop,
    several times faster than a regular expression on the hot path)."""
    return bool(raw.translate(None, _PRINTABLE))


NOT_PRINTABLE_DETAIL = "The request target must be printable ASCII; percent-encode the rest."
_API_LITERAL = API_PREFIX + "/"


# --- 1. preflight --------------------------------------------------------------------------------


class Preflight:
    """``OPTIONS`` with ``Access-Control-Request-Method``: 204 with allow headers, or 403."""

    def __init__(self, cors: Cors, routes: RouteTable) -> None:
        self.cors = cors
        self.routes = routes

    def __call__(self, request: ApiRequest) -> Answer | None:
        if request.method != "OPTIONS" or request.acr_method is None:
            return None
        request.route = "preflight"
        path = request.raw_path.decode("latin-1")
        methods = (
            () if _not_printable(request.raw_path) or unsafe_path(path) else self.routes.methods_for(path)
        )
        allow, why = self.cors.preflight(request.origin, request.acr_method, request.acr_headers, methods)
        if allow is None:
            return Refusal(403, why, [(b"vary", b"Origin")], title="CORS Preflight Refused", cors=False)
        return Reply(204, allow)


# --- 2. the target -------------------------------------------------------------------------------


def check_target(request: ApiRequest) -> Refusal | None:
    """The raw target must be printable ASCII, literally under ``/api/``, and unambiguous.

    The gateway routes, authorizes and forwards the *raw* path: a request the gateway would read one
    way and the service another (``/%61pi/…``, ``/api%2Ftimesheets``, ``/api/a/../b``) is refused,
    never normalised and never rewritten.
    """
    raw = request.raw_path
    if _not_printable(raw) or _not_printable(request.query):
        return Refusal(400, NOT_PRINTABLE_DETAIL)
    path = raw.decode("ascii")
    if not path.startswith(_API_LITERAL):
        prefix = path[: len(_API_LITERAL)]
        if "%" in prefix or "\\" in prefix:
            return Refusal(
                400, f"The request target must start with {_API_LITERAL} literally, without percent-encoding."
            )
        return Refusal(404, "No API route matches this path.")
    if unsafe_path(path):
        return Refusal(400, "The path contains encoded separators or dot segments.")
    request.path = path
    return None


# --- 3. the route --------------------------------------------------------------------------------


class Router:
    """The route table, matched on the raw path (404 / 405 + ``Allow``)."""

    def __init__(self, routes: RouteTable) -> None:
        self.routes = routes

    def __call__(self, request: ApiRequest) -> Refusal | None:
        match = self.routes.match(request.method, request.path)
        route = match.route
        if route is None:
            if match.allowed_methods:
                allow = (b"allow", ", ".join(match.allowed_methods).encode())
                return Refusal(405, f"{request.method} is not allowed here.", [allow])
            return Refusal(404, "No API route matches this path.")
        request.matched = route
        request.route = route.template
        return None


# --- 4. the caller's credentials -----------------------------------------------------------------


class Credentials:
    """The client address (through the trusted proxies) and the access token, from the header only:
    ``Authorization: Bearer …`` or ``Authorization: DPoP …`` (RFC 9449 §7.1, checked by
    :class:`Possession`)."""

    def __init__(self, forwarded: ForwardedHeaders) -> None:
        self.forwarded = forwarded

    def __call__(self, request: ApiRequest) -> Refusal | None:
        memo = request.memo
        if memo is not None and memo.forwarding is not None and memo.host == request.host:
            forwarding = memo.forwarding  # kept only where it depends on the peer and Host alone
        else:
            scope = request.scope
            client = scope.get("client")
            forwarding = self.forwarded.resolve(
                str(client[0]) if client else "",
                scope.get("scheme", "http"),
                request.host,
                request.xff,
                request.xf_proto,
                request.xf_host,
                request.forwarded,
            )
            if memo is not None and self.forwarded.direct_only:
                memo.host, memo.forwarding = request.host, forwarding
        request.forwarding = forwarding
        request.client_ip = forwarding.client_ip
        if b"access_token=" in request.query:
            return Refusal(
                400,
                "Access tokens are accepted only in the Authorization header.",
                [(b"www-authenticate", challenge("invalid_request", "token in query"))],
                reason="malformed",
                failure=True,
                audit="aggregate",
            )
        authorization = request.authorization
        if len(authorization) > 1:
            return Refusal(
                400,
                "Send exactly one Authorization header.",
                [(b"www-authenticate", challenge("invalid_request", "multiple Authorization headers"))],
                reason="malformed",
                failure=True,
                audit="aggregate",
            )
        if authorization:
            raw = authorization[0]
            if memo is not None and memo.raw == raw:  # the connection's last value, read before
                request.token, request.dpop_scheme, request.token_key = (
                    memo.token,
                    memo.dpop_scheme,
                    memo.token_key,
                )
                return None
            scheme, _, credentials = raw.decode("latin-1").partition(" ")
            scheme = scheme.lower()
            if scheme in ("bearer", "dpop"):
                # "Bearer" with nothing after it is a malformed token, not a missing one
                request.token = credentials.strip() or "\0"
                request.dpop_scheme = scheme == "dpop"
            if memo is not None:
                memo.raw, memo.token, memo.dpop_scheme, memo.token_key = (
                    raw,
                    request.token,
                    request.dpop_scheme,
                    b"",
                )
        return None


# --- 5. authentication ---------------------------------------------------------------------------


class Authenticate:
    """The verified principal: from the cache without suspending, else verified (see module docstring).

    Callers without a usable token are *anonymous*: each such denial counts against the client
    address's budget (:meth:`RateLimiter.count_anonymous`), and an address over budget is answered
    429 before its token is even parsed.
    """

    def __init__(
        self, verifier: TokenVerifier, limiter: RateLimiter | None, dpop_challenge: bytes = b""
    ) -> None:
        self.verifier = verifier
        self.limiter = limiter
        # a request without a token is told about both schemes (RFC 9449 §7.2)
        self.missing = [(b"www-authenticate", challenge())]
        if dpop_challenge:
            self.missing.append((b"www-authenticate", dpop_challenge))

    def cached(self, request: ApiRequest) -> bool:
        """A token verified before, not expired and not revoked since (no suspension, no allocation).

        A revoked token is no cache hit: :meth:`verify` refuses it (401 ``revoked``) like any
        other token that does not verify, and it counts against the address like them.
        """
        token = request.token
        if not token:
            return False
        key = request.token_key
        if not key:
            computed = self.verifier.cache_key(token)
            if computed is None:
                return False
            key = request.token_key = computed
            memo = request.memo
            if memo is not None and memo.token is token:
                memo.token_key = key
        try:
            principal = self.verifier.cached_by_key(key)
        except TokenError:
            return False
        if principal is None:
            return False
        request.principal = principal
        return True

    def anonymous_budget(self, request: ApiRequest) -> Refusal | None:
        """429 for an address that used up its anonymous denials in this window."""
        if self.limiter is None:
            return None
        decision = self.limiter.anonymous_refused(request.client_ip)
        if decision.allowed:
            return None
        return Refusal(
            429,
            f"Too many requests without a valid token from this address; retry in {decision.retry_after} s.",
            [(b"retry-after", str(decision.retry_after).encode())],
            reason="rate_limit_address",
            audit="aggregate",
        )

    async def verify(self, request: ApiRequest) -> Refusal | None:
        if not request.token:
            self._count_anonymous(request)
            return Refusal(
                401,
                "This API needs a bearer access token.",
                list(self.missing),
                reason="missing_token",
                failure=True,
                audit="aggregate",
            )
        try:
            request.principal = await self.verifier.verify(request.token)
        except TokenError as exc:
            if exc.status == 503:  # our keys are unavailable, or a clock is off: not the caller's fault
                return Refusal(
                    503,
                    exc.description,
                    [(b"retry-after", str(exc.retry_after).encode())],
                    reason=exc.reason,
                    failure=True,
                    # a genuine token refused: on the trail as the other refusals of a token are
                    audit="aggregate" if exc.reason == TOKEN_CLOCK_SKEW else "",
                )
            self._count_anonymous(request)
            return Refusal(
                401,
                exc.description,
                [(b"www-authenticate", challenge("invalid_token", exc.description))],
                reason=exc.reason,
                failure=True,
                audit="aggregate",
            )
        return None

    def _count_anonymous(self, request: ApiRequest) -> None:
        if self.limiter is not None:
            self.limiter.count_anonymous(request.client_ip)


# --- 5b. proof of possession (DPoP) -----------------------------------------------------------------


class Possession:
    """DPoP (RFC 9449): a bound token only with a fresh proof by its key; bearer where allowed.

    :meth:`needed` decides without allocating whether a request has anything to prove: bearer
    requests with an unbound token on a route and issuer that allow bearer tokens (the hot path) go
    straight on. The others: a DPoP-bound token sent as ``Bearer`` is refused (§7.1: otherwise a
    stolen token would simply be replayed as a bearer token), as is a bearer token where DPoP is
    required and a ``DPoP``-scheme token that is not bound; then the proof — one ``DPoP`` header,
    every check of :class:`svckit.dpop.ProofVerifier` against this request (method, the URL as the
    client addressed it through the trusted proxies, the token's hash, the bound key), and its
    ``jti`` never used before by any replica (:class:`svckit.dpop.ReplayGuard`). A refusal is an
    anonymous denial: the caller did not prove who they are (counted against the address's budget,
    aggregated on the audit trail), except ``use_dpop_nonce``, a normal step of the protocol.
    """

    def __init__(
        self,
        verifier: ProofVerifier,
        replays: ReplayGuard,
        authenticate: Authenticate,
    ) -> None:
        self.verifier = verifier
        self.replays = replays
        self.authenticate = authenticate
        self.algs = " ".join(verifier.algorithms).encode()
        self.nonces = verifier.nonces

    @staticmethod
    def needed(request: ApiRequest) -> bool:
        principal, route = request.principal, request.matched
        assert principal is not None
        assert route is not None
        return request.dpop_scheme or bool(principal.jkt) or principal.dpop_required or route.dpop_required

    async def __call__(self, request: ApiRequest) -> Refusal | None:
        principal, route = request.principal, request.matched
        assert principal is not None
        assert route is not None
        bearer_allowed = not (principal.dpop_required or route.dpop_required)
        if not request.dpop_scheme:
            if principal.jkt:
                return self._refuse(
                    request,
                    "dpop_bearer_bound",
                    "This token is bound to a DPoP key: send it as 'Authorization: DPoP' with a proof.",
                    "invalid_token",
                    bearer_allowed,
                )
            return self._refuse(
                request, "dpop_required", "This API accepts DPoP-bound tokens only.", "invalid_token", False
            )
        if not principal.jkt:
            return self._refuse(
                request,
                "dpop_unbound_token",
                "The token is not bound to a DPoP key; send it as a Bearer token.",
                "invalid_token",
                bearer_allowed,
            )
        if len(request.dpop) != 1:
            reason, detail = (
                ("dpop_missing", "Send a DPoP proof with every request.")
                if not request.dpop
                else ("dpop_multiple", "Send exactly one DPoP header.")
            )
            return self._refuse(request, reason, detail, "invalid_dpop_proof", bearer_allowed)
        over_budget = self.authenticate.anonymous_budget(request)
        if over_budget is not None:
            return over_budget
        limiter = self.authenticate.limiter
        if limiter is not None:  # over its rate limit: refused before its proof becomes a Redis key
            decision = limiter.refused(principal.subject_key, principal.client_key)
            if not decision.allowed:
                return rate_limited(decision)
        forwarding = request.forwarding
        assert forwarding is not None
        host = forwarding.host.decode("latin-1") if forwarding.host is not None else ""
        try:
            proof = self.verifier.verify(
                request.dpop[0].decode("latin-1"),
                method=request.method,
                url=request_url(forwarding.proto.decode(), host, request.path),
                access_token=request.token,
                jkt=principal.jkt,
            )
        except ProofError as exc:
            return self._refuse(request, exc.reason, exc.description, exc.error, bearer_allowed)
        if not await self.replays.first_use(proof):
            return self._refuse(
                request,
                "dpop_replay",
                "This DPoP proof was used before; make one per request.",
                "invalid_dpop_proof",
                bearer_allowed,
            )
        if self.nonces is not None:
            request.base_headers.append((b"dpop-nonce", self.nonces.current().encode()))
        return None

    def _refuse(
        self, request: ApiRequest, reason: str, detail: str, error: str, bearer_allowed: bool
    ) -> Refusal:
        headers = [(b"www-authenticate", dpop_challenge(self.algs, error, detail))]
        if bearer_allowed:
            headers.append((b"www-authenticate", challenge()))
        if error == "use_dpop_nonce":
            assert self.nonces is not None
            headers.append((b"dpop-nonce", self.nonces.current().encode()))
        else:
            self.authenticate._count_anonymous(request)
        request.principal = None  # not proven: the denial is an anonymous one
        return Refusal(401, detail, headers, reason=reason, failure=True, audit="aggregate")


# --- 6. authorization ----------------------------------------------------------------------------


def authorize(request: ApiRequest) -> Refusal | None:
    """The route's scopes against the token's (403 ``insufficient_scope``)."""
    route, principal = request.matched, request.principal
    assert route is not None
    assert principal is not None
    identity = principal.identity
    request.subject = identity.subject
    request.client_id = identity.client_id
    if route.allows(identity.scopes):
        return None
    needed = route.scope_text
    plural = "s" if len(route.scopes) > 1 else ""
    any_of = " (any of them)" if route.require == "any" and len(route.scopes) > 1 else ""
    return Refusal(
        403,
        f"This route needs the scope{plural} {needed}{any_of}.",
        [(b"www-authenticate", challenge("insufficient_scope", "The token lacks a required scope.", needed))],
        reason="insufficient_scope",
        failure=True,
        audit="each",
        required_scope=needed,
    )


# --- 7. rate limits ------------------------------------------------------------------------------


class RateLimit:
    """Per (issuer, subject) and per (issuer, client id): 429 + ``Retry-After``."""

    def __init__(self, limiter: RateLimiter | None) -> None:
        self.limiter = limiter

    def __call__(self, request: ApiRequest) -> Refusal | None:
        if self.limiter is None:
            return None
        principal = request.principal
        assert principal is not None
        decision = self.limiter.check(principal.subject_key, principal.client_key)
        if decision.allowed:
            return None
        return rate_limited(decision)


def rate_limited(decision: Decision) -> Refusal:
    """The 429 of a caller over its rate limit (also answered by :class:`Possession`, before a proof
    is remembered)."""
    return Refusal(
        429,
        f"Too many requests for this {decision.limit}; retry in {decision.retry_after} s.",
        [(b"retry-after", str(decision.retry_after).encode())],
        reason=f"rate_limit_{decision.limit}",
        audit="aggregate",
    )


# --- 7b. requests in flight ----------------------------------------------------------------------


class InFlight:
    """Per (issuer, subject) and upstream service: at most ``limit`` requests in flight in this worker
    (429 + ``Retry-After``).

    Why: the rate limit counts requests, not how long they last. A request to the largest page taken
    a few bytes at a time lasts as long as its client likes, and holds its share of the worker's
    read-ahead budget (:mod:`gateway.readahead`) or, once that is taken, a pooled upstream connection
    for ``UPSTREAM_READ_TIMEOUT_SECONDS``. One valid token opening more such readers than budget ÷
    page + ``UPSTREAM_POOL_SIZE`` stalled every other user of that service for up to 30 s per wave,
    well within its rate limit (``tests/domain/test_slow_reader.py``). Below the pool size, one
    subject's requests can no longer hold every connection.

    A request counts from its admission here to :meth:`release`, which :meth:`gateway.edge.Edge.finish`
    calls once its answer has been handed to the client whole, cut off, or its client is gone — the
    one place every admitted request ends, whichever path it took (the callback relay, the task,
    an error). In memory and per worker: a dictionary increment here, a decrement there; a key leaves
    the dictionary when its count is back to zero, so it holds the subjects with requests in flight
    only. ``limit`` 0: off.

    Counted per service, as the pools are, and not per subject alone: a frozen service (a stopped VM,
    a long stall: connections accepted, nothing answered) holds each request to it for the whole
    ``UPSTREAM_READ_TIMEOUT_SECONDS``, so a user who kept using it soon had ``limit`` requests stuck
    there, and every other request of that user, to services that answered in milliseconds, was
    refused 429 as well: with the approvals service frozen, 21 of 39 of a manager's timesheet
    listings (tests/faults/test_frozen_service.py). A bulkhead per upstream keeps the limit's purpose
    (one subject cannot hold every connection of one pool) without coupling the services.
    """

    __slots__ = ("_limited", "_refused", "counts", "limit")

    #: seconds a refused caller is told to wait: in-flight requests of a well-behaved client end fast
    RETRY_AFTER = 1

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.counts: dict[str, int] = {}
        self._limited = metrics.rate_limited.labels("in_flight")
        self._refused = [(b"retry-after", str(self.RETRY_AFTER).encode())]

    def __call__(self, request: ApiRequest) -> Refusal | None:
        if not self.limit or request.in_flight:  # off, or admitted already (decide, then serve again)
            return None
        principal = request.principal
        route = request.matched
        assert principal is not None
        assert route is not None
        key = f"{route.upstream}\x00{principal.subject_key}"
        count = self.counts.get(key, 0)
        if count >= self.limit:
            self._limited.inc()
            return Refusal(
                429,
                f"Too many requests in progress for this subject to this service (at most {self.limit}"
                " at once); "
                f"retry in {self.RETRY_AFTER} s, once earlier answers have been read.",
                list(self._refused),
                reason="rate_limit_in_flight",
                audit="aggregate",
            )
        self.counts[key] = count + 1
        request.in_flight = key
        return None

    def release(self, request: ApiRequest) -> None:
        """The request's place given back (once: the request forgets its key)."""
        key = request.in_flight
        if key:
            request.in_flight = ""
            count = self.counts[key] - 1
            if count:
                self.counts[key] = count
            else:
                del self.counts[key]


# --- 8. the body ---------------------------------------------------------------------------------


class Body:
    """``Content-Length`` checked at once, then the body read whole (up to the route's limit: its
    ``max_body_bytes``, at most ``MAX_BODY_BYTES``): the identity signature binds its digest
    (``Content-Digest``), which must be known before the request head goes upstream, so bodies are no
    longer streamed through.

    Bodies held at once are bounded per worker (``GATEWAY_REQUEST_BODY_BUFFER_BYTES``, ``budget``):
    before it reads a body over 64 KiB, a request takes its declared length (the route's limit when it
    declares none) from the budget and gives it back in :meth:`release` (:meth:`gateway.edge.Edge.finish`);
    the rule is the services' own (:class:`svckit.middleware.BodyBudget`), small bodies pay nothing.
    Why: nothing else bounded them. One batch client's 64 maximum-size uploads at once (its in-flight
    allowance per worker) made the gateway, within its rendered 512 MiB limit, OOM-killed
    (tests/packaging/test_pods_under_limits.py); any caller's requests up to
    ``MAX_CONNECTIONS_PER_WORKER`` could too. A body that does not fit is answered 503
    ``request_body_budget`` with ``Retry-After`` before a byte of it is read; a body alone always fits
    (a budget below a route's limit never refuses its largest bodies for good). ``budget`` 0: no bound.
    """

    #: seconds a refused caller is told to wait: the bodies held go upstream within a request's time
    RETRY_AFTER = 2

    def __init__(self, max_body_bytes: int, budget: int = 0) -> None:
        self.max_body = max_body_bytes
        self.bodies = BodyBudget(budget)  # the services' own rule (svckit.middleware)
        self._refused = [(b"retry-after", str(self.RETRY_AFTER).encode())]

    @property
    def held(self) -> int:
        """Bytes of request bodies this worker holds now (counted ones: over 64 KiB)."""
        return self.bodies.held

    def limit(self, request: ApiRequest) -> int:
        route = request.matched
        return self.max_body if route is None else min(route.max_body_bytes, self.max_body)

    @staticmethod
    def too_large(limit: int) -> Refusal:
        return Refusal(413, f"The request body exceeds {limit} bytes.")

    def check(self, request: ApiRequest, receive: Receive) -> Refusal | None:
        """The declared length (no I/O); decides whether :meth:`read` has anything to do."""
        length = -1
        if request.content_length is not None:
            try:
                length = int(request.content_length)
                if length < 0:
                    raise ValueError
            except ValueError:
                return Refusal(400, "The Content-Length header is not a number.")
            limit = self.limit(request)
            if length > limit:
                return self.too_large(limit)
        if length > 0 or request.chunked or request.method not in NO_BODY_METHODS:
            request.read_body = True
        return None

    def hold(self, request: ApiRequest, limit: int) -> Refusal | None:
        """The body's room in the worker's budget, taken until :meth:`release` (503 without)."""
        if request.body_held:
            return None
        size = int(request.content_length) if request.content_length is not None else limit
        if not self.bodies.counts(size):  # no budget, or a small body: nothing to hold
            return None
        if not self.bodies.hold(size):
            metrics.request_body_budget_refusals.inc()
            return Refusal(
                503,
                "The gateway is holding as many request bodies as its memory allows; retry in "
                f"{self.RETRY_AFTER} s.",
                list(self._refused),
                reason="request_body_budget",
                outcome="not_stored",
            )
        request.body_held = size
        metrics.request_body_buffer_bytes.set(self.bodies.held)
        return None

    def release(self, request: ApiRequest) -> None:
        """The body's room given back (once: the request forgets it), and the body itself."""
        if request.body_held:
            self.bodies.give_back(request.body_held)
            request.body_held = 0
            request.body = None
            metrics.request_body_buffer_bytes.set(self.bodies.held)

    async def read(self, request: ApiRequest, receive: Receive) -> Refusal | None:
        """The whole body before the upstream is contacted (its digest is signed)."""
        limit = self.limit(request)
        refused = self.hold(request, limit)
        if refused is not None:
            return refused
        try:
            request.body = await read_body(receive, limit)
        except BodyTooLarge:
            return self.too_large(limit)
        except ClientGone:
            return GONE
        return None


# --- 9. forwarding -------------------------------------------------------------------------------


class Forward:
    """The request upstream with the signed identity; the answer streamed back to the client."""

    def __init__(self, forwarder: Forwarder, max_body_bytes: int, clock: Clock = SYSTEM_CLOCK) -> None:
        self.forwarder = forwarder
        self.too_large = f"The request body exceeds {max_body_bytes} bytes."
        self._now = clock.time
        self._second = -1
        self._stamp = b""  # the signed timestamp of the current second, formatted once

    async def __call__(
        self, request: ApiRequest, send: Send, started: Exchange | None = None
    ) -> Refusal | None:
        """``started``: the request already sent by :meth:`start` (its answer is relayed from there)."""
        route = request.matched
        assert route is not None
        target = self._target(request)
        # with ``started`` (rare: an error, a large answer, a client not reading) only a retry frames
        # the request again, with these
        headers, signed = self.upstream_headers(request, target)

        def on_status(status: int) -> None:
            request.status = status

        def resign() -> bytes:
            return self.sign(request, target)

        try:
            await self.forwarder.forward(
                service=route.upstream,
                method=request.method,
                target=target,
                headers=headers,
                signed=signed,
                resign=resign,
                body=request.body,
                send=send,
                extra_response_headers=request.base_headers,
                on_status=on_status,
                started=started,
            )
        except BodyTooLarge:
            return Refusal(413, self.too_large)
        except ClientGone:
            return GONE
        except UpstreamFailure as exc:
            return Refusal(
                exc.status,
                exc.detail,
                [] if exc.status == 504 else [(b"retry-after", b"2")],
                reason=exc.reason,
                outcome=exc.outcome,
            )
        return None

    def start(self, request: ApiRequest) -> Exchange | None:
        """The request sent upstream without suspending, on an idle pooled connection (``None``: none
        idle). Only for a request without a body (what :meth:`Edge.decide` sends here)."""
        route = request.matched
        assert route is not None
        assert request.body is None
        target = self._target(request)
        headers, signed = self.upstream_headers(request, target)
        return self.forwarder.start(
            service=route.upstream,
            method=request.method,
            target=target,
            headers=headers,
            signed=signed,
            body=None,
        )

    @staticmethod
    def _target(request: ApiRequest) -> bytes:
        target = request.raw_path[len(API_PREFIX) :]
        if request.query:
            target = target + b"?" + request.query
        return target

    def upstream_headers(self, request: ApiRequest, target: bytes) -> tuple[bytes, bytes]:
        """The client's end-to-end headers plus the forwarding ones, as header lines, and the signed
        identity block. The lines are kept on the connection's memo and reused while the client
        sends the very same headers (its token included) through the same forwarding."""
        principal, forwarding, route = request.principal, request.forwarding, request.matched
        assert principal is not None
        assert forwarding is not None
        assert route is not None
        inbound = request.scope["headers"]
        memo = request.memo
        if memo is not None and memo.forwarded is forwarding and memo.headers == inbound:
            block = memo.block
        else:
            dropped = STRIPPED_INBOUND
            if request.connection is not None:
                dropped = dropped | frozenset(
                    token.strip().lower() for token in request.connection.split(b",")
                )
            lines: list[bytes] = []
            for key, value in inbound:
                if key not in dropped and not key.startswith(_IDENTITY_PREFIX):
                    lines += (key, b": ", value, b"\r\n")
            lines += (
                b"x-forwarded-for: ",
                forwarding.forwarded_for,
                b"\r\nx-forwarded-proto: ",
                forwarding.proto,
            )
            if forwarding.host is not None:
                lines += (b"\r\nx-forwarded-host: ", forwarding.host)
            lines.append(b"\r\n")
            block = b"".join(lines)
            if memo is not None:
                memo.headers, memo.forwarded, memo.block = inbound, forwarding, block
        body = request.body
        assert not isinstance(body, BodyStream)  # Body reads every body whole
        request.digest = content_digest(body).encode() if body else _EMPTY_DIGEST
        return block, self.sign(request, target)

    def sign(self, request: ApiRequest, target: bytes) -> bytes:
        """The signed identity block for one attempt: a fresh nonce each time, as the upstream
        accepts every signed request once (a retry of an idempotent request is a new one)."""
        principal, route = request.principal, request.matched
        assert principal is not None
        assert route is not None
        second = int(self._now())
        if second != self._second:
            self._second, self._stamp = second, b"%d" % second
        return principal.signed[route.upstream].header_block(
            method=request.method,
            target=target,
            request_id=request.base_headers[0][1],
            timestamp=self._stamp,
            nonce=new_nonce().encode(),
            digest=request.digest,
        )
