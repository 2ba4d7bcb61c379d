"""HTTP metrics, and the metrics listener that serves them on a port of their own.

Labels are route *templates* (``/timesheets/{id}``), never raw paths, and methods are the usual seven
or ``other`` (:func:`method_label`), so cardinality stays bounded no matter what clients send.

``/metrics`` is never served on the public listener (an Ingress in front of the gateway or the
identity provider would publish it): :class:`MetricsServer` is a second, tiny HTTP listener on
``METRICS_PORT`` in the same process, started by ``python -m <service>`` before uvicorn. It runs in a
thread, so it keeps answering while the event loop is busy or draining, and it lives in the process
that outlives uvicorn's workers: with several workers (``PROMETHEUS_MULTIPROC_DIR`` set) that is the
supervisor, which aggregates every worker's samples and reports its own ``process_*`` series — whose
start time changes exactly when the container restarts, which is what restart alerts want. Under
DEV_RELOAD (development only) the application runs in the reloader's child, and so does the listener,
on the socket the reloader bound once: the very metrics a single process serves — the pool's gauge,
read from the pool at scrape time, among them — starting over at each reload like the application.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Metric,
    ProcessCollector,
    generate_latest,
)
from prometheus_client import REGISTRY as DEFAULT_REGISTRY

from . import probes
from .listen import ALL_IPV4_ADDRESSES, bind_tcp
from .metricfiles import alive, compact_dead_processes, pid_of, scrape_lock

log = logging.getLogger("svckit.metrics")

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

http_refused = Counter(
    "http_refused_total",
    "Requests the HTTP layer answered itself before any route saw them (400 unparsable, 408 head or "
    "body too slow, 414 target too long, 431 head too large, 503 a connection over the worker's "
    "MAX_CONNECTIONS_PER_WORKER, answered before it sent anything), by status code; 408 also counts a "
    "body that stopped after its response began (the connection ended, no answer could be sent).",
    ["status"],
)

http_send_timeouts = Counter(
    "http_send_timeouts_total",
    "Connections the HTTP layer ended because the client stopped taking its response: nothing taken "
    "for RESPONSE_SEND_TIMEOUT_SECONDS while writing was paused or a closing connection still held "
    "unsent bytes (the rest was dropped, the application heard http.disconnect).",
)

http_abandoned = Counter(
    "http_requests_abandoned_total",
    "Requests the HTTP layer dropped unserved because their client had closed the connection while "
    "they waited for a worker that was behind (frozen, starved of CPU, flooded): no one was there to "
    "read an answer (svckit.abandoned); and requests whose client closed the connection before the "
    "route had read their body or begun its answer (svckit.middleware).",
)

worker_stuck_kills = Counter(
    "worker_stuck_kills_total",
    "Worker processes the supervisor killed (SIGKILL) and replaced because their event loop had not "
    "run for WORKER_STUCK_SECONDS (svckit.watchdog): a blocked loop — a CPU-bound bug, a deadlock, a "
    "blocking call — whose connections hung while the other workers answered the probes; or had not "
    "run once WORKER_START_SECONDS after the worker was started (a hung start). Their stacks are logged.",
)

http_max_connections = Gauge(
    "http_max_connections",
    "Open connections each worker of this process holds at most before it answers 503: "
    "MAX_CONNECTIONS_PER_WORKER, or less when it was not set and the open-file limit could not hold "
    "the default (svckit.fdlimit; a warning line at start).",
    multiprocess_mode="livemax",  # the gateway: set once, in the supervisor, before the workers start
)

UNMATCHED_ROUTE = "unmatched"

#: the methods a ``method`` label names; any other is :data:`OTHER_METHOD`
METRIC_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "other"


def method_label(method: str) -> str:
    """The ``method`` label of a request. The parser takes 34 methods (WebDAV's, SUBSCRIBE, PURGE,
    QUERY...), each a label value of its own on every route template until this: any caller could add
    ~16 series per (route, method) — ~10,000 on a service of 15 routes — with a few hundred requests,
    refused ones included. No route here takes any other method, so nothing is lost but the name."""
    return method if method in METRIC_METHODS else OTHER_METHOD


_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def observe(route: str, method: str, status: int, seconds: float) -> None:
    """Count and time one request. The labelled children are looked up once per (route, method,
    status) — a bounded set: templates, not paths, and the parser's methods — instead of through
    ``labels()`` every time."""
    key = (route, method, status)
    children = _children.get(key)
    if children is None:
        label = method_label(method)
        children = _children[key] = (
            http_requests.labels(route, label, str(status)),
            http_duration.labels(route, label),
        )
    children[0].inc()
    children[1].observe(seconds)


def render_metrics() -> tuple[bytes, str]:
    """The exposition text for this process, or for all workers in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        registry.register(_WorkerFiles(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
        ProcessCollector(registry=registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(DEFAULT_REGISTRY), CONTENT_TYPE_LATEST


class _WorkerFiles:
    """Every worker's samples, from the multiprocess directory's files, without the empty ones.

    prometheus_client creates a process's file and sizes it in two steps, and its reader takes a
    0-byte file for a corrupt one: a scrape in between answered 500 with nothing at all (client_python
    #1199; seen right after a start, as the workers made their first files), and a worker killed in
    between left the empty file, named after a pid that never comes back, failing every scrape until
    a restart. A file is never shrunk, so one seen empty holds no sample yet, and one seen sized has
    its header; a file that claims more than it holds still fails the scrape, as it should.
    """

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)

    def collect(self) -> Iterable[Metric]:
        from prometheus_client import multiprocess

        with scrape_lock(self.directory):  # dead workers' files are not merged meanwhile (svckit.metricfiles)
            files = []
            for path in self.directory.glob("*.db"):
                try:
                    if path.stat().st_size > 0:
                        files.append(str(path))
                except FileNotFoundError:  # a dead worker's live gauges, dropped since the glob
                    continue
            merged: Iterable[Metric] = multiprocess.MultiProcessCollector.merge(files, accumulate=True)  # type: ignore[no-untyped-call]
            return merged


def forget_dead_processes() -> list[int]:
    """Settle the files of processes that are gone from ``PROMETHEUS_MULTIPROC_DIR``; their pids.
    A gauge in a ``live*`` mode is meant to count only live processes, but its file stays until
    someone says the process died: a worker that crashed and was replaced, or a child DEV_RELOAD
    restarted, kept adding its last values (an upstream pool's connections counted twice, the oldest
    task success of a process that no longer runs). Its counters and histograms must keep counting,
    but not as files of their own, which piled up with every death: they are merged into the
    directory's archives (:func:`svckit.metricfiles.compact_dead_processes`). Said by whoever starts
    the next process (the supervisor, the reloaded child), before it starts it."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return []
    from prometheus_client import multiprocess

    dead: set[int] = set()
    for path in Path(directory).glob("gauge_live*_*.db"):
        pid = pid_of(path)
        if pid is not None and not alive(pid):
            dead.add(pid)
    for pid in dead:
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
    try:
        merged = compact_dead_processes(directory)
    except Exception:  # bookkeeping must never keep the supervisor from starting the next worker
        log.exception("dead processes' metrics files could not be merged")
        merged = []
    return sorted(dead | set(merged))


METRICS_PATH = "/metrics"

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def metrics_wsgi_app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """``GET /metrics`` (and HEAD), and the kubelet's probes (:mod:`svckit.probes`) in a process that
    serves; 404 for any other path, 405 for any other method."""
    probe = probes.wsgi_answer(environ.get("PATH_INFO", ""))
    if probe is not None:
        status, headers, body = probe
        start_response(status, headers)
        return [body]
    if environ.get("PATH_INFO") != METRICS_PATH:
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: metrics are at /metrics\n"]
    if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
        start_response("405 Method Not Allowed", [("Allow", "GET, HEAD")])
        return [b""]
    try:
        body, content_type = render_metrics()
    except Exception:  # one line in the JSON log, not wsgiref's bare traceback on stderr
        log.exception("metrics scrape failed")
        start_response("500 Internal Server Error", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"metrics could not be collected; the service's log says why\n"]
    start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [b""] if environ["REQUEST_METHOD"] == "HEAD" else [body]


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    """One thread per scrape; never blocks process exit. Serves a socket bound by
    :func:`bind_listener` (possibly in another process: DEV_RELOAD's reloader binds it once)."""

    daemon_threads = True

    def process_request(self, request: Any, client_address: Any) -> None:
        """A probe whose request is there already is answered on this thread (:func:`svckit.probes.
        answer_at_once`); anything else in a thread of its own."""
        if not probes.answer_at_once(request):
            super().process_request(request, client_address)

    def server_bind(self) -> None:
        """The socket is bound already: only what HTTPServer and WSGIServer derive from its address."""
        host, port = self.server_address = self.socket.getsockname()[:2]
        self.server_name = socket.getfqdn(host)
        self.server_port = port
        self.setup_environ()


def bind_listener(host: str, port: int) -> socket.socket:
    """The metrics listener's socket, bound (as :func:`svckit.listen.bind_tcp` binds ``BIND_HOST``)
    and listening; ``OSError`` when the port is taken."""
    listener = bind_tcp(host, port)  # "::": both families, as the API's listener (svckit.listen)
    try:
        listener.listen(_ThreadingServer.request_queue_size)
    except OSError:
        listener.close()
        raise
    return listener


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not access-logged (every few seconds, forever)."""


class MetricsServer:
    """The metrics listener: ``GET /metrics`` on ``host:port`` in a daemon thread.

    ``port=0`` picks a free port (tests); :attr:`port` is the one bound. ``start`` raises ``OSError``
    when the port is taken, before anything else of the service starts. ``listener``: a socket
    :func:`bind_listener` bound already (``host`` and ``port`` are then only what it was bound to).
    """

    def __init__(self, host: str, port: int, *, listener: socket.socket | None = None) -> None:
        self.host = host
        self.requested_port = port
        self._listener = listener
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the metrics listener is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        if ":" in host:
            host = "[::1]" if host == "::" else f"[{host}]"
        return f"http://{host}:{self.port}{METRICS_PATH}"

    def start(self) -> MetricsServer:
        listener = self._listener or bind_listener(self.host, self.requested_port)
        if listener.family == socket.AF_INET and ":" in self.host:  # "::" where the kernel has no IPv6
            self.host = ALL_IPV4_ADDRESSES
        server = _ThreadingServer(listener.getsockname()[:2], _QuietHandler, bind_and_activate=False)
        server.socket.close()  # the one socketserver made; it serves the bound one
        server.socket = listener
        server.server_bind()
        server.set_app(metrics_wsgi_app)
        self._server = server
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-listener", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
