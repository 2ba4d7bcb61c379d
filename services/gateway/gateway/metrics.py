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
| ``gateway_jwks_lease_total`` | outcome | renewals of stale keys through the Redis lease (below) |
| ``gateway_rate_limited_total`` | limit | 429s (``subject``, ``client``, ``address``, ``in_flight``) |
| ``gateway_ratelimit_failopen_total`` | (none) | requests let through unchecked while Redis is unreachable |
| ``gateway_audit_dropped_total`` | (none) | denial audit events dropped (queue full or undeliverable) |
| ``gateway_upstream_errors_total`` | service, kind | errors (connect, timeout, protocol, busy, identity_*) |
| ``gateway_upstream_retries_total`` | service, reason | requests sent again (``idempotent``, ``unsent``) |
| ``gateway_upstream_connections`` | service, state | pooled connections (``busy``, ``idle``), all workers |
| ``gateway_upstream_pool_waits_total`` | service | requests that waited for a pooled connection |
| ``gateway_response_buffer_bytes`` | (none) | response bytes read ahead of their clients |
| ``gateway_response_streamed_total`` | service | large responses streamed (no read-ahead room) |
| ``gateway_request_body_buffer_bytes`` | (none) | request bytes held before forwarding (budgeted) |
| ``gateway_request_body_budget_refusals_total`` | (none) | bodies refused 503: no room in the budget |
| ``gateway_response_cutoffs_total`` | service | streamed responses cut off: a slow client |
| ``gateway_revocations_received_total`` | outcome | revocation events (``added``, ``expired``, ``ignored``) |
| ``gateway_revocation_feed_errors_total`` | (none) | times the revocation reader lost Redis |
| ``gateway_revoked_tokens`` | (none) | revoked, unexpired tokens in the deny set |

(The revocation series are defined in ``gateway/revocations.py``.)

``gateway_jwks_lease_total{outcome}`` follows the one renewal of an issuer's stale key set that the
replicas share (``gateway:jwks-refresh:<issuer>``, :mod:`gateway.jwks`): ``taken`` this process got the
lease and asks the provider for everyone; ``held`` another replica had it, so this one keeps serving the
stale keys and looks in Redis again shortly; ``handed_off`` it then found the holder's copy there (what
a ``held`` should end in); ``lapsed`` it found no newer copy and the lease free again — the holder's
renewal ended without leaving one (its fetch failed, or it stopped and the lease ran out) — and renews
the keys itself. ``lapsed`` beside ``gateway_jwks_fetch_total{outcome!="ok"}`` is a provider failing;
``lapsed`` alone, replicas dying in the middle of renewals.

Every label value comes from a fixed set or from configuration (issuer URLs, route templates), never
from request data, so cardinality is bounded: a method other than the usual seven is ``other``
(:func:`svckit.metrics.method_label`, applied when the sums are added, off the request path). With
several workers the values aggregate through ``PROMETHEUS_MULTIPROC_DIR`` (set by ``python -m gateway``).
"""

from __future__ import annotations

import bisect

from prometheus_client import Counter, Gauge, Histogram
from svckit.metrics import LATENCY_BUCKETS, method_label

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
jwks_lease = Counter(
    "gateway_jwks_lease_total",
    "Renewals of a stale key set through the replicas' shared Redis lease, by outcome: taken, held "
    "(another replica renews; stale keys serve meanwhile), handed_off (its copy was read), lapsed (the "
    "lease ended without a copy; renewed here).",
    ["outcome"],
)
for _outcome in ("taken", "held", "handed_off", "lapsed"):
    jwks_lease.labels(_outcome)
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
    "Requests that failed on the way to or from an upstream, by service and kind (connect, timeout, "
    "protocol; busy: every pooled connection stayed busy for UPSTREAM_POOL_WAIT_SECONDS, answered 503 "
    "upstream_busy; identity_clock_skew, upstream_identity_refused: the service refused the identity "
    "the gateway signed, answered 502).",
    ["service", "kind"],
)
upstream_retries = Counter(
    "gateway_upstream_retries_total",
    "Requests sent once more on a fresh connection: idempotent ones whose pooled connection was closed"
    " under them, or any whose request provably never reached the upstream (unsent).",
    ["service", "reason"],
)

upstream_connections = Gauge(
    "gateway_upstream_connections",
    "Connections in the gateway's upstream pools, by service and state (busy, idle); summed over workers.",
    ["service", "state"],
    multiprocess_mode="livesum",
)
response_buffer_bytes = Gauge(
    "gateway_response_buffer_bytes",
    "Bytes of upstream responses read ahead of their clients (GATEWAY_RESPONSE_BUFFER_BYTES per worker);"
    " summed over workers.",
    multiprocess_mode="livesum",
)
request_body_buffer_bytes = Gauge(
    "gateway_request_body_buffer_bytes",
    "Bytes of request bodies held (read whole before they go upstream) under"
    " GATEWAY_REQUEST_BODY_BUFFER_BYTES per worker; summed over workers.",
    multiprocess_mode="livesum",
)
request_body_budget_refusals = Counter(
    "gateway_request_body_budget_refusals_total",
    "Requests answered 503 request_body_budget: their body did not fit what was left of the worker's"
    " GATEWAY_REQUEST_BODY_BUFFER_BYTES.",
)
requests_in_flight = Gauge(
    "gateway_requests_in_flight",
    "API requests admitted and not yet answered whole (GATEWAY_MAX_IN_FLIGHT_PER_SUBJECT counts them per"
    " subject); summed over workers, written once a second.",
    multiprocess_mode="livesum",
)
requests_in_flight_busiest = Gauge(
    "gateway_requests_in_flight_busiest_subject",
    "The most API requests one subject has in flight in one worker (refused beyond"
    " GATEWAY_MAX_IN_FLIGHT_PER_SUBJECT); the largest over workers, written once a second.",
    multiprocess_mode="livemax",
)
response_streamed = Counter(
    "gateway_response_streamed_total",
    "Responses over 64 KiB relayed while holding their upstream connection, because the read-ahead"
    " budget had no room for them (or they gave no Content-Length).",
    ["service"],
)
response_cutoffs = Counter(
    "gateway_response_cutoffs_total",
    "Streamed responses cut off (client connection closed) because the client had not taken them"
    " within UPSTREAM_READ_TIMEOUT_SECONDS, to give the upstream connection back.",
    ["service"],
)
upstream_pool_waits = Counter(
    "gateway_upstream_pool_waits_total",
    "Requests that found every pooled connection to a service busy and waited for one.",
    ["service"],
)


class RequestMetrics:
    """Per-request metrics, aggregated in the worker and written to Prometheus every second.

    With several workers every ``inc``/``observe`` of prometheus_client is a locked write to a
    memory-mapped file (about 5 per request, the largest single cost of a cached request after the
    proxying itself). Here a request costs a few dictionary updates; :meth:`flush` (run every
    ``FLUSH_SECONDS`` and at shutdown) adds the sums. A scrape may therefore lag by up to a second.
    Histograms are filled through the children's bucket values, which is how ``observe`` stores
    them, so exposition is identical to observing one value at a time.
    """

    FLUSH_SECONDS = 1.0

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str, int], int] = {}
        self._durations: dict[str, list[float]] = {}  # per route: bucket counts…, then the sum
        self._upstreams: dict[str, list[float]] = {}
        self._bounds = (*(float(b) for b in LATENCY_BUCKETS), float("inf"))

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        self._counts[key] = self._counts.get(key, 0) + 1
        self._add(self._durations, route, seconds)

    def upstream(self, service: str, seconds: float) -> None:
        self._add(self._upstreams, service, seconds)

    def _add(self, table: dict[str, list[float]], key: str, seconds: float) -> None:
        cells = table.get(key)
        if cells is None:
            cells = table[key] = [0.0] * (len(self._bounds) + 1)
        cells[bisect.bisect_left(self._bounds, seconds)] += 1
        cells[-1] += seconds

    def flush(self) -> None:
        counts, self._counts = self._counts, {}
        for (route, method, status), count in counts.items():
            requests_total.labels(route, method_label(method), str(status)).inc(count)
        for table, histogram in ((self._durations, request_duration), (self._upstreams, upstream_duration)):
            drained = dict(table)
            table.clear()
            for key, cells in drained.items():
                _add_to_histogram(histogram.labels(key), cells)


def _add_to_histogram(child: Histogram, cells: list[float]) -> None:
    buckets = child._buckets
    for index, count in enumerate(cells[:-1]):
        if count:
            buckets[index].inc(count)
    child._sum.inc(cells[-1])
