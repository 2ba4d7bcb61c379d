"""How every service is served: uvicorn with the kit's HTTP protocol, and a shutdown that loses nothing.

**Problem bodies from the server layer.** Requests the HTTP parser refuses never reach the
application, so uvicorn answered them itself in plain text. :class:`ProblemHttpProtocol` (httptools,
as uvicorn's default) answers them as RFC 9457 problem documents like everything else: a request that
is not valid HTTP/1.1 — both ``Content-Length`` and ``Transfer-Encoding``, two lengths, a bad chunk,
control characters in a header — is a 400 whose detail is the parser's reason; a request target over
:data:`MAX_TARGET_BYTES` a 414; a head over :data:`MAX_HEAD_BYTES` or with more than
:data:`MAX_HEADERS` fields a 431 (httptools has no limit of its own: a megabyte of headers was read
and handed to the application); uvicorn's own last-resort 500 a problem too. ``Host`` as RFC 9112
§3.2 has it: an HTTP/1.1 request without one, with more than one, or with a value that is no
``host[:port]`` is a 400 (the gateway forwards the host as ``X-Forwarded-Host`` and checks DPoP proofs'
``htu`` against it; a proxy in front may have routed on another reading). Two ``Content-Type``
lines are a 400 as well (a singleton, RFC 9110 §8.3): every reader here takes the first, but a proxy
or a framework in front may take the last, and the body would be read as two media types. The head
limit is also counted in raw bytes while a head is incomplete: httptools hands a header over only once
its line ends and buffers its value until then, so one endless header value was buffered without bound (64 MiB
by one connection in a few seconds) and never answered. A read that finds a head open and leaves it
open was all head: such reads are counted (a lower bound of the head's size, so a head within the
limit is never refused), and a read larger than the limit is fed in slices of the limit, so what a
connection can make httptools buffer is about twice the limit (the slice a head began in is not
counted: where in it the request began, httptools does not say).

**Clients that stop sending.** uvicorn times out only an idle keep-alive connection, and only after a
first response: a connection that sent half a request head and went quiet (slowloris), one that
never sent anything, or one whose declared body never arrived was held — its socket and its memory —
for as long as the client liked. Every connection now has one timer from the start (the keep-alive
timer, armed once per connection and re-armed by itself, never per request), which looks at what the
connection is waiting for when it fires: an idle connection is closed after ``timeout_keep_alive``;
a request head not complete :data:`REQUEST_HEAD_TIMEOUT_SECONDS` after its first byte is answered 408
and the connection ends. It fires at least once per the shorter of those two periods, so the head's
deadline is met on time.

A request whose body is still to come once its head has been read (most bodies come with the head
and need nothing) gets a timer of its own, due :data:`REQUEST_BODY_TIMEOUT_SECONDS` after the last
byte; when it fires early it re-arms itself for that long after the latest byte, so bytes that keep
coming cost nothing per read, and a body that stops arriving is refused when the timeout ends — not up
to a period of the connection's timer later (5 s with the defaults), as it was. The silence counts
only while the server is ready to read: not while reading is paused because the application has not
consumed what came, nor while the client waits for ``100 Continue``; when either ends (resumed
reading is a flow-control transition, the 100 a branch of the request's first ``receive``: neither is
per read) the silence counts from then. A body that stops arriving is answered 408 while nothing of
the response has left (the application hears ``http.disconnect``), and ends the connection once the
response has begun — one that streams while the application still reads the body: a 408 can no
longer be sent, but neither the connection nor the application's task waiting for the body may be
held for as long as the client likes. Both are counted in ``http_refused_total{status="408"}``. The
settings ``REQUEST_HEAD_TIMEOUT_SECONDS`` and ``REQUEST_BODY_TIMEOUT_SECONDS`` reach the protocol
through :class:`ServingConfig`.

**Clients that stop reading.** A client that stops taking its response (a streamed one, or one
larger than the socket's buffers) made the server's writes pause for ever: the connection, the
response's bytes and the application's task waiting to write were held as long as the client liked.
The send timeout (:data:`RESPONSE_SEND_TIMEOUT_SECONDS`, nginx's ``send_timeout``) is a timer armed
only when writing pauses (a flow-control transition: ``pause_writing``; ``resume_writing`` cancels it,
so nothing per write) and when a connection is closed with bytes still in its buffer (a close waits
for them to leave, so one whose client reads nothing never ended). When it fires, a client that took
some of what was waiting since it was armed (the transport's buffer and, on Linux, the socket's send
queue, read with one ``ioctl``: the buffer alone shrinks only once the kernel has room for a large
part of it) gets it again; one that took nothing has its connection reset (``SO_LINGER`` 0: the
kernel drops its send queue too, as nginx's ``reset_timedout_connection``) and counted in
``http_send_timeouts_total``; the application hears ``http.disconnect`` and what it still sends is
dropped, as for any client gone, so its task ends.

**Open connections per worker** (:data:`MAX_CONNECTIONS_PER_WORKER`). Each connection within its
timeouts — idle, a head or a body arriving slowly, a response taken slowly — costs a socket and
memory, and nothing bounded how many a worker held. A connection beyond the limit is answered 503
(problem, ``Retry-After``) and closed (lingering, so the answer is not lost to a reset); counted in
``http_refused_total{status="503"}``. Each is a file descriptor: the open-file limit is checked
against the limit at start (:mod:`svckit.fdlimit`). It is not refused as it is accepted: it has
:data:`OVER_LIMIT_HEAD_SECONDS` to send one request head, and a probe's (:data:`PROBE_PATHS`) is served,
then the connection closed (a request pipelined behind it is not read: left unanswered, never answered
before the probe); any other head is refused the moment it is read, without a task, and a
connection that sends none within the window is refused when it ends. A worker at its limit — the
slowloris this limit is for — still answers the kubelet: refused probes would restart the pod under the
attack, with every request in flight.
uvicorn's ``limit_concurrency`` answers 503 too, but only once a request head has been parsed: a
connection that never completes a head — the slowloris and the idle client this limit is for — is
never refused by it, and it counts requests in flight too, which the kit bounds elsewhere (pools,
queues). The count is uvicorn's own set of the worker's connections, from ``connection_made`` to
``connection_lost``, which every way a connection ends passes through. Stopping to ``accept()``
instead would leave clients waiting in the kernel's queue with no answer, and has no API in asyncio's
or uvloop's servers.

**Shutdown without resets** (SIGTERM, with one worker or several). Stopping must refuse new
connections cleanly and finish what was accepted:

* uvicorn's multi-worker supervisor held its copy of the shared listening socket until every worker
  had drained, so the kernel kept completing handshakes that no worker would ever accept, and reset
  them all when the supervisor finally exited (6-10 per run). :class:`Supervisor` closes its copy at
  once and forwards the signal: the listening socket disappears when the last worker stops accepting,
  and later connection attempts are refused (nothing was sent: any client may retry elsewhere);
* each worker (:class:`DrainingServer`) accepts what the kernel had already queued before it closes
  its listener, instead of leaving those connections to be reset;
* but the kernel keeps completing handshakes until the listener is closed, and one that completed
  between the last ``accept()`` and the ``close()`` was reset (about one connection in 10,000 under the
  fault suite's load: the client's connect failed with ECONNRESET). So the door is shut first
  (:func:`refuse_new_connections`: a socket filter that drops new SYNs, Linux only), then the queue is
  drained, then the socket closed; a client whose SYN was dropped retransmits it about a second later
  and is refused by then. The supervisor shuts the door of the shared socket, since one worker
  stopping alone (a crash replaced, say) must not stop the others from accepting;
* an idle keep-alive connection is not closed under a request that may be on its way: it stays open
  for :data:`IDLE_GRACE_SECONDS`; a request arriving meanwhile is served with ``Connection: close``
  (as is the response of every request in flight), then the connection ends.

**The request cycle** is :class:`svckit.cycle.LeanCycle` for every request: uvicorn's ASGI with the
response head framed and checked once and sent in the same write as a small body (one syscall and
one TCP segment per response instead of two), and the last-resort 500 a problem document. The
connection's one timer (keep-alive, head) is armed once per connection and re-arms itself, rather
than being made and cancelled per request; only a request whose body is still to come after its head
has a timer of its own.

**Lingering close.** A server that answers before it has read the whole request (a 413 from the
``Content-Length`` alone, a 400 at the first bad byte) and then closes the socket while the client is
still sending makes the kernel reset the connection, and the reset destroys the answer the client
had not read yet: it saw a connection reset instead of its 413. Whenever the server ends a connection,
:class:`ProblemHttpProtocol` therefore sends its FIN after the response (``write_eof``) and reads and
discards what the client still sends, until the client closes, :data:`LINGER_SECONDS` pass or
:data:`LINGER_BYTES` arrive — what nginx calls lingering close.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import importlib.util
import json
import logging
import multiprocessing
import multiprocessing.forkserver
import os
import re
import signal
import socket
import struct
import sys
import termios
import threading
import time
import urllib.parse
from http import HTTPStatus
from types import FrameType
from typing import Any, Final, cast

import httptools
import uvicorn
from starlette.types import ASGIApp
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from . import preloading, probes
from .abandoned import client_gone, pace
from .appimport import import_application, start_failure
from .cycle import LeanCycle
from .listen import bind_tcp, url_host
from .metricfiles import alive
from .metrics import forget_dead_processes, http_abandoned, http_refused, http_send_timeouts
from .problems import PROBLEM_JSON
from .proxies import unmapped
from .stacks import StackFile, collect, innermost, install, shown
from .watchdog import NOT_YET, WORKER_START_SECONDS, WORKER_STUCK_SECONDS, Beat, Watchdog, Watched, beating

log = logging.getLogger("svckit.server")
uvicorn_log = logging.getLogger("uvicorn.error")

MAX_TARGET_BYTES = 16 * 1024
MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100
#: a ``Host`` field's value (RFC 9112 §3.2, RFC 3986 §3.2.2-3): an IP literal or a reg-name (empty
#: too: a target without an authority), then an optional port
_HOST_VALUE = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]*)(?::[0-9]*)?")
IDLE_GRACE_SECONDS = 1.0
#: the server closes a connection idle this long (uvicorn's default, set explicitly where we serve)
KEEP_ALIVE_SECONDS = 5
#: how long a client of these servers may keep an idle connection for reuse: a second less, so it
#: never sends a request on one the server is closing at that moment (a POST lost that way is not
#: retried); every pool of ours that talks to them uses this
PEER_IDLE_SECONDS = KEEP_ALIVE_SECONDS - 1.0
LINGER_SECONDS = 2.0
LINGER_BYTES = 16 * 1024 * 1024
#: a request head must be complete this long after its first byte (REQUEST_HEAD_TIMEOUT_SECONDS): a
#: real client sends a head in one go; one that trickles it holds a connection for nothing
REQUEST_HEAD_TIMEOUT_SECONDS = 10.0
#: a request body the server waits for may be silent this long (REQUEST_BODY_TIMEOUT_SECONDS): an
#: inactivity bound, as nginx's ``client_body_timeout``, generous for a slow uplink
REQUEST_BODY_TIMEOUT_SECONDS = 30.0
#: a response the client stops taking may wait this long (RESPONSE_SEND_TIMEOUT_SECONDS): an
#: inactivity bound, as nginx's ``send_timeout``, counted while writing is paused (or a closing
#: connection still holds unsent bytes) and restarted whenever the client has taken some
RESPONSE_SEND_TIMEOUT_SECONDS = 30.0
#: connections one worker process holds open at most (MAX_CONNECTIONS_PER_WORKER); one more is
#: answered 503 and closed — unless it asks for a probe's path (:data:`PROBE_PATHS`) at once
MAX_CONNECTIONS_PER_WORKER = 2048
#: what a connection refused at that limit is told to wait before trying again
CONNECTION_LIMIT_RETRY_AFTER = b"1"
CONNECTION_LIMIT_DETAIL = "The server holds as many connections as it may: try again shortly."  # not how many
CONNECTION_LIMIT_HEADERS = ((b"retry-after", CONNECTION_LIMIT_RETRY_AFTER),)
#: served even over the limit: a worker at its limit (a slowloris, say) still answers the kubelet, or
#: its liveness probe fails and the pod is restarted under the attack, with every request in flight
PROBE_PATHS = frozenset({"/healthz", "/readyz"})
#: how long a connection over the limit may take to send its request head (at most the head timeout):
#: a probe sends it at once; anything else is refused the moment its head is read
OVER_LIMIT_HEAD_SECONDS = 1.0
#: the ioctl that reads a TCP socket's send queue (Linux; elsewhere only the transport's buffer counts)
_TIOCOUTQ: int | None = getattr(termios, "TIOCOUTQ", None) if sys.platform.startswith("linux") else None
#: SO_LINGER on, 0 s: closing the socket resets the connection and drops what it had not sent
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)


class ServingConfig(uvicorn.Config):
    """uvicorn's configuration and the kit's serving settings it has no field for: a module-level
    class, so the multi-worker supervisor can hand it to its workers like uvicorn's own."""

    def __init__(
        self,
        *args: Any,
        request_head_timeout: float = REQUEST_HEAD_TIMEOUT_SECONDS,
        request_body_timeout: float = REQUEST_BODY_TIMEOUT_SECONDS,
        response_send_timeout: float = RESPONSE_SEND_TIMEOUT_SECONDS,
        max_connections: int = MAX_CONNECTIONS_PER_WORKER,
        worker_stuck_seconds: float = WORKER_STUCK_SECONDS,
        worker_start_seconds: float = WORKER_START_SECONDS,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.worker_stuck_seconds = worker_stuck_seconds
        self.worker_start_seconds = worker_start_seconds
        self.request_head_timeout = request_head_timeout
        self.request_body_timeout = request_body_timeout
        self.response_send_timeout = response_send_timeout
        self.max_connections = max_connections

    def bind_socket(self) -> socket.socket:
        """uvicorn's, but ``BIND_HOST`` as :mod:`svckit.listen` binds it: ``::`` takes both families
        (uvicorn left IPV6_V6ONLY to the kernel's default, and ``0.0.0.0`` was IPv4 only)."""
        if self.uds is not None or self.fd is not None:
            return super().bind_socket()
        try:
            sock = bind_tcp(self.host, self.port)
        except OSError as exc:
            uvicorn_log.error(exc)
            sys.exit(STARTUP_FAILURE)
        host, port = sock.getsockname()[:2]
        scheme = "https" if self.is_ssl else "http"
        uvicorn_log.info("Uvicorn running on %s://%s:%d (Press CTRL+C to quit)", scheme, url_host(host), port)
        sock.set_inheritable(True)
        return sock


REFUSAL_LOG_SECONDS = 10.0


class RefusalLog:
    """What the HTTP layer refused: every refusal counted in ``http_refused_total{status}`` (and every
    connection it ended for a client that stopped reading in ``http_send_timeouts_total``), and one
    warning line per :data:`REFUSAL_LOG_SECONDS` at most for all of them, with how many there were
    since the last (a line per refusal would let the flood it reports flood the logs too)."""

    def __init__(self) -> None:
        self._children: dict[int, Any] = {}
        self._last_line = float("-inf")
        self._unlogged = 0

    def note(self, status: int, detail: str) -> None:
        child = self._children.get(status)
        if child is None:
            child = self._children[status] = http_refused.labels(str(status))
        child.inc()
        self._line("request refused by the HTTP layer", {"status": status, "detail": detail})

    def abandoned(self) -> None:
        """A request dropped unserved: its client left while it waited (:mod:`svckit.abandoned`)."""
        http_abandoned.inc()
        self._line("request dropped by the HTTP layer", {"reason": "client_gone"})

    def left_mid_request(self) -> None:
        """A request whose client closed the connection before the application had read its body (or
        answered it): nothing could be answered. Counted with the requests dropped unserved, as the
        same client gone (:mod:`svckit.middleware`)."""
        http_abandoned.inc()
        self._line("request abandoned by its client", {"reason": "client_gone"})

    def upgrade_ignored(self) -> None:
        """A request asking to switch protocols (``Upgrade: h2c``, ``websocket``): served as the plain
        HTTP/1.1 request it also is (RFC 9110 §7.8 lets a server ignore ``Upgrade``; nothing here speaks
        another protocol). uvicorn wrote two warnings for each such request — "Unsupported upgrade
        request." and one telling to ``pip install 'uvicorn[standard]'`` — unthrottled: any anonymous
        client could flood the logs with them. Now one line per :data:`REFUSAL_LOG_SECONDS` at most."""
        self._line("upgrade request served as plain HTTP", {"reason": "upgrade_ignored"})

    def send_timed_out(self, detail: str) -> None:
        http_send_timeouts.inc()
        self._line("connection ended by the HTTP layer", {"reason": "send_timeout", "detail": detail})

    def _line(self, message: str, extra: dict[str, Any]) -> None:
        self._unlogged += 1
        now = time.monotonic()
        if now - self._last_line >= REFUSAL_LOG_SECONDS:
            log.warning(message, extra={**extra, "refused_since_last_line": self._unlogged})
            self._last_line, self._unlogged = now, 0


refusals = RefusalLog()


class _Refusal(Exception):
    """Raised inside a parser callback to refuse the request with ``status`` (httptools wraps it)."""

    def __init__(self, status: int, detail: str, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers


def problem_bytes(status: int, detail: str, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """A complete HTTP/1.1 response carrying a problem document, ending the connection."""
    phrase = HTTPStatus(status).phrase
    body = json.dumps({"type": "about:blank", "title": phrase, "status": status, "detail": detail}).encode()
    head = [f"HTTP/1.1 {status} {phrase}\r\n".encode()]
    head += [name + b": " + value + b"\r\n" for name, value in default_headers]
    head += [
        b"content-type: " + PROBLEM_JSON.encode() + b"\r\n",
        b"content-length: " + str(len(body)).encode() + b"\r\n",
        b"cache-control: no-store\r\n",
        b"connection: close\r\n\r\n",
    ]
    return b"".join(head) + body


def _transfer_coding_refusal(headers: list[tuple[bytes, bytes]], value: bytes) -> _Refusal | None:
    """The :class:`_Refusal` of a ``Transfer-Encoding`` field line (``value``, after the lines in
    ``headers`` read so far) whose codings no body can be framed by here, else None. Only ``chunked``
    is understood (a token: any case). llhttp reads any list whose last coding is chunked as chunked,
    so ``gzip, chunked`` and ``xyz, chunked`` were de-chunked and handed on as if the other coding were
    not there (an entry stored; a body really gzipped a misleading "not UTF-8"). A coding besides
    chunked is a 501 naming it (RFC 9112 §6.1: a server "SHOULD respond with 501"). Chunked twice
    (§7: "MUST NOT") or not last (§6.3) is a 400: llhttp refuses both itself as it parses the value,
    these are the backstop. Either ends the connection (a refusal from the parser does): the body's
    framing cannot be trusted. A list without chunked is left to llhttp (its 400 when the head ends: no
    length can be determined), unless a later line ends the list with chunked. Runs for
    ``Transfer-Encoding`` lines only; what it adds to every request is the one comparison of the
    header name in :meth:`ProblemHttpProtocol.on_header`."""
    codings = [
        coding.strip(b" \t").lower()
        for line in [*(v for n, v in headers if n == b"transfer-encoding"), value]
        for coding in line.split(b",")
    ]
    codings = [coding for coding in codings if coding]  # empty list elements (RFC 9110 §5.6.1)
    chunked = codings.count(b"chunked")
    if chunked > 1:
        return _Refusal(400, "The request's Transfer-Encoding applies chunked more than once.")
    if chunked and codings[-1] != b"chunked":
        return _Refusal(400, "The request's Transfer-Encoding does not end with chunked.")
    unknown = next((coding for coding in codings if coding != b"chunked"), None)
    if chunked and unknown is not None:
        named = "".join(c for c in unknown.decode("latin-1") if c.isprintable())[:64]
        return _Refusal(
            501,
            f"The transfer coding {named!r} is not implemented; send the body with "
            "Transfer-Encoding: chunked alone, or with a Content-Length.",
        )
    return None


#: llhttp's reason when a callback raised something other than a refusal: about this server's code,
#: nothing the client can act on (a CONNECT's authority-form target failed uvicorn's URL parsing so)
_CALLBACK_ERROR = "User callback error"


def _parser_reason(exc: BaseException | None) -> str:
    """llhttp's reason (fixed strings such as "Content-Length can't be present with Transfer-Encoding")."""
    text = str(exc or "").strip().rstrip(".")
    if text == _CALLBACK_ERROR:
        text = ""
    printable = "".join(c for c in text if c.isprintable())[:200]
    return (
        f"The request is not valid HTTP/1.1 ({printable})."
        if printable
        else "The request is not valid HTTP/1.1."
    )


class _LingeringTransport:
    """The connection's transport as uvicorn sees it: ``close()`` lingers (see the module docstring)."""

    def __init__(self, transport: asyncio.Transport, protocol: ProblemHttpProtocol) -> None:
        self._transport = transport
        self._protocol = protocol
        # the calls of every response, bound once (no __getattr__ on the hot path)
        self.write = transport.write
        self.writelines = transport.writelines
        self.get_extra_info = transport.get_extra_info
        self.pause_reading = transport.pause_reading

    def resume_reading(self) -> None:
        """Called by flow control only when reading was paused (never per read): the body clock
        restarts from here, since a paused server was not waiting for the client."""
        self._transport.resume_reading()
        self._protocol.body_wanted()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self._protocol.lingering or self._transport.is_closing()

    def close(self) -> None:
        self._protocol.linger()


class ProblemHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with problem bodies, head limits, lingering close and a graceful
    idle drain."""

    idle_grace_seconds = IDLE_GRACE_SECONDS
    linger_seconds = LINGER_SECONDS
    #: the defaults when served with a plain ``uvicorn.Config`` (tests), else :class:`ServingConfig`'s
    request_head_timeout = REQUEST_HEAD_TIMEOUT_SECONDS
    request_body_timeout = REQUEST_BODY_TIMEOUT_SECONDS
    response_send_timeout = RESPONSE_SEND_TIMEOUT_SECONDS
    max_connections = MAX_CONNECTIONS_PER_WORKER

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        config = self.config
        if isinstance(config, ServingConfig):
            self.request_head_timeout = config.request_head_timeout
            self.request_body_timeout = config.request_body_timeout
            self.response_send_timeout = config.response_send_timeout
            self.max_connections = config.max_connections
        self.lingering = False
        self._raw: asyncio.Transport | None = None
        self._lingered_bytes = 0
        self._linger_timer: asyncio.TimerHandle | None = None
        self._target_bytes = 0
        self._head_bytes = 0
        self._head_raw = 0
        self._head_at = 0.0
        self._header_count = 0
        self._hosts = 0
        self._content_types = 0
        self._refusal: _Refusal | None = None
        self._draining = False
        self._receiving = False
        self._active_at = 0.0
        self._tick = 0.0
        self._head_completed = False
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_wanted_at = 0.0
        self._send_timer: asyncio.TimerHandle | None = None
        self._send_buffered = 0
        self._over_limit = False  # opened over max_connections: only a probe is served
        self._behind_probe = False  # and what comes after its head is not read
        #: a refusal of a request pipelined behind one still being answered: sent after that answer
        self._deferred: _Refusal | None = None

    # --- lingering close -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._raw = transport
        super().connection_made(_LingeringTransport(transport, self))  # type: ignore[arg-type]
        if self.client is not None and self.client[0].startswith("::ffff:"):
            # an IPv4 peer of a dual-stack listener (BIND_HOST "::"): the application, its logs, audit
            # records, trusted proxies and throttles see 10.1.2.3, as on 0.0.0.0, not ::ffff:10.1.2.3
            self.client = (unmapped(self.client[0]), self.client[1])
        self._active_at = self.loop.time()
        if len(self.connections) > self.max_connections:  # uvicorn's set of this worker's connections
            # not refused yet: a probe may ask within a short window (on_headers_complete decides)
            self._over_limit = True
            window = min(OVER_LIMIT_HEAD_SECONDS, self.request_head_timeout)
            self.timeout_keep_alive_task = self.loop.call_later(window, self._refuse_connection)
            return
        # the connection's one timer, from the start: a client that sends nothing is idle too
        self._tick = min(float(self.timeout_keep_alive), self.request_head_timeout)
        self.timeout_keep_alive_task = self.loop.call_later(self._tick, self._timer_expired)

    def linger(self) -> None:
        """End the connection: FIN after what was written, then discard input until the peer closes."""
        raw = self._raw
        if raw is None or self.lingering or raw.is_closing():
            return
        self.lingering = True
        if self._send_timer is None and raw.get_write_buffer_size():
            self._arm_send_timer()  # a close waits for the buffer to drain: not for longer than this
        try:
            can_half_close = raw.can_write_eof()
        except (AttributeError, NotImplementedError):
            can_half_close = False
        if not can_half_close:
            raw.close()
            return
        raw.write_eof()
        raw.resume_reading()  # flow control may have paused it
        self._linger_timer = self.loop.call_later(self.linger_seconds, raw.close)

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            self._lingered_bytes += len(data)
            if self._lingered_bytes > LINGER_BYTES and self._raw is not None:
                self._raw.close()
            return
        if self._behind_probe or self._deferred is not None:  # nothing more is parsed: the connection
            return  # ends with the answer in progress (a probe's) or with the refusal after it
        if len(data) > MAX_HEAD_BYTES:  # a large read (a body, or a head over the limit): in slices
            view = memoryview(data)
            for start in range(0, len(data), MAX_HEAD_BYTES):
                self.data_received(view[start : start + MAX_HEAD_BYTES])  # type: ignore[arg-type]
            return
        if self._receiving:  # a head split across reads (rare: heads come whole); see the module docstring
            self._head_raw += len(data)  # wiped by on_message_begin if another request starts in it
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            # uvicorn's data_received, without its "Invalid HTTP request received." warning per request:
            # every refusal is counted and logged, a line per REFUSAL_LOG_SECONDS at most (RefusalLog),
            # so that a flood of them — an attack at the connection limit — does not flood the logs
            self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        if self._receiving and self._head_raw > MAX_HEAD_BYTES and not self.lingering:
            self._refuse_in_order(_Refusal(431, f"The request head is larger than {MAX_HEAD_BYTES} bytes."))
        elif self._head_completed:  # a head ended in this read
            self._head_completed = False
            if self.cycle.more_body and self._body_timer is None:  # and its body is still to come
                self._arm_body_timer(self._active_at)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None
        super().connection_lost(exc)
        if self._raw is not None and not self._raw.is_closing():
            self._raw.close()

    # --- limits on the request head --------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._target_bytes = self._head_bytes = self._head_raw = self._header_count = self._hosts = 0
        self._content_types = 0
        self._receiving = True
        self._head_at = self._active_at  # when the read that holds the head's first byte arrived
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._target_bytes += len(url)
        self._head_bytes += len(url)
        if self._target_bytes > MAX_TARGET_BYTES:
            self._refusal = _Refusal(414, f"The request target is longer than {MAX_TARGET_BYTES} bytes.")
            raise self._refusal
        self.url += url  # uvicorn's, inline (a parser callback per request)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > MAX_HEAD_BYTES:
            self._refusal = _Refusal(431, f"The request head is larger than {MAX_HEAD_BYTES} bytes.")
            raise self._refusal
        if self._header_count > MAX_HEADERS:
            self._refusal = _Refusal(431, f"The request has more than {MAX_HEADERS} header fields.")
            raise self._refusal
        # uvicorn's, inline (a parser callback per header: ~10 per signed request)
        name = name.lower()
        if name == b"host":
            self._hosts += 1
            if self._hosts > 1:  # RFC 9112 §3.2: more than one Host field line is a 400
                self._refusal = _Refusal(400, "The request has more than one Host header field.")
                raise self._refusal
            if _HOST_VALUE.fullmatch(value) is None:  # and so is a value that is no host[:port]
                self._refusal = _Refusal(400, "The request's Host header field is not a host[:port].")
                raise self._refusal
        elif name == b"content-type":
            self._content_types += 1
            if self._content_types > 1:  # a singleton (RFC 9110 §8.3): readers would take different lines
                self._refusal = _Refusal(400, "The request has more than one Content-Type header field.")
                raise self._refusal
        elif name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        elif name == b"transfer-encoding":
            refusal = _transfer_coding_refusal(self.headers, value)
            if refusal is not None:
                self._refusal = refusal
                raise refusal
        self.headers.append((name, value))

    # --- the request cycle (see the module docstring) --------------------------------------------

    def on_headers_complete(self) -> None:
        """uvicorn's, with the kit's cycle: the scope completed, a :class:`LeanCycle` started (or
        queued behind the response in progress), answered with ``Connection: close`` while draining."""
        self._receiving = False
        parser = self.parser
        scope = self.scope
        http_version = parser.get_http_version()
        if not self._hosts and http_version == "1.1":  # RFC 9112 §3.2 (HTTP/1.0 may leave it out)
            self._refusal = _Refusal(400, "An HTTP/1.1 request must have a Host header field.")
            raise self._refusal
        scope["method"] = parser.get_method().decode("ascii")
        if http_version != "1.1":
            scope["http_version"] = http_version
        if parser.should_upgrade() and self._should_upgrade():
            return
        parsed = httptools.parse_url(self.url)
        raw_path = parsed.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        root_path = self.root_path
        if root_path:
            path = root_path + path
            raw_path = root_path.encode("ascii") + raw_path
        scope["path"] = path
        scope["raw_path"] = raw_path
        scope["query_string"] = parsed.query or b""
        if self._over_limit:
            self._cancel_over_limit_timer()
            if self.cycle is not None:
                # pipelined behind the probe, whose answer ends the connection: left unanswered (the
                # client retries it, RFC 9112 §9.3.2), never answered before the probe's
                self._behind_probe = True
                raise _Refusal(0, "pipelined behind a probe over the connection limit")
            if path not in PROBE_PATHS:
                self._refusal = _Refusal(503, CONNECTION_LIMIT_DETAIL, CONNECTION_LIMIT_HEADERS)
                raise self._refusal
        keep_alive = (
            http_version != "1.0"
            and parser.should_keep_alive()
            and not self._draining
            and not self._over_limit
        )
        cycle: LeanCycle
        app: ASGIApp
        if self.limit_concurrency is not None and (
            len(self.connections) >= self.limit_concurrency or len(self.tasks) >= self.limit_concurrency
        ):
            self.logger.warning("Exceeded concurrency limit.")
            cycle, app = self.new_cycle(keep_alive), cast(ASGIApp, service_unavailable)
        else:
            cycle, app = self.route(keep_alive)
        if self.expect_100_continue:  # its body clock starts when it stops waiting for the 100
            cycle.on_continue = self.body_wanted
        self._head_completed = True
        existing = self.cycle
        self.cycle = cycle
        if existing is None or existing.response_complete:
            self.start(cycle, app)
        else:  # pipelined: queued until the response in progress is complete
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, app))  # type: ignore[arg-type]

    def new_cycle(self, keep_alive: bool) -> LeanCycle:
        return LeanCycle(
            self.scope, self, keep_alive=keep_alive, expect_100_continue=self.expect_100_continue
        )

    def route(self, keep_alive: bool) -> tuple[LeanCycle, ASGIApp]:
        """The cycle and the application for the request whose scope is complete: the app's own here;
        a subclass may send some requests elsewhere (the gateway's edge)."""
        return self.new_cycle(keep_alive), self.app

    def start(self, cycle: LeanCycle, app: ASGIApp) -> None:
        """Serve the request now (a task running the cycle, as uvicorn does), unless no one waits for
        it any more."""
        if not self.client_left(cycle):
            self._start_asgi_task(cycle, app)  # type: ignore[arg-type]

    def client_left(self, cycle: LeanCycle) -> bool:
        """Whether the request's client closed the connection while the request waited for this
        worker — looked at only while the event loop is behind (:mod:`svckit.abandoned`) — and if so,
        the request dropped unserved: the connection ends, nothing is answered, and it is counted."""
        if not pace.behind() or not client_gone(self.transport):
            return False
        cycle.disconnected = True
        self.transport.close()
        refusals.abandoned()
        return True

    # --- one timer per connection (idle, head), one per body awaited (see the module docstring) ----

    def _unset_keepalive_if_required(self) -> None:
        """uvicorn cancels its keep-alive timer on every read and arms a new one after every response
        (a timer handle made and cancelled per request); here activity is only noted, and the timer,
        when it fires, looks at how long the connection has really been idle."""
        self._active_at = self.loop.time()

    def on_response_complete(self) -> None:
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._active_at = self.loop.time()
        self.flow.resume_reading()
        if self.pipeline:  # the next pipelined request starts now, in a task (never from this callback)
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif self._deferred is not None:  # the request behind the answered ones was refused
            refusal, self._deferred = self._deferred, None
            self._refuse(refusal.status, refusal.detail, refusal.headers)
        elif self.timeout_keep_alive_task is None:  # the timer re-arms itself; this only if it had not
            self.timeout_keep_alive_task = self.loop.call_later(self._tick, self._timer_expired)

    def _timer_expired(self) -> None:
        """What the connection waits for decides: the application (nothing to do here: a body it
        waits for has a timer of its own), the rest of a head (bounded from its first byte), or the
        next request (idle, the keep-alive bound). Re-armed for the nearest deadline, at most one
        tick away, so a deadline of whatever state the connection enters next is not missed."""
        self.timeout_keep_alive_task = None
        if self.transport.is_closing():
            return
        now = self.loop.time()
        cycle = self.cycle
        if self.pipeline or (cycle is not None and not cycle.response_complete):
            left = self._tick
        elif self._receiving:
            left = self._head_at + self.request_head_timeout - now
            if left <= 0:
                detail = f"The request head was not complete within {self.request_head_timeout:g} s."
                self._refuse(408, detail)
                return
        else:
            left = self._active_at + self.timeout_keep_alive - now
            if left <= 0:
                self.transport.close()
                return
        self.timeout_keep_alive_task = self.loop.call_later(min(left, self._tick), self._timer_expired)

    def body_wanted(self) -> None:
        """The server became ready for body bytes it was not waiting for: reading resumed after a
        pause, or a request that asked for ``100 Continue`` stopped waiting for it. Its silence
        counts from now (called on those transitions only, never per read)."""
        self._body_wanted_at = now = self.loop.time()
        self._arm_body_timer(now)

    def _arm_body_timer(self, since: float) -> None:
        """The request's body timer, due ``request_body_timeout`` after ``since``, if its body is
        still to come and none is armed (one per request at most: it re-arms itself while bytes
        keep coming). A request whose body came with its head has none."""
        cycle = self.cycle
        if self._body_timer is None and cycle is not None and cycle.more_body and not cycle.response_complete:
            self._body_timer = self.loop.call_at(since + self.request_body_timeout, self._body_timer_expired)

    def _body_timer_expired(self) -> None:
        """A body due by now: nothing from the client since the later of its last byte and the moment
        the server was ready for more is a timeout; else the timer is due again that long after it.
        Not while the server is not waiting for the client (reading paused, a ``100 Continue`` not
        sent yet): :meth:`body_wanted` arms it again when that ends."""
        self._body_timer = None
        cycle = cast(LeanCycle | None, self.cycle)
        if (
            cycle is None
            or not cycle.more_body
            or cycle.response_complete
            or cycle.disconnected
            or cycle.waiting_for_100_continue
            or self.pipeline
            or self.flow.read_paused
            or self.transport.is_closing()
        ):
            return
        since = max(self._active_at, self._body_wanted_at)
        if self.loop.time() - since < self.request_body_timeout:
            self._arm_body_timer(since)
        else:
            self._body_timed_out(cycle)

    def _body_timed_out(self, cycle: LeanCycle) -> None:
        """A body that stopped arriving: answered 408 while nothing of the response has left, else
        the connection ended (the client sees a response cut short); counted as a 408 either way. The
        application hears ``http.disconnect`` and what it would still send is dropped (its cycle is
        disconnected), so its task ends."""
        detail = f"The request body stopped arriving: nothing for {self.request_body_timeout:g} s."
        unsent = cycle.unsent()
        cycle.disconnected = True
        cycle.body_timed_out = True
        cycle.message_event.set()
        if unsent:
            self._refuse(408, detail)
        else:
            refusals.note(408, detail + " The response had begun: the connection was ended.")
            self.transport.close()

    # --- clients that stop reading (see the module docstring) ---------------------------------------

    def pause_writing(self) -> None:
        """The transport's buffer passed its high-water mark (a flow-control transition, never per
        write): the send timer starts."""
        self.flow.pause_writing()
        if self._send_timer is None:
            self._arm_send_timer()

    def resume_writing(self) -> None:
        """The client took enough: the send timer stops — unless the connection is closing, where
        what is left below the low-water mark must leave in time too."""
        self.flow.resume_writing()
        timer = self._send_timer
        if timer is not None and not self.lingering:
            timer.cancel()
            self._send_timer = None

    def _arm_send_timer(self) -> None:
        self._send_buffered = self._unsent()
        self._send_timer = self.loop.call_later(self.response_send_timeout, self._send_timer_expired)

    def _unsent(self) -> int:
        """What the client has not taken yet: the transport's buffer and, on Linux, the socket's
        send queue (sent but not acknowledged, or not sent) — the buffer alone shrinks only when
        the kernel has room for a large part of it, which a slow reader may take longer to make
        than the timeout."""
        raw = cast(asyncio.Transport, self._raw)
        unsent = raw.get_write_buffer_size()
        sock = raw.get_extra_info("socket")
        if _TIOCOUTQ is not None and sock is not None:
            with contextlib.suppress(OSError):
                unsent += struct.unpack("i", fcntl.ioctl(sock.fileno(), _TIOCOUTQ, bytes(4)))[0]
        return unsent

    def _send_timer_expired(self) -> None:
        """Writing still paused (or a closing connection's bytes still in its buffer): if the client
        took some since the timer was armed, it is armed again from now; if it took nothing, the
        connection is reset — its unsent bytes dropped (a close would wait for them, the kernel's
        own send queue too) — and the application hears ``http.disconnect`` (what it sends is
        dropped, as for any client gone), so its task ends."""
        self._send_timer = None
        raw = self._raw
        if raw is None or not (self.flow.write_paused or self.lingering) or not raw.get_write_buffer_size():
            return
        unsent = self._unsent()
        if unsent < self._send_buffered:
            self._arm_send_timer()
            return
        refusals.send_timed_out(
            f"The client took nothing of its response for {self.response_send_timeout:g} s "
            f"({unsent} bytes waiting): the connection was reset."
        )
        sock = raw.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # a reset: the kernel drops its send queue at once
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
        raw.abort()

    # --- answers of the server layer -----------------------------------------------------------

    def _cancel_over_limit_timer(self) -> None:
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None

    def _refuse_connection(self) -> None:
        """One connection more than :attr:`max_connections` that sent no request head within its
        window: answered 503 with ``Retry-After`` and closed (lingering, so the answer is not lost to a
        reset). One whose head is no probe's gets the same from :meth:`on_headers_complete`."""
        self.timeout_keep_alive_task = None
        if self.transport.is_closing() or self.lingering or self.cycle is not None:
            return
        self._refuse(503, CONNECTION_LIMIT_DETAIL, CONNECTION_LIMIT_HEADERS)

    def _unsupported_upgrade_warning(self) -> None:
        """uvicorn's two warnings per ``Upgrade`` request, replaced by the refusal log's rate-limited
        line (:meth:`RefusalLog.upgrade_ignored`); the request is served as plain HTTP all the same."""
        refusals.upgrade_ignored()

    def send_400_response(self, msg: str) -> None:
        """Called by uvicorn inside its ``except httptools.HttpParserError`` (the error is current)."""
        refusal, self._refusal = self._refusal, None
        if self._behind_probe:  # the probe's response is still to come, then the connection closes
            self.flow.pause_reading()
            return
        if refusal is None:
            if self.parser.get_method() == b"CONNECT":  # RFC 9110 §9.3.6: a proxy's method
                refusal = _Refusal(501, "The CONNECT method is not implemented: this server is no proxy.")
            else:
                refusal = _Refusal(400, _parser_reason(sys.exc_info()[1]))
        self._refuse_in_order(refusal)

    def _refuse_in_order(self, refusal: _Refusal) -> None:
        """A request pipelined behind one whose body is complete and whose answer is not is refused
        after that answer (and those queued before it), in request order (RFC 9112 §9.3.2); nothing
        more is read. Otherwise it is refused now."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and not cycle.more_body:
            self._deferred = refusal
            self.flow.pause_reading()
            return
        self._refuse(refusal.status, refusal.detail, refusal.headers)

    def _refuse(self, status: int, detail: str, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        """Answer with a problem document and end the connection; counted and (a line at most every
        :data:`REFUSAL_LOG_SECONDS`) logged, since no route, metric or access line sees the request:
        a flood of these (oversized heads, slowloris) would otherwise be invisible."""
        refusals.note(status, detail)
        self.transport.write(problem_bytes(status, detail, [*self.server_state.default_headers, *headers]))
        self.transport.close()  # lingering: the client may still be sending

    # --- graceful shutdown -------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Called by the server when it stops: finish the request in flight (then close), and give an
        idle connection a moment for a request already on its way instead of closing under it."""
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
            return
        self._draining = True
        self.loop.call_later(self.idle_grace_seconds, self._close_if_idle)

    def _close_if_idle(self) -> None:
        if self.transport.is_closing():
            return
        if self._receiving or (self.cycle is not None and not self.cycle.response_complete):
            self.loop.call_later(0.1, self._close_if_idle)  # a request arrived: it closes after its response
            return
        self.transport.close()


#: Linux's SO_ATTACH_FILTER (not exported by the socket module).
_SO_ATTACH_FILTER = 26
#: One classic BPF instruction, ``ret #0``: keep nothing of any packet.
_DROP_ALL = struct.pack("=HBBI", 0x06, 0, 0, 0)
_filters: list[ctypes.Array[ctypes.c_ubyte]] = []  # the program must outlive the setsockopt call


def refuse_new_connections(listener: socket.socket) -> bool:
    """Stop the kernel from completing new handshakes on ``listener`` (already queued ones stay).

    A socket filter that drops every packet makes a listening socket ignore new SYNs, so nothing new
    lands in its accept queue while it is drained. False where that is not possible (not Linux, or
    the socket is already closed): the drain then keeps its small race.
    """
    if not sys.platform.startswith("linux"):
        return False
    program = (ctypes.c_ubyte * len(_DROP_ALL)).from_buffer_copy(_DROP_ALL)
    _filters.append(program)
    fprog = struct.pack("HP", 1, ctypes.addressof(program))
    try:
        listener.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
    except OSError:
        return False
    return True


class BeatingServer(uvicorn.Server):
    """uvicorn's server whose event loop beats into ``heartbeat`` while it serves: for the
    supervisor's watchdog (:mod:`svckit.watchdog`) and the liveness probe (:mod:`svckit.probes`)."""

    def __init__(self, config: uvicorn.Config, *, heartbeat: Beat | None = None) -> None:
        super().__init__(config)
        self.heartbeat = heartbeat

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        async with beating(self.heartbeat):
            await super().serve(sockets)


#: how the supervisor starts its workers: forked from multiprocessing's fork server, a child of the
#: supervisor's (a fresh interpreter started at the first worker's start, with the environment but none
#: of the supervisor's memory) that imported what a worker runs (:func:`worker_modules`) once. A spawned
#: worker imported all of it again: 0.6-0.85 s of CPU per worker of the gateway, at every start and every
#: replacement, against ~0.05 s forked (docs/runbook.md, "What a start costs").
START_METHOD: Final = "forkserver"


def probe_slots() -> tuple[Beat, probes.Slot]:
    """A worker's heartbeat and readiness slot in shared memory (a worker's as its own)."""
    context = multiprocessing.get_context(START_METHOD)
    return cast(Beat, context.RawValue("d", NOT_YET)), cast(probes.Slot, context.RawArray("d", 2))


def worker_modules(config: uvicorn.Config) -> list[str]:
    """What the fork server imports before it forks the first worker (through :mod:`svckit.preloading`,
    each whatever its import raises: a worker imports it again and fails its start):
    :mod:`svckit.collector` first (the service's collector thresholds), this module (the worker's
    target), the application's module, the HTTP protocol's and what uvicorn loads in every worker (its
    event loop, its lifespan); last :mod:`svckit.preloaded`, which takes back the fork server's own
    metrics files.

    Imports only: what a worker makes — its settings and keys (its application factory reads them),
    its event loop, connections, pools — it still makes after the fork, as a spawned worker did. A
    module that made a connection, a thread or a seeded generator of its own at import would hand one
    copy to every worker; none does (``random``'s generator, ``gateway.request``'s and the nonces of
    ``svckit.identity`` reseed in a forked child; ``secrets`` and ``uuid4`` read the OS)."""
    modules = [__name__, "uvicorn.lifespan.on", "uvicorn.loops.auto"]
    if importlib.util.find_spec("uvloop") is not None:
        modules.append("uvloop")
    if isinstance(config.app, str):
        modules.append(config.app.partition(":")[0])
    if isinstance(config.http, type):
        modules.append(config.http.__module__)
    # not the module run as ``__main__`` (``python -m testkit.sampleapp``): multiprocessing runs it again
    # in each worker as ``__mp_main__``, which must not find it imported under its own name
    main = getattr(sys.modules["__main__"], "__spec__", None)
    modules = [name for name in dict.fromkeys(modules) if main is None or name != main.name]
    # first the collector's thresholds, as in an entry point; last what takes back the fork server's own
    return ["svckit.collector", *modules, "svckit.preloaded"]


def serving_alone(heartbeat: Beat, slot: probes.Slot) -> None:
    """This process is the only worker: its metrics listener answers the probes for it, from the
    heartbeat and the readiness its application publishes."""
    probes.publish_into(slot)
    watched = probes.Watched(heartbeat, slot)
    probes.answer_for(lambda: (watched,))


class DrainingServer(BeatingServer):
    """uvicorn's server, accepting what the kernel already queued before it stops listening.

    ``owns_listener``: this server alone serves the socket, so it shuts the door itself before
    draining (with several workers the supervisor does, for all of them at once). ``heartbeat``: the
    worker's, which its event loop beats into (:class:`BeatingServer`).
    """

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        owns_listener: bool = True,
        heartbeat: Beat | None = None,
        supervisor: int | None = None,
    ) -> None:
        super().__init__(config, heartbeat=heartbeat)
        self.owns_listener = owns_listener
        self.supervisor = supervisor

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        if self.supervisor is not None:
            asyncio.get_running_loop().add_reader(self.supervisor, self._supervisor_gone)
        await super().serve(sockets)

    def _supervisor_gone(self) -> None:
        """The supervisor's end of ``supervisor`` closed: it died without stopping this worker (SIGKILL,
        an OOM kill). Nobody would stop, watch or replace it any more, nor shut the door of the socket:
        it drains as on SIGTERM and shuts the door itself, so no worker is left serving as an orphan
        (and the fork server, which lives while a worker does, ends with the last of them)."""
        assert self.supervisor is not None
        asyncio.get_running_loop().remove_reader(self.supervisor)
        log.warning("the supervisor is gone; draining")
        self.owns_listener = True
        self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        probes.stopping()  # the readiness probe fails from now on
        if self.owns_listener:
            for listener in sockets or []:
                refuse_new_connections(listener)
        await self._accept_queued(sockets or [])
        await super().shutdown(sockets)

    async def _accept_queued(self, sockets: list[socket.socket]) -> None:
        loop = asyncio.get_running_loop()
        config = self.config

        def protocol() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state
            )

        accepted = 0
        for listener in sockets:
            while True:
                try:
                    connection, _ = listener.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break  # closed or in error: nothing queued to serve
                connection.setblocking(False)
                await loop.connect_accepted_socket(protocol, connection)
                accepted += 1
        if accepted:
            log.info("accepted queued connections before closing the listener", extra={"count": accepted})


#: what a worker whose application failed to load writes into its stack file, for its supervisor's line
START_FAILED = "svckit: start failed: {error}\n"
START_FAILED_PREFIX = START_FAILED.split("{", 1)[0].encode()


def _run_worker(
    config: uvicorn.Config, sockets: list[socket.socket], heartbeat: Beat, readiness: probes.Slot, stacks: int
) -> None:
    """A worker process (forked by the fork server: :data:`START_METHOD`): serve on the shared
    listening socket until told to stop — or until its supervisor is gone — beating into ``heartbeat``
    from its event loop and publishing its readiness into ``readiness`` (both read by the supervisor:
    its watchdog, its probes); first of all, ready to dump its stacks into the file ``stacks`` (a
    descriptor) when its supervisor finds it stuck (:mod:`svckit.stacks`)."""
    install(stacks)
    probes.publish_into(readiness)
    config.configure_logging()
    # the supervisor's sentinel: multiprocessing's pipe from it, at end of file once it is gone
    parent = multiprocessing.parent_process()
    supervisor = parent.sentinel if parent is not None else None
    server = DrainingServer(config, owns_listener=False, heartbeat=heartbeat, supervisor=supervisor)
    try:
        server.run(sockets=sockets)
    except (Exception, SystemExit) as exc:
        # Before it serves, what a worker runs raised: the application's import (uvicorn exits
        # STARTUP_FAILURE itself only for a module not found), the event loop's (uvloop's). It would
        # raise again in every replacement: a failed start, which stops the supervisor, with the error.
        if server.started or (isinstance(exc, SystemExit) and exc.code == STARTUP_FAILURE):
            raise  # a crash of a serving worker (replaced), or uvicorn's own failed start (after its line)
        os.write(stacks, START_FAILED.format(error=start_failure(exc)).encode())
        sys.exit(STARTUP_FAILURE)


class StartFailed(Exception):
    """A worker could not be started: its fork server hung or ended (the supervisor has said why)."""


class Supervisor:
    """``workers`` processes sharing one listening socket; SIGTERM/SIGINT stop them without resets.

    Replaces uvicorn's multiprocess supervisor, which kept its copy of the listening socket open until
    every worker had drained (see the module docstring). A worker that dies is replaced; one that fails
    during start-up stops everything (it would fail the same way again); one whose event loop stops
    beating for ``worker_stuck_seconds`` (the config's, WORKER_STUCK_SECONDS), or has not beaten
    ``worker_start_seconds`` after its start (WORKER_START_SECONDS), has its stacks logged, is killed,
    then replaced as a dead one (:mod:`svckit.watchdog`). A worker's start waiting for the fork server's
    imports is bounded the same way (:meth:`_start`): one that hung stops everything, as a failed start.
    """

    def __init__(self, config: uvicorn.Config, workers: int, *, kill_after: float | None = None) -> None:
        self.config = config
        self.workers = workers
        self.kill_after = (
            kill_after if kill_after is not None else (config.timeout_graceful_shutdown or 30) + 10
        )
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self.heartbeats: list[Beat] = []
        self.readiness: list[probes.Slot] = []
        self.stopping = False
        self.failed = False
        self._context = multiprocessing.get_context(START_METHOD)
        # the fork server starts with the first worker: until then, this only names its imports, which
        # svckit.preloading makes (each whatever it raises), reporting into a file of this process's
        self.modules = worker_modules(config)
        self.fork_server_report = StackFile()
        os.environ[preloading.MODULES_ENV] = json.dumps(self.modules)
        os.environ[preloading.REPORT_ENV] = f"/proc/{os.getpid()}/fd/{self.fork_server_report.file.fileno()}"
        self._context.set_forkserver_preload([preloading.__name__])
        self.start_seconds = getattr(config, "worker_start_seconds", WORKER_START_SECONDS)
        self._watched: list[Watched] = []
        self.watchdog = Watchdog(
            getattr(config, "worker_stuck_seconds", WORKER_STUCK_SECONDS),
            getattr(config, "worker_start_seconds", WORKER_START_SECONDS),
        )

    def _spawn(
        self, sockets: list[socket.socket]
    ) -> tuple[multiprocessing.process.BaseProcess, Beat, probes.Slot]:
        heartbeat, readiness = probe_slots()
        stacks = StackFile()
        process = self._context.Process(
            target=_run_worker, args=(self.config, sockets, heartbeat, readiness, stacks), daemon=False
        )
        spawned_at = time.monotonic()
        try:
            self._start(process)
        except BaseException:
            stacks.close()
            raise
        self._watched.append(Watched(process.pid, heartbeat, spawned_at, stacks))
        log.info("worker started", extra={"pid": process.pid})
        return process, heartbeat, readiness

    def _start(self, process: multiprocessing.process.BaseProcess) -> None:
        """``process.start()``, bounded by WORKER_START_SECONDS. It returns once the fork server has
        forked the worker — at once, unless the fork server is still to start (the first worker's
        start, or the first after it died): then it waits for the fork server's imports, which may
        hang (it waited for ever, before the watchdog ever ran) or end the fork server. Either is a
        start that failed (:class:`StartFailed`), after a line saying what it waited for."""
        failure: list[BaseException] = []

        def start() -> None:
            try:
                process.start()
            except BaseException as exc:
                failure.append(exc)

        thread = threading.Thread(target=start, name="svckit-worker-start", daemon=True)
        started_at = time.monotonic()
        thread.start()
        thread.join(0.05)
        while thread.is_alive():
            waited = time.monotonic() - started_at
            if waited > self.start_seconds or self.stopping:
                self._fork_server_stuck(waited)
                thread.join(5.0)  # the fork server's end ends the wait for it
                raise StartFailed("the fork server did not start a worker")
            thread.join(0.1)
        if failure:
            exc = failure[0]
            report = self.fork_server_report.contents()
            log.error(
                "the fork server ended before it started a worker; stopping",
                extra={
                    "error": f"{type(exc).__name__}: {exc}",
                    "importing": preloading.importing(report),
                    "modules": self.modules,
                },
            )
            raise StartFailed("the fork server ended") from exc

    def _fork_server_stuck(self, waited: float) -> None:
        """The fork server has not forked a worker within the bound: its stacks and what it was
        importing logged, it is killed (the worker's start, waiting for it, then ends)."""
        pid = getattr(getattr(multiprocessing.forkserver, "_forkserver", None), "_forkserver_pid", None)
        report = self.fork_server_report
        where: dict[str, object] = {"stack": None}
        if pid is not None and report.ask(pid):
            collect([report])
            dump = report.dump()
            if dump:
                where["stack"] = stack = shown(dump)
                where["stuck_at"] = innermost(stack, report.loop_thread())
            else:
                where["stack_missing"] = "no dump: the fork server did not run (stopped, or starved of CPU)"
        else:
            where["stack_missing"] = "the fork server was not yet running svckit's code"
        message = (
            "the fork server did not start a worker within WORKER_START_SECONDS; killing it and stopping"
            if not self.stopping
            else "stopping while the fork server had not started a worker yet; killing it"
        )
        (log.warning if self.stopping else log.error)(
            message,
            extra={
                "fork_server_pid": pid,
                "importing": preloading.importing(self.fork_server_report.contents()),
                "modules": self.modules,
                "waited_seconds": round(waited, 1),
                "bound_seconds": self.start_seconds,
                **where,
            },
        )
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def watched(self) -> list[probes.Watched]:
        """The workers as this process's probes see them (:mod:`svckit.probes`)."""
        return [probes.Watched(h, r) for h, r in zip(self.heartbeats, self.readiness, strict=True)]

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def run(self) -> int:
        listener = self.config.bind_socket()
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for _ in range(self.workers):
                process, heartbeat, readiness = self._spawn([listener])
                self.processes.append(process)
                self.heartbeats.append(heartbeat)
                self.readiness.append(readiness)
            probes.answer_for(self.watched)
            while not self.stopping:
                time.sleep(0.1)
                if not self.stopping:
                    self.watchdog.check(self._watched)
                self._replace_dead([listener])
        except StartFailed:
            self.failed = not self.stopping  # a SIGTERM while it waited is an ordinary stop
            self.stopping = True
        finally:
            # Shut the door for every worker, then drop this copy: the socket goes away as soon as the
            # last worker has drained its queue and stops accepting.
            refuse_new_connections(listener)
            listener.close()
            self._stop_workers()
            for watched in self._watched:
                if watched.stacks is not None:
                    watched.stacks.close()
            self.fork_server_report.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 1 if self.failed else 0

    def _replace_dead(self, sockets: list[socket.socket]) -> None:
        for index, process in enumerate(self.processes):
            if process.is_alive() or self.stopping:
                continue
            if process.exitcode == STARTUP_FAILURE:
                log.error(
                    "a worker failed to start; stopping",
                    extra={"pid": process.pid, "error": self._start_error(process.pid)},
                )
                self.failed = self.stopping = True
                return
            if process.pid is not None and alive(process.pid):
                # its fork server died (the worker's end is learnt from it): the worker, orphaned,
                # still serves, and would no longer be watched; it drains and goes as on SIGTERM
                log.error("the fork server is gone; stopping its worker", extra={"pid": process.pid})
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
            log.warning("worker died; starting another", extra={"pid": process.pid, "exit": process.exitcode})
            forget_dead_processes()  # its live gauges no longer count
            self._forget(process.pid)
            self.processes[index], self.heartbeats[index], self.readiness[index] = self._spawn(sockets)

    def _start_error(self, pid: int | None) -> str | None:
        """What the worker ``pid`` wrote of its failed start (:data:`START_FAILED`), if anything:
        uvicorn's own line (a module not found, a factory that raised) is on the worker's stderr."""
        for watched in self._watched:
            if watched.pid == pid and watched.stacks is not None:
                for line in watched.stacks.contents().splitlines():
                    if line.startswith(START_FAILED_PREFIX):
                        return line[len(START_FAILED_PREFIX) :].decode(errors="replace")
        return None

    def _forget(self, pid: int | None) -> None:
        """A dead worker is no longer watched; its stack file is freed (it held the other copy)."""
        for watched in [w for w in self._watched if w.pid == pid]:
            self._watched.remove(watched)
            if watched.stacks is not None:
                watched.stacks.close()

    def _stop_workers(self) -> None:
        for process in self.processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.kill_after
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("worker did not stop in time; killing it", extra={"pid": process.pid})
                process.kill()
                process.join()


def serve(config: uvicorn.Config, workers: int) -> int:
    """Serve with ``workers`` processes (1: this process), the kit's protocol and shutdown. Alone, this
    process imports the application's module first under :func:`svckit.appimport.importing_application`
    (bounded by WORKER_START_SECONDS: one line, exit 1, if it raises or hangs), as the supervisor's fork
    server does for its workers (:mod:`svckit.preloading`)."""
    if workers <= 1:
        if isinstance(config.app, str):
            module = config.app.partition(":")[0]
            bound = getattr(config, "worker_start_seconds", WORKER_START_SECONDS)
            import_application(module, module.split(".")[0], bound)
        listener = config.bind_socket()
        heartbeat, readiness = probe_slots()
        serving_alone(heartbeat, readiness)
        single = DrainingServer(config, heartbeat=heartbeat)
        try:
            single.run(sockets=[listener])
        finally:
            listener.close()
        return 0 if single.started else STARTUP_FAILURE
    return Supervisor(config, workers).run()


__all__ = [
    "BeatingServer",
    "DrainingServer",
    "ProblemHttpProtocol",
    "ServingConfig",
    "Supervisor",
    "problem_bytes",
    "refuse_new_connections",
    "serve",
]
