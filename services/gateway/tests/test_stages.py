"""Each stage of the edge in process: no server, no network, time from a fake clock.

The tokens are really signed (the rig's provider keys) and really verified: the verifier's key cache
is loaded with the provider's public keys up front, so verification needs no fetch. Everything that
crosses a network — the JWKS fetch, forwarding, the audit service — is covered by the integration
tests next to this file.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, MutableMapping
from typing import Any, cast
from urllib.parse import unquote

import aiohttp
import pytest
from gateway import metrics
from gateway.cors import Cors
from gateway.denials import DenialAuditor
from gateway.edge import Edge
from gateway.forwarded import ForwardedHeaders
from gateway.issuers import load_issuers
from gateway.jwks import JwksCache, parse_jwks
from gateway.proxy import BodyStream, Forwarder
from gateway.ratelimit import RateLimiter
from gateway.request import ApiRequest, Refusal, Reply
from gateway.revocations import DenyList
from gateway.routes import load_routes
from gateway.settings import GatewaySettings
from gateway.stages import (
    Authenticate,
    Body,
    Credentials,
    Preflight,
    RateLimit,
    Router,
    authorize,
    check_target,
)
from gateway.tokens import TokenVerifier
from svckit.http import HttpClient, SignedClient
from svckit.redisguard import RedisGuard

from testkit.clock import FakeClock
from testkit.fixtures import new_pair_keys, pair_signer

from .conftest import AUDIENCE, Provider

pytestmark = pytest.mark.unit

SPA = b"http://localhost:8080"
PEER = "198.51.100.7"
PROVIDER = Provider()
PROVIDER.base = "https://issuer.test"
KEYS = new_pair_keys("unit")


def settings(**overrides: Any) -> GatewaySettings:
    values: dict[str, Any] = {
        **{name.lower(): value for name, value in KEYS.items()},
        "oidc_issuer": [PROVIDER.issuer],
        "oidc_audience": AUDIENCE,
        "redis_url": "redis://127.0.0.1:9/0",  # never called by these tests
        "cors_origins": [SPA.decode()],
        **overrides,
    }
    return GatewaySettings(**values)


def scope(
    method: str = "GET",
    raw: bytes = b"/api/timesheets",
    query: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    all_headers = [(b"host", b"gateway.test"), *(headers or [])]
    if token is not None:
        all_headers.append((b"authorization", f"Bearer {token}".encode()))
    return {
        "type": "http",
        "method": method,
        "path": unquote(raw.decode("latin-1")),
        "raw_path": raw,
        "query_string": query,
        "headers": all_headers,
        "client": (PEER, 50000),
        "scheme": "http",
    }


def request(*args: Any, **kwargs: Any) -> ApiRequest:
    return ApiRequest(scope(*args, **kwargs))


class Rig:
    """The edge's collaborators, in process, on one fake clock."""

    def __init__(self, **overrides: Any) -> None:
        self.clock = FakeClock(start=time.time())  # real tokens carry real times
        self.settings = settings(**overrides)
        self.routes = load_routes(self.settings.gateway_routes_file, frozenset(self.settings.upstreams))
        issuers = load_issuers(self.settings)
        self.jwks = JwksCache(
            self.settings, issuers, None, cast(aiohttp.ClientSession, None), self.clock
        )  # no session: a fetch would fail loudly
        keyset = parse_jwks(
            {"keys": [PROVIDER.public_jwk(kid) for kid in PROVIDER.published]},
            fetched_at=self.clock.time(),
            ttl=3600,
            jwks_uri=PROVIDER.base + "/jwks",
        )
        self.jwks.state[PROVIDER.issuer].keyset = keyset
        signers = {upstream: pair_signer(KEYS, "gateway", upstream) for upstream in self.settings.upstreams}
        self.deny = DenyList(self.clock.time)
        self.verifier = TokenVerifier(self.settings, issuers, self.jwks, signers, self.deny, clock=self.clock)
        self.limiter = RateLimiter(
            RedisGuard(self.settings.redis_url, "unit:", timeout=0.1, retry_seconds=1),
            window_seconds=60,
            per_subject=self.settings.rate_limit_per_subject,
            per_client=self.settings.rate_limit_per_client,
            anonymous_per_address=self.settings.rate_limit_anonymous_per_address,
            sync_seconds=0.25,
            clock=self.clock,
        )
        self.http = HttpClient()
        self.auditor = DenialAuditor(
            SignedClient(self.http, "http://127.0.0.1:9", signers["audit"]),
            queue_size=100,
            batch_size=10,
            flush_seconds=1,
            window_seconds=60,
            clock=self.clock,
        )
        self.edge = Edge(
            routes=self.routes,
            verifier=self.verifier,
            forwarder=Forwarder({}, metrics.RequestMetrics()),
            cors=Cors(self.settings.cors_origins),
            limiter=self.limiter,
            auditor=self.auditor,
            request_metrics=metrics.RequestMetrics(),
            max_body_bytes=self.settings.max_body_bytes,
            access_log=None,
            forwarded=ForwardedHeaders(self.settings.gateway_trusted_proxies),
            clock=self.clock,
        )

    async def call(
        self, asgi_scope: dict[str, Any], body: bytes = b""
    ) -> tuple[int, dict[bytes, bytes], bytes]:
        """One request through the whole edge (that ends before forwarding)."""
        sent: list[MutableMapping[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)

        await self.edge(asgi_scope, receive, send)
        head, tail = sent
        self.raw_headers: list[tuple[bytes, bytes]] = head["headers"]
        return head["status"], dict(head["headers"]), tail["body"]


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    rig = Rig()
    yield rig
    await rig.http.close()


# --- the request -----------------------------------------------------------------------------------


def test_the_request_reads_its_headers_once_and_keeps_a_valid_request_id() -> None:
    parsed = request(
        headers=[
            (b"x-request-id", b"abc-12345"),
            (b"origin", SPA),
            (b"x-forwarded-for", b"203.0.113.1"),
            (b"x-forwarded-for", b"203.0.113.2"),
            (b"transfer-encoding", b"chunked"),
        ],
        token="t",
    )
    assert parsed.request_id == "abc-12345"
    assert parsed.origin == SPA
    assert parsed.xff == [b"203.0.113.1", b"203.0.113.2"]
    assert parsed.chunked
    assert parsed.authorization == [b"Bearer t"]
    fresh = request(headers=[(b"x-request-id", b"bad id with spaces")])
    assert len(fresh.request_id) == 32
    assert fresh.request_id != request().request_id


# --- 1. preflight ----------------------------------------------------------------------------------


def preflight_request(raw: bytes = b"/api/timesheets/5f0c", origin: bytes = SPA) -> ApiRequest:
    return request(
        "OPTIONS",
        raw,
        headers=[
            (b"origin", origin),
            (b"access-control-request-method", b"DELETE"),
            (b"access-control-request-headers", b"authorization"),
        ],
    )


def test_preflight_answers_only_preflights() -> None:
    rig = Rig()
    preflight = Preflight(Cors([SPA.decode()]), rig.routes)
    assert preflight(request("OPTIONS")) is None  # no Access-Control-Request-Method: not a preflight
    assert preflight(request()) is None
    answer = preflight(preflight_request())
    assert isinstance(answer, Reply)
    assert answer.status == 204
    assert dict(answer.headers)[b"access-control-allow-methods"] == b"DELETE, GET, HEAD"
    refused = preflight(preflight_request(origin=b"https://evil.example"))
    assert isinstance(refused, Refusal)
    assert (refused.status, refused.cors) == (403, False)
    # a path the route table does not know, or may not read, offers no methods
    for raw in (b"/api/nothing", b"/api/timesheets/%2e%2e", b"/%61pi/timesheets/5f0c"):
        assert isinstance(preflight(preflight_request(raw)), Refusal)


# --- 2. the target ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "query", "status"),
    [
        (b"/api/timesheets", b"", None),
        (b"/api/timesheets/caf%C3%A9", b"x=%20y", None),  # encoded bytes in a variable: forwarded as is
        (b"/%61pi/timesheets", b"", 400),  # issue 14: read as /api/…, forwarded as "pi/timesheets"
        (b"/%2561pi/timesheets", b"", 400),
        (b"/api%2Ftimesheets", b"", 400),
        (b"/API/timesheets", b"", 404),
        (b"/api", b"", 404),
        (b"/api/timesheets/..%2Fapprovals", b"", 400),
        (b"/api//timesheets", b"", 400),
        (b"/api/timesheets/\xc3\xa9", b"", 400),
        (b"/api/timesheets", b"q=\x7f", 400),
    ],
)
def test_the_target_must_be_literally_under_api_and_unambiguous(
    raw: bytes, query: bytes, status: int | None
) -> None:
    parsed = request(raw=raw, query=query)
    refusal = check_target(parsed)
    if status is None:
        assert refusal is None
        assert parsed.path == raw.decode()  # routing reads exactly the bytes that are forwarded
    else:
        assert refusal is not None
        assert refusal.status == status


# --- 3. the route ----------------------------------------------------------------------------------


def routed(method: str, raw: bytes) -> tuple[ApiRequest, Refusal | None]:
    rig = Rig()
    parsed = request(method, raw)
    assert check_target(parsed) is None
    return parsed, Router(rig.routes)(parsed)


def test_the_router_matches_the_raw_path() -> None:
    parsed, refusal = routed("GET", b"/api/timesheets/5f0c")
    assert refusal is None
    assert parsed.route == "/api/timesheets/{id}"
    assert parsed.matched is not None
    assert parsed.matched.upstream == "timesheets"
    _, refusal = routed("PATCH", b"/api/timesheets/5f0c")
    assert refusal is not None
    assert refusal.status == 405
    assert dict(refusal.headers)[b"allow"] == b"DELETE, GET, HEAD"
    _, refusal = routed("GET", b"/api/time%73heets")  # an encoded letter in a literal segment
    assert refusal is not None
    assert refusal.status == 404


# --- 4. credentials --------------------------------------------------------------------------------


def test_credentials_come_from_one_authorization_header_only() -> None:
    credentials = Credentials(ForwardedHeaders([]))
    parsed = request(token="abc.def.ghi")
    assert credentials(parsed) is None
    assert parsed.token == "abc.def.ghi"
    assert parsed.client_ip == PEER
    empty = request(headers=[(b"authorization", b"Bearer ")])
    assert credentials(empty) is None
    assert empty.token == "\0"  # present but empty: malformed, not missing
    basic = request(headers=[(b"authorization", b"Basic dXNlcjpwdw==")])
    assert credentials(basic) is None
    assert basic.token == ""
    twice = credentials(request(headers=[(b"authorization", b"Bearer a"), (b"authorization", b"Bearer b")]))
    assert twice is not None
    assert (twice.status, twice.reason, twice.failure) == (400, "malformed", True)
    in_query = credentials(request(query=b"access_token=abc"))
    assert in_query is not None
    assert in_query.status == 400


def test_the_client_address_is_believed_only_from_trusted_proxies() -> None:
    forwarded = [(b"x-forwarded-for", b"203.0.113.9")]
    parsed = request(headers=forwarded)
    assert Credentials(ForwardedHeaders([]))(parsed) is None
    assert parsed.client_ip == PEER
    parsed = request(headers=forwarded)
    assert Credentials(ForwardedHeaders([PEER]))(parsed) is None
    assert parsed.client_ip == "203.0.113.9"


# --- 5. authentication -----------------------------------------------------------------------------


def authenticated(rig: Rig, token: str | None) -> ApiRequest:
    parsed = request(token=token)
    assert Credentials(ForwardedHeaders([]))(parsed) is None
    return parsed


async def test_a_verified_token_is_served_from_the_cache_until_it_expires(rig: Rig) -> None:
    authenticate = Authenticate(rig.verifier, rig.limiter)
    token = PROVIDER.token(exp=int(rig.clock.time()) + 30)
    first = authenticated(rig, token)
    assert not authenticate.cached(first)
    assert await authenticate.verify(first) is None
    assert first.principal is not None
    second = authenticated(rig, token)
    assert authenticate.cached(second)
    assert second.principal is first.principal
    rig.clock.advance(31)  # past exp (the leeway applies to verification, never to the cache)
    third = authenticated(rig, token)
    assert not authenticate.cached(third)
    refusal = await authenticate.verify(third)
    assert refusal is None  # within the 30 s leeway the token still verifies…
    rig.clock.advance(30)
    refusal = await authenticate.verify(authenticated(rig, token))
    assert refusal is not None  # …and not beyond it
    assert (refusal.status, refusal.reason, refusal.audit) == (401, "expired", "aggregate")


async def test_a_revoked_token_is_refused_even_from_the_cache(rig: Rig) -> None:
    authenticate = Authenticate(rig.verifier, rig.limiter)
    token = PROVIDER.token(jti="revoke-me")
    first = authenticated(rig, token)
    assert await authenticate.verify(first) is None
    assert authenticate.cached(authenticated(rig, token))
    rig.deny.add(PROVIDER.issuer, "revoke-me", rig.clock.time() + 600)
    again = authenticated(rig, token)
    assert not authenticate.cached(again)
    refusal = await authenticate.verify(again)
    assert refusal is not None
    assert (refusal.status, refusal.reason, refusal.audit) == (401, "revoked", "aggregate")


async def test_a_revocation_cutoff_refuses_older_tokens_of_its_issuer_even_from_the_cache(rig: Rig) -> None:
    """After a restore (docs/CONTRACTS.md "Revocation events", cutoff entries): a token issued before
    the cutoff — or without ``iat`` — is refused as ``revoked``, a cache hit included; one issued at or
    after it passes; a cutoff of another issuer or one that ended refuses nothing."""
    authenticate = Authenticate(rig.verifier, rig.limiter)
    now = int(rig.clock.time())
    older, newer, no_iat = (
        PROVIDER.token(iat=now - 60, exp=now + 3600),
        PROVIDER.token(iat=now, exp=now + 3600),
        PROVIDER.token(iat=None, exp=now + 3600),
    )
    for token in (older, newer, no_iat):
        assert await authenticate.verify(authenticated(rig, token)) is None
        assert authenticate.cached(authenticated(rig, token))
    rig.deny.add_cutoff("https://stranger.example/", now, now + 600)  # another issuer's restore
    for token in (older, newer, no_iat):
        assert authenticate.cached(authenticated(rig, token))
    rig.deny.add_cutoff(PROVIDER.issuer, now, now + 600)
    for token in (older, no_iat):
        again = authenticated(rig, token)
        assert not authenticate.cached(again), "no cache hit for a token issued before the cutoff"
        refusal = await authenticate.verify(again)
        assert refusal is not None
        assert (refusal.status, refusal.reason, refusal.audit) == (401, "revoked", "aggregate")
    assert authenticate.cached(authenticated(rig, newer))
    fresh = authenticated(rig, PROVIDER.token(iat=now + 1))
    assert await authenticate.verify(fresh) is None, "issued after the restore: verified"
    rig.clock.advance(600)  # the cutoff ends (every token it refused has expired by then in production)
    assert await authenticate.verify(authenticated(rig, older)) is None


async def test_anonymous_denials_use_up_the_address_budget(rig: Rig) -> None:
    rig = Rig(rate_limit_anonymous_per_address=3)
    authenticate = Authenticate(rig.verifier, rig.limiter)
    reasons = []
    for token in (None, "not-a-jwt", PROVIDER.token(aud="https://other.example")):
        parsed = authenticated(rig, token)
        assert authenticate.anonymous_budget(parsed) is None
        refusal = await authenticate.verify(parsed)
        assert refusal is not None
        reasons.append(refusal.reason)
    assert reasons == ["missing_token", "malformed", "audience"]
    over = authenticate.anonymous_budget(authenticated(rig, PROVIDER.token()))
    assert over is not None
    assert (over.status, over.reason, over.audit) == (429, "rate_limit_address", "aggregate")
    assert dict(over.headers)[b"retry-after"] == str(60 - int(rig.clock.time()) % 60).encode()
    # a token verified before still passes: the budget is checked only when the cache misses
    rig.clock.advance(60)  # the next window: the budget is back
    assert authenticate.anonymous_budget(authenticated(rig, None)) is None
    await rig.http.close()


@pytest.mark.parametrize(
    ("claim", "value", "named"),
    [
        # NaN, Infinity and numbers beyond a double are refused by the kit's JSON rules already
        ("exp", float("nan"), "not JSON"),
        ("exp", float("inf"), "not JSON"),
        ("iat", 10**30, "not JSON"),
        # valid JSON, but not a NumericDate
        ("exp", "1", "'exp'"),
        ("exp", 1e300, "'exp'"),
        ("exp", -1, "'exp'"),
        ("nbf", True, "'nbf'"),
        ("iat", 253_402_300_800, "'iat'"),
    ],
)
async def test_time_claims_that_are_not_finite_numbers_are_malformed(
    rig: Rig, claim: str, value: Any, named: str
) -> None:
    refusal = await Authenticate(rig.verifier, None).verify(
        authenticated(rig, PROVIDER.token(**{claim: value}))
    )
    assert refusal is not None
    assert (refusal.status, refusal.reason) == (401, "malformed")
    assert named in refusal.detail


# --- 6. authorization ------------------------------------------------------------------------------


async def test_authorize_checks_the_route_scopes(rig: Rig) -> None:
    async def verified(*scopes: str) -> ApiRequest:
        parsed = request(raw=b"/api/approvals", token=PROVIDER.scoped(*scopes, subject="ann"))
        assert check_target(parsed) is None
        assert Router(rig.routes)(parsed) is None
        assert Credentials(ForwardedHeaders([]))(parsed) is None
        assert await Authenticate(rig.verifier, None).verify(parsed) is None
        return parsed

    assert authorize(await verified("approve:timesheets")) is None
    parsed = await verified("read:timesheets")
    refusal = authorize(parsed)
    assert refusal is not None
    assert (refusal.status, refusal.reason, refusal.audit) == (403, "insufficient_scope", "each")
    assert refusal.required_scope == "approve:timesheets"
    assert parsed.subject == "ann"


# --- 7. rate limits --------------------------------------------------------------------------------


async def test_rate_limits_per_subject_follow_the_clock(rig: Rig) -> None:
    rig = Rig(rate_limit_per_subject=2)
    stage = RateLimit(rig.limiter)
    token = PROVIDER.token(sub="busy")
    window_end = (int(rig.clock.time()) // 60 + 1) * 60
    rig.clock.set_time(window_end - 15)  # 15 s before a window ends
    outcomes = []
    for _ in range(3):
        parsed = authenticated(rig, token)
        parsed.principal = await rig.verifier.verify(token)
        outcomes.append(stage(parsed))
    assert outcomes[:2] == [None, None]
    refusal = outcomes[2]
    assert refusal is not None
    assert (refusal.status, refusal.reason, refusal.audit) == (429, "rate_limit_subject", "aggregate")
    # the two weigh 2 * (1 - f) in the next window: below the limit just after it begins
    assert dict(refusal.headers)[b"retry-after"] == b"16"
    rig.clock.set_time(window_end)
    assert stage(parsed) is not None  # 2 * (1 - 0): still the limit
    rig.clock.set_time(window_end + 1)
    assert stage(parsed) is None  # 2 * 59/60
    assert RateLimit(None)(parsed) is None  # RATE_LIMIT_ENABLED=false
    await rig.http.close()


# --- 8. the body -----------------------------------------------------------------------------------


async def nothing() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


@pytest.mark.parametrize(
    ("method", "headers", "status", "read", "stream"),
    [
        ("GET", [], None, False, False),
        ("POST", [], None, True, False),  # a POST may carry a body without saying so
        ("DELETE", [(b"content-length", b"3")], None, True, False),
        ("POST", [(b"transfer-encoding", b"chunked")], None, True, False),
        # large too: read whole (never streamed), as the signature binds the body's digest
        ("POST", [(b"content-length", b"100000")], None, True, False),
        ("POST", [(b"content-length", b"-1")], 400, False, False),
        ("POST", [(b"content-length", b"1e3")], 400, False, False),
        ("POST", [(b"content-length", b"2000000")], 413, False, False),
    ],
)
def test_the_declared_length_decides_before_anything_is_read(
    method: str, headers: list[tuple[bytes, bytes]], status: int | None, read: bool, stream: bool
) -> None:
    parsed = request(method, headers=headers)
    refusal = Body(1_000_000).check(parsed, nothing)
    assert (refusal.status if refusal else None) == status
    assert parsed.read_body == read
    assert isinstance(parsed.body, BodyStream) == stream


async def test_a_body_is_read_whole_and_bounded() -> None:
    chunks = [b"a" * 600, b"b" * 600]

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": chunks.pop(0), "more_body": bool(chunks)}

    parsed = request("POST")
    assert await Body(2000).read(parsed, receive) is None
    assert parsed.body == b"a" * 600 + b"b" * 600
    chunks[:] = [b"a" * 600, b"b" * 600]
    refusal = await Body(1000).read(request("POST"), receive)
    assert refusal is not None
    assert refusal.status == 413

    async def gone() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    refusal = await Body(1000).read(request("POST"), gone)
    assert refusal is not None
    assert refusal.silent


# --- the composition -------------------------------------------------------------------------------


async def test_the_edge_answers_refusals_as_problems_and_audits_them(rig: Rig) -> None:
    status, headers, body = await rig.call(scope(headers=[(b"origin", SPA), (b"x-request-id", b"req-0001")]))
    assert status == 401
    assert headers[b"content-type"] == b"application/problem+json"
    # both schemes are offered (RFC 9449 §7.2): Bearer, and DPoP with the proof algorithms
    assert [value for name, value in rig.raw_headers if name == b"www-authenticate"] == [
        b'Bearer realm="timesheets"',
        b'DPoP realm="timesheets", algs="ES256 ES384 RS256 PS256 EdDSA"',
    ]
    assert headers[b"x-request-id"] == b"req-0001"
    assert headers[b"access-control-allow-origin"] == SPA  # the SPA can read the 401
    assert b'"reason": "missing_token"' in body
    status, headers, _ = await rig.call(
        scope("OPTIONS", headers=[(b"origin", SPA), (b"access-control-request-method", b"GET")])
    )
    assert status == 204
    assert headers[b"x-request-id"]
    status, _, _ = await rig.call(
        scope(raw=b"/api/audit/events", token=PROVIDER.scoped("read:timesheets", subject="eve"))
    )
    assert status == 403
    assert rig.auditor.queued == 1  # the 403: a record of its own
    for _ in range(5):
        assert (await rig.call(scope()))[0] == 401
    assert len(rig.auditor.windows) == 1  # six anonymous denials: one record in the making
    [record] = rig.auditor.windows.close(everything=True)
    assert record.details["count"] == 6
    assert record.details["address"] == PEER


async def test_the_edge_refuses_a_flood_before_verifying() -> None:
    rig = Rig(rate_limit_anonymous_per_address=10)
    known = PROVIDER.scoped("read:timesheets", subject="known")
    assert (await rig.call(scope(raw=b"/api/audit/events", token=known)))[0] == 403  # verified, cached
    statuses = [(await rig.call(scope(token="junk")))[0] for _ in range(25)]
    assert statuses == [401] * 10 + [429] * 15
    windows = rig.auditor.windows.close(everything=True)
    counts = {event.details["reason"]: event.details["count"] for event in windows}
    assert counts == {"malformed": 10, "rate_limit_address": 15}
    # a token verified before passes (403 here: it got as far as the scopes); a new one waits its turn
    assert (await rig.call(scope(raw=b"/api/audit/events", token=known)))[0] == 403
    fresh = PROVIDER.scoped("read:timesheets", subject="fresh")
    assert (await rig.call(scope(raw=b"/api/audit/events", token=fresh)))[0] == 429
    await rig.http.close()
