"""The gateway's Prometheus metrics (names fixed in docs/CONTRACTS.md; dashboards and alerts use them).

| metric | labels | meaning |
| --- | --- | --- |
| ``gateway_requests_total`` | route, method, status | API requests answered (route template/``unmatched``) |
| ``gateway_request_duration_seconds`` | route | time from request to end of response |
| ``gateway_upstream_duration_seconds`` | service | time waiting for the upstream's response head |
| ``gateway_auth_failures_total`` | reason | refused tokens / scopes, by fixed reason code |
| ``gateway_jwks_fetch_total`` | issuer, outcome | fetches from an issuer (``ok``, ``error``, ``invalid``) |
| ``gateway_jwks_cache_total`` | layer, result | key look-ups by layer (``memory``, ``redis``) and result |
| ``gateway_jwks_key_age_seconds`` | issuer | age of the keys in use (grows while the provider is down) |
| ``gateway_rate_limited_total`` | limit | requests refused with 429 (``subject``, ``client``) |
| ``gateway_ratelimit_failopen_total`` | (none) | requests let through unchecked while Redis is unreachable |
| ``gateway_audit_dropped_total`` | (none) | denial audit events dropped (queue full or undeliverable) |
| ``gateway_upstream_errors_total`` | service, kind | upstream failures (connect, timeout, protocol) |

Every label value comes from a fixed set or from configuration (issuer URLs, route templates), never
from request data, so cardinality is bounded. With several workers the values aggregate through
``PROMETHEUS_MULTIPROC_DIR`` (set by ``python -m gateway``).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram
from svckit.metrics import LATENCY_BUCKETS

requests_total = Counter(
    "gateway_requests_total",
    "API requests answered by the gateway, by route template, method and status.",
    ["route", "method", "status"],
)
request_duration = Histogram(
    "gateway_request_duration_seconds",
    "Time from receiving an API request to the end of its response, by route template.",
    ["route"],
    buckets=LATENCY_BUCKETS,
)
upstream_duration = Histogram(
    "gateway_upstream_duration_seconds",
    "Time from sending a request upstream to receiving its response head, by service.",
    ["service"],
    buckets=LATENCY_BUCKETS,
)
auth_failures = Counter(
    "gateway_auth_failures_total",
    "Requests refused for authentication or authorization, by reason.",
    ["reason"],
)
jwks_fetch = Counter(
    "gateway_jwks_fetch_total",
    "Key set fetches from an issuer (discovery + JWKS), by outcome.",
    ["issuer", "outcome"],
)
jwks_cache = Counter(
    "gateway_jwks_cache_total",
    "Signing key look-ups by cache layer and result.",
    ["layer", "result"],
)
jwks_key_age = Gauge(
    "gateway_jwks_key_age_seconds",
    "Seconds since the keys in use were fetched from the issuer (oldest across workers).",
    ["issuer"],
    multiprocess_mode="livemax",
)
rate_limited = Counter(
    "gateway_rate_limited_total",
    "Requests refused with 429, by the limit that was exceeded.",
    ["limit"],
)
ratelimit_failopen = Counter(
    "gateway_ratelimit_failopen_total",
    "Requests let through without a shared rate-limit check because Redis was unreachable.",
)
audit_dropped = Counter(
    "gateway_audit_dropped_total",
    "Denial audit events dropped because the queue was full or the audit service kept failing.",
)
upstream_errors = Counter(
    "gateway_upstream_errors_total",
    "Requests that failed on the way to or from an upstream, by service and kind.",
    ["service", "kind"],
)


class RequestMetrics:
    """Caches labelled children: ``labels()`` costs microseconds that the hot path need not pay."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str, int], Counter] = {}
        self._durations: dict[str, Histogram] = {}
        self._upstreams: dict[str, Histogram] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        counter = self._counts.get(key)
        if counter is None:
            counter = self._counts[key] = requests_total.labels(route, method, str(status))
        counter.inc()
        histogram = self._durations.get(route)
        if histogram is None:
            histogram = self._durations[route] = request_duration.labels(route)
        histogram.observe(seconds)

    def upstream(self, service: str, seconds: float) -> None:
        histogram = self._upstreams.get(service)
        if histogram is None:
            histogram = self._upstreams[service] = upstream_duration.labels(service)
        histogram.observe(seconds)
