"""HTTP metrics and the ``/metrics`` endpoint.

Labels are route *templates* (``/timesheets/{id}``), never raw paths, so cardinality stays bounded no
matter what clients send. When ``PROMETHEUS_MULTIPROC_DIR`` is set (a service run with several worker
processes) the endpoint aggregates every worker's samples.
"""

from __future__ import annotations

import multiprocessing
import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from starlette.requests import Request
from starlette.responses import Response

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

http_requests = Counter(
    "http_requests_total",
    "HTTP requests answered, by route template, method and status code.",
    ["route", "method", "status"],
)
http_duration = Histogram(
    "http_request_duration_seconds",
    "Time from receiving a request to the end of its response, by route template and method.",
    ["route", "method"],
    buckets=LATENCY_BUCKETS,
)

UNMATCHED_ROUTE = "unmatched"


def observe(route: str, method: str, status: int, seconds: float) -> None:
    http_requests.labels(route, method, str(status)).inc()
    http_duration.labels(route, method).observe(seconds)


def _supervisor_pid() -> int | str:
    """``process_*`` samples of the process that outlives its workers (uvicorn's supervisor).

    Scrapes land on any worker; reporting the answering worker would make ``process_start_time_seconds``
    flip between workers and look like restarts. The supervisor's start time changes exactly when the
    container restarts, which is what restart alerts want.
    """
    parent = multiprocessing.parent_process()
    return parent.pid if parent is not None and parent.pid is not None else "self"


def render_metrics() -> tuple[bytes, str]:
    """The exposition text for this process, or for all workers in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        ProcessCollector(pid=_supervisor_pid, registry=registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(DEFAULT_REGISTRY), CONTENT_TYPE_LATEST


async def metrics_endpoint(request: Request) -> Response:
    body, content_type = render_metrics()
    return Response(body, media_type=content_type)
