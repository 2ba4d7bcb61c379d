"""The edge's own pipeline in process: CPU per request of the stages, without any network.

``bench/gateway.py`` measures the gateway as it ships, over loopback, where the event loop, the
sockets and the machine's noise dominate (the stages are ~20 µs of ~150). This one drives
:class:`gateway.edge.Edge` directly with an ASGI scope and a stub forwarder, so the figures are the
stages' own cost and compare across changes to them:

* ``cached`` — a GET with a token verified before (the hot path: every stage, signing, metrics);
* ``verify`` — a GET whose token must be verified (RS256 signature and claims; the cache is emptied
  each time);
* ``anonymous_401`` — a GET without a token (refused, counted for the address, aggregated for the
  audit trail);
* ``flood_429`` — a request from an address over its anonymous budget, carrying a token that was
  never verified: refused before any parsing or signature work.

Best of seven runs of ``BENCH_EDGE_REQUESTS`` (default 20,000) requests each; CPU time of this
process. Writes ``bench/results/edge.json``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, cast

import aiohttp
from gateway import metrics
from gateway.cors import Cors
from gateway.denials import DenialAuditor
from gateway.edge import Edge
from gateway.forwarded import ForwardedHeaders
from gateway.issuers import load_issuers
from gateway.jwks import JwksCache, parse_jwks
from gateway.ratelimit import RateLimiter
from gateway.routes import load_routes
from gateway.settings import GatewaySettings
from gateway.tokens import TokenVerifier
from jwt.algorithms import RSAAlgorithm
from svckit.http import HttpClient, SignedClient
from svckit.redisguard import RedisGuard

from bench.api import AUDIENCE, Issuer
from testkit.fixtures import new_pair_keys, pair_fields, pair_signer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BUDGET = 200_000  # anonymous denials per address and window


class StubForwarder:
    """Answers 200 at once: the upstream hop is ``bench/gateway.py``'s business."""

    async def forward(self, *, send: Any, extra_response_headers: Any, on_status: Any, **_: Any) -> None:
        on_status(200)
        headers = [(b"content-length", b"2"), *extra_response_headers]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"{}", "more_body": False})


def scope(token: str | None, address: str = "127.0.0.1") -> dict[str, Any]:
    headers = [(b"host", b"gateway"), (b"user-agent", b"bench"), (b"accept", b"*/*")]
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    return {
        "type": "http",
        "method": "GET",
        "path": "/api/timesheets",
        "raw_path": b"/api/timesheets",
        "query_string": b"",
        "headers": headers,
        "client": (address, 50000),
        "scheme": "http",
    }


async def measure() -> dict[str, float]:
    issuer = Issuer()
    keys = new_pair_keys("bench")
    settings = GatewaySettings(
        **pair_fields(keys),
        oidc_issuer=[issuer.issuer],
        oidc_audience=AUDIENCE,
        redis_url="redis://127.0.0.1:9/0",  # never called: the limiter counts locally between syncs
        rate_limit_per_subject=10**9,
        rate_limit_per_client=10**9,
        rate_limit_anonymous_per_address=BUDGET,
    )
    issuers = load_issuers(settings)
    signers = {upstream: pair_signer(keys, "gateway", upstream) for upstream in settings.upstreams}
    jwks = JwksCache(settings, issuers, None, cast(aiohttp.ClientSession, None))
    jwk = {**RSAAlgorithm.to_jwk(issuer.key.public_key(), as_dict=True), "kid": "bench-1", "alg": "RS256"}
    jwks.state[issuer.issuer].keyset = parse_jwks(
        {"keys": [jwk]}, fetched_at=time.time(), ttl=3600, jwks_uri=issuer.issuer + "jwks"
    )
    verifier = TokenVerifier(settings, issuers, jwks, signers)
    limiter = RateLimiter(
        RedisGuard(settings.redis_url, "bench:", timeout=0.1, retry_seconds=1),
        window_seconds=3600,
        per_subject=10**9,
        per_client=10**9,
        anonymous_per_address=BUDGET,
        sync_seconds=3600,
    )
    http = HttpClient()
    auditor = DenialAuditor(
        SignedClient(http, "http://127.0.0.1:9", signers["audit"]),
        queue_size=10,
        batch_size=10,
        flush_seconds=3600,
        window_seconds=3600,
    )
    edge = Edge(
        routes=load_routes(settings.gateway_routes_file, frozenset(settings.upstreams)),
        verifier=verifier,
        forwarder=cast(Any, StubForwarder()),
        cors=Cors(settings.cors_origins),
        limiter=limiter,
        auditor=auditor,
        request_metrics=metrics.RequestMetrics(),
        max_body_bytes=settings.max_body_bytes,
        access_log=None,
        forwarded=ForwardedHeaders([]),
        max_in_flight_per_subject=settings.gateway_max_in_flight_per_subject,  # as shipped
    )
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    token = issuer.token("bench-user")
    flood_address = "198.51.100.66"
    for _ in range(BUDGET):  # the flood address has used up its budget; 127.0.0.1 stays within it
        limiter.count_anonymous(flood_address)
    cases = {
        "cached": (scope(token), 200, False),
        "verify": (scope(token), 200, True),
        "anonymous_401": (scope(None), 401, False),
        "flood_429": (scope(issuer.token("never-verified"), flood_address), 429, False),
    }
    requests = int(os.environ.get("BENCH_EDGE_REQUESTS", "20000"))
    figures: dict[str, float] = {}
    try:
        for name, (asgi_scope, status, uncached) in cases.items():
            count = requests // 10 if uncached else requests
            best = float("inf")
            for _ in range(7):
                statuses.clear()
                started = time.process_time()
                for _ in range(count):
                    if uncached:
                        verifier._cache.clear()
                    await edge(asgi_scope, receive, send)
                best = min(best, (time.process_time() - started) / count * 1e6)
                assert set(statuses) == {status}, (name, set(statuses))
            figures[name] = round(best, 1)
            print(f"  {name:<14} {best:>7.1f} µs CPU per request (status {status})", flush=True)
    finally:
        await http.close()
        issuer.close()
    return figures


def main() -> int:
    figures = asyncio.run(measure())
    document = {
        "cpu_us_per_request": figures,
        "what": "gateway.edge.Edge in process, stub forwarder, best of 7 runs",
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "edge.json").write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
