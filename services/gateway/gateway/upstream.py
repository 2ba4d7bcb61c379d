"""Keep-alive HTTP/1.1 connections to the upstream services: the gateway's forwarding hop.

Why not aiohttp's client here, when the rest of the platform uses it: on the gateway's hot path
``ClientSession.request`` costs about 230 µs of CPU per proxied request (request and response objects,
multidicts, URL handling, tracing hooks, timers), more than verification, routing, signing and metrics
together (``bench/gateway.py``, ``services/gateway/README.md``). Forwarding to a known service needs
none of that: the head is framed from headers the edge already holds as bytes, the response is parsed
by llhttp through ``httptools`` (the parser uvicorn serves the gateway with), and a connection goes
back to a LIFO pool when its response ended cleanly. aiohttp stays the client for everything else
(discovery, JWKS, the audit trail).

What a forwarding client must get right, and where:

* framing: responses delimited by ``Content-Length``, chunked, or (HTTP/1.0 style) connection close;
  ``1xx`` heads skipped; a response head over :data:`MAX_HEAD_BYTES` or any parse error is a protocol
  failure; ``101`` is refused (the gateway does not tunnel);
* reuse: only after a complete response the upstream did not mark ``Connection: close``; idle
  connections older than ``idle_seconds`` (the kit's ``PEER_IDLE_SECONDS``, below the services'
  keep-alive) are closed, not used;
* timeouts: connect, and a read timeout that measures the longest silence of the upstream while
  the gateway waits for it (not while the gateway itself stopped reading because its client is slow),
  checked by one sweeper task per pool rather than a timer per request;
* back-pressure both ways: reading pauses above :data:`HIGH_WATER` bytes buffered for a slow client,
  streamed request bodies wait for the socket to drain;
* reuse never hands out a connection whose peer has already closed or reset it: besides the
  transport's own state, the kernel's TCP state is read (one ``getsockopt``), because the peer's FIN
  may have arrived after the previous response but before the event loop reported it;
* a bounded wait for a connection when all ``size`` are busy (``max_wait``, then ``busy``): a frozen
  upstream (a stopped VM, a long stall: connections accepted, nothing answered) holds every pooled
  connection for the whole read timeout, and requests that kept arriving queued for a slot without
  limit, each answered one read timeout after it got one: 6.2 s for a 3 s timeout, and longer the
  longer the freeze (tests/faults/test_frozen_service.py);
* errors as :class:`UpstreamError` with a kind (``connect``, ``timeout``, ``protocol``, ``busy``), whether
  nothing came back on a reused connection (``retryable``: safe to send again when idempotent) and
  whether the request *provably never reached* the peer (``unsent``: safe to send again whatever the
  method). Proof on a reused connection with no response byte: the peer reset the connection (its
  application never read the request), or its FIN arrived while the request's bytes were still
  unacknowledged (a peer that closed before they arrived answers them with a reset, never an ACK);
* a second response to one request (bytes nobody asked for) retires the connection; what a new
  connection receives before its first request is written is that request's answer, though (a
  service at its connection limit answers 503 as it accepts, and on uvloop that answer, and the FIN
  after it, often arrive before the exchange starts), and a new connection lost before its first
  request was written fails that request at once as ``unsent``.

Tested against scripted TCP servers on asyncio and uvloop (``services/gateway/tests/test_upstream.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import ssl
import struct
import sys
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Literal, cast
from urllib.parse import urlsplit

import httptools
from svckit.server import PEER_IDLE_SECONDS

Kind = Literal["connect", "timeout", "protocol", "busy"]

MAX_HEAD_BYTES = 64 * 1024
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
_CRLF = b"\r\n"


_TCP_INFO = getattr(socket, "TCP_INFO", None)
_TCP_ESTABLISHED = 1  # tcpi_state, the first byte of struct tcp_info (Linux)
_SIOCOUTQ = 0x5411  # bytes in the send queue not yet acknowledged by the peer (Linux)
_RESETS = (errno.ECONNRESET, errno.EPIPE)


def _peer_gone(sock: socket.socket | None) -> bool:
    """The kernel already knows the peer closed (FIN) or reset this connection."""
    if sock is None or _TCP_INFO is None:
        return False
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 1)[0] != _TCP_ESTABLISHED
    except (OSError, IndexError, TypeError):
        return False


def _probe(transport_socket: object) -> socket.socket | None:
    """A socket of our own on the connection's descriptor (a duplicate), for the kernel's view of it.

    The transport's socket will not do: uvloop's (a ``PseudoSocket``) makes a new ``socket.socket``
    for every ``getsockopt``, which :func:`_peer_gone` calls for every pooled request. The duplicate
    must be closed with the connection (:meth:`Connection.abort`, ``connection_lost``): while it is
    open, the transport closing its own descriptor would end nothing.
    """
    fileno = getattr(transport_socket, "fileno", None)
    if fileno is None:
        return None
    try:
        return socket.socket(fileno=os.dup(fileno()))
    except (OSError, ValueError):
        return None


def _request_refused(sock: socket.socket | None) -> bool:
    """At the peer's FIN: was our request reset, or still unacknowledged (so never received)?"""
    if sock is None:
        return False
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) in _RESETS:
            return True
        if sys.platform != "linux":
            return False
        import fcntl

        unacked = struct.unpack("i", fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0"))[0]
        return bool(unacked > 0)
    except (OSError, TypeError, ValueError):
        return False


class UpstreamError(Exception):
    def __init__(self, kind: Kind, detail: str, *, retryable: bool = False, unsent: bool = False) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        #: nothing came back on a connection that had served earlier requests: the peer most likely
        #: closed it while idle, so an idempotent request may be sent again on another one
        self.retryable = retryable
        #: the peer provably never received the request (see the module docstring): any request may
        #: be sent again, on a fresh connection
        self.unsent = unsent


class Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; at most one request/response exchange at a time."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.served = 0
        self.idle_since = 0.0
        self._forgotten = False
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self.busy = False
        self.sock: socket.socket | None = None
        self._refused_at_eof = False
        #: instead of a waiter: called when the exchange may have moved on (see :meth:`listen`)
        self.listener: Callable[[], None] | None = None
        self._feeding = False
        #: no exchange started yet: what arrives now is the first request's answer (see the docstring)
        self._fresh = True
        self._early = bytearray()
        self._early_eof = False
        self._reset(expect_body=True)

    def _reset(self, *, expect_body: bool) -> None:
        self.listener = None
        self._refused_at_eof = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.content_length: int | None = None
        self.has_connection_header = False
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.error: UpstreamError | None = None
        self.expect_body = expect_body
        self._chunked = False
        self._informational = False
        self._ignore = False
        self._head_bytes = 0
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._high_water = HIGH_WATER
        self._received = 0
        self._reading_paused = False
        self._writing_paused = False
        self._last_progress = self.loop.time()

    # --- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses
        self.sock = _probe(transport.get_extra_info("socket"))

    def data_received(self, data: bytes) -> None:
        if not self.busy:
            if self._fresh and len(self._early) + len(data) <= MAX_HEAD_BYTES:
                self._early += data  # the first request's answer, come before it (:meth:`_take_early`)
                return
            self._fail(UpstreamError("protocol", "the upstream sent data nobody asked for"))
            return
        self._received += len(data)
        self._last_progress = self.loop.time()
        self._feeding = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamError("protocol", "the upstream switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError("protocol", f"unparseable upstream response ({exc})"))
        else:
            if not self.head_done and self._received > MAX_HEAD_BYTES:
                self._fail(UpstreamError("protocol", "the upstream's response head is too large"))
        finally:
            self._feeding = False
        listener = self.listener
        if listener is not None:
            listener()  # after the parser returned: the listener may hand this connection back

    def eof_received(self) -> bool | None:
        if not self.busy and self._fresh:
            self._early_eof = True  # kept half-open: the first exchange reads what came before it
            return True
        if self.busy and self._received == 0 and self.served > 0:
            self._refused_at_eof = _request_refused(self.sock)  # read while the socket is still open
        return None  # close the transport; connection_lost decides what the EOF meant

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._close_probe()
        if self.busy and not self.complete and self.error is None:
            if self.head_done and self.content_length is None and not self._chunked and exc is None:
                self.complete = True  # a body delimited by the end of the connection
            else:
                reused_silent = self._received == 0 and self.served > 0
                reset = isinstance(exc, ConnectionResetError | BrokenPipeError)
                self.error = UpstreamError(
                    "protocol",
                    "the upstream closed the connection before the response ended",
                    retryable=reused_silent,
                    unsent=reused_silent and (reset or self._refused_at_eof),
                )
        self._wake()
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)
        self.pool.forget(self)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    # --- httptools callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._ignore:
            return
        if self.complete:  # a second response to one request: answer the first, then drop the line
            self._ignore = True
            self.keep_alive = False
            return
        self.headers = []
        self.content_length = None
        self.has_connection_header = False
        self._chunked = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._ignore:
            return
        self._head_bytes += len(name) + len(value) + 4
        name = name.lower()
        if name == b"content-length":
            self.content_length = int(value)  # llhttp has checked it is digits, and agrees if repeated
        elif name == b"transfer-encoding":
            self._chunked = True
        elif name == b"connection":
            self.has_connection_header = True  # its tokens name more hop-by-hop headers
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._ignore:
            return
        if self._head_bytes > MAX_HEAD_BYTES:
            self._fail(UpstreamError("protocol", "the upstream's response head is too large"))
            return
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            if status == 101:
                self._fail(UpstreamError("protocol", "the upstream switched protocols"))
                return
            self._informational = True  # 100 Continue, 103 Early Hints: not the response
            return
        self.status = status
        self.head_done = True
        if not self.expect_body:  # the answer to HEAD: llhttp cannot be told, so the exchange ends here
            self.complete = True
            self.keep_alive = False
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._informational or self._ignore or not self.expect_body:
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > self._high_water and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._ignore:
            return
        if self._informational:
            self._informational = False
            return
        if self.expect_body:
            self.complete = True
            self.keep_alive = self.parser.should_keep_alive()
        self._wake()

    # --- the exchange ----------------------------------------------------------------------------

    def start(self, head: bytes, body: bytes | None, *, expect_body: bool, defer: bool = False) -> None:
        """Send a request whose body is known (or absent) in a single write; ``defer``: the write
        waits for the end of the event loop's current round of callbacks (:meth:`UpstreamPool.send`)."""
        self._reset(expect_body=expect_body)
        assert self.transport is not None
        self._begin()
        if self._fresh and self._take_early():
            return
        data = head + body if body else head
        if defer:
            self.pool.send(self, data)
        else:
            self.transport.write(data)

    async def start_streaming(self, head: bytes, chunks: AsyncIterable[bytes], *, expect_body: bool) -> None:
        """Send a request whose body arrives in pieces, with chunked transfer coding."""
        self._reset(expect_body=expect_body)
        transport = self.transport
        assert transport is not None
        self._begin()  # a silent upstream that stops reading the body times out too
        if self._fresh and self._take_early():
            return
        transport.write(head)
        try:
            async for chunk in chunks:
                if self.closed or self.error is not None:
                    break
                transport.writelines((b"%x\r\n" % len(chunk), chunk, _CRLF))
                self._last_progress = self.loop.time()
                if self._writing_paused:
                    self._drain = self.loop.create_future()
                    try:
                        await self._drain
                    finally:
                        self._drain = None
            else:
                if not self.closed:
                    transport.write(b"0\r\n\r\n")
        except BaseException:
            self.abort()  # the inbound body failed (too large, client gone): this request is void
            raise
        self._last_progress = self.loop.time()

    async def read_head(self) -> None:
        while not self.head_done:
            if self.error is not None:
                raise self.error
            await self._wait()
        if self.error is not None and not self.complete:
            raise self.error

    async def read_body(self) -> bytes:
        """The whole body (the caller checked that it is small)."""
        await self.wait_complete()
        return self.take_body()

    async def wait_complete(self) -> None:
        """Until the whole response is in :meth:`take_chunks`."""
        while not self.complete:
            if self.error is not None:
                raise self.error
            await self._wait()

    def take_body(self) -> bytes:
        """The body of a complete response (or what has come of it), without suspending.

        Reading resumes if it was paused: a response can complete in the packet that took it over
        :data:`HIGH_WATER`, and a connection handed back to the pool with its reading paused would
        never see the next response. (Every relayed answer passes here: no list copy, and the resume
        looked at only when reading is paused.)"""
        chunks = self._chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        if self._reading_paused:
            self._resume_reading()
        return body

    def take_chunks(self) -> list[bytes]:
        """:meth:`take_body` as the pieces the body came in (no copy of a large body)."""
        chunks = list(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        self._resume_reading()
        return chunks

    def read_ahead(self) -> None:
        """Read the rest of this response as fast as the upstream sends it, whatever the client does
        (the caller reserved its length: :mod:`gateway.readahead`)."""
        self._high_water = sys.maxsize
        self._resume_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self._last_progress = self.loop.time()
            self.transport.resume_reading()

    async def iter_body(self) -> AsyncIterator[bytes]:
        chunks = self._chunks
        while True:
            while chunks:
                chunk = chunks.popleft()
                self._buffered -= len(chunk)
                if self._buffered <= LOW_WATER:
                    self._resume_reading()
                yield chunk
            if self.complete:
                return
            if self.error is not None:
                raise self.error
            await self._wait()

    def finish(self) -> None:
        """End the exchange: the connection goes back to the pool if it can serve another request."""
        self._end()
        self.served += 1
        if self.complete and self.keep_alive and not self.closed and not self._chunks:
            self.pool.release(self)
        else:
            self.abort()

    def abort(self) -> None:
        self._end()
        if self.transport is not None and not self.closed:
            self.closed = True
            self._close_probe()  # first: while it is open, closing the transport's descriptor ends nothing
            self.transport.abort()  # connection_lost follows and tells the pool

    def _close_probe(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()

    # --- internals --------------------------------------------------------------------------------

    def _take_early(self) -> bool:
        """The first exchange of a new connection, before its request is written: what the upstream
        sent since the connection opened is parsed as its answer (a service at its connection limit
        answers 503 as it accepts), and a connection already lost fails it as ``unsent`` when nothing
        came (the request never left). True: the exchange is decided, the request is not written (the
        connection is retired after it: its answer came before the request)."""
        self._fresh = False
        early, self._early = bytes(self._early), bytearray()
        if early:
            self.data_received(early)
        if self.complete or self.error is not None:
            self.keep_alive = False
            return True
        if self.closed:
            self.error = UpstreamError(
                "protocol",
                "the upstream closed the connection before the request was sent",
                unsent=not early,
            )
            return True
        if self._early_eof:  # closed for writing, with no whole answer: nothing more will come
            closed = "the upstream closed the connection before the response ended"
            self._fail(UpstreamError("protocol", closed))
            return True
        return False

    def listen(self, listener: Callable[[], None] | None) -> None:
        """Have ``listener`` called (instead of waking a waiter) whenever the exchange may have moved
        on: after each packet the parser has consumed, and at an error or the end of the connection.

        For the gateway's callback path (:mod:`gateway.serving`), which relays a small response from
        here without a coroutine; ``None`` returns to the awaitable interface. Never called from
        inside the parser: a listener may finish the exchange and hand the connection back to the
        pool, and a connection must not be reused while its parser is still running.
        """
        self.listener = listener

    def _wake(self) -> None:
        listener = self.listener
        if listener is not None:
            if not self._feeding:
                listener()
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        self._waiter = self.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _fail(self, error: UpstreamError) -> None:
        self._ignore = True  # whatever the parser still finds in this packet
        if self.error is None:
            self.error = error
        self._wake()
        self.abort()

    def _begin(self) -> None:
        self.busy = True
        self._last_progress = self.loop.time()
        self.pool.watch(self)

    def _end(self) -> None:
        if self.busy:
            self.busy = False
            self.pool.unwatch(self)

    def check_deadline(self, now: float) -> None:
        """Called by the pool's sweeper: fail the exchange if the upstream has been silent too long."""
        if not self.busy or self.complete or self.error is not None:
            return
        if self._reading_paused:  # waiting for our own slow client, not for the upstream
            self._last_progress = now
        elif now - self._last_progress >= self.pool.read_timeout:
            self._fail(UpstreamError("timeout", "the upstream did not answer in time"))


class UpstreamPool:
    """Connections to one upstream base URL (``http://host:port[/prefix]``, or ``https://``)."""

    def __init__(
        self,
        base_url: str,
        *,
        size: int,
        connect_timeout: float,
        read_timeout: float,
        max_wait: float | None = None,
        idle_seconds: float = PEER_IDLE_SECONDS,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        """``max_wait``: the longest a request waits for a connection when all ``size`` are busy
        (then :class:`UpstreamError` ``busy``); ``None``: as long as it takes."""
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) base URL: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if parts.scheme == "https" else None
        self.host_header = parts.netloc.rpartition("@")[2].encode("idna")
        self.prefix = parts.path.rstrip("/").encode()
        self.size = size
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_wait = max_wait
        self.idle_seconds = idle_seconds
        self.loop = loop or asyncio.get_running_loop()
        self.open = 0
        self.waits = 0  # requests that found every connection busy and waited (a counter)
        self.waiting = 0  # requests waiting for a connection now
        self._idle: list[Connection] = []
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._busy: set[Connection] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._outbox: list[tuple[Connection, bytes]] = []
        self.closed = False

    def take_idle(self) -> Connection | None:
        """A pooled connection that is still good, without suspending (the common case)."""
        idle = self._idle
        while idle:
            connection = idle.pop()
            if connection.closed or connection.transport is None or connection.transport.is_closing():
                continue  # the upstream hung up; connection_lost has freed (or will free) the slot
            if self.loop.time() - connection.idle_since > self.idle_seconds:
                connection.abort()  # the upstream may be closing it right now
                continue
            if _peer_gone(connection.sock):
                connection.abort()  # its FIN or reset arrived, the event loop has not said so yet
                continue
            return connection
        return None

    def send(self, connection: Connection, data: bytes) -> None:
        """Write ``data`` to ``connection`` once the callbacks of this round of the event loop have run.

        Requests started from the client connections' read callbacks (:mod:`gateway.serving`) would
        otherwise each wake the upstream as it is read: on a shared core the upstream then preempts
        the gateway in the middle of its round, once per request (measured with ``perf stat``: 0.70
        context switches per request instead of 0.48). Held to the end of the round, the writes of
        every request read in it go out together, as they did when each request had a task of its own.
        """
        if not self._outbox:
            self.loop.call_soon(self._flush_outbox)
        self._outbox.append((connection, data))

    def _flush_outbox(self) -> None:
        outbox, self._outbox = self._outbox, []
        for connection, data in outbox:
            transport = connection.transport
            if connection.closed or transport is None or transport.is_closing():
                error = connection.error
                if error is not None and connection.served > 0 and connection._received == 0:
                    error.unsent = True  # gone before its request was written: it never left
                continue
            transport.write(data)

    async def acquire(self, *, fresh: bool = False) -> Connection:
        """A connection: an idle one, else a new one, else wait (``max_wait`` at most in all, then
        ``busy``). ``fresh``: a new connection (for a retry), making room by closing an idle one when
        the pool is full."""
        deadline = None if self.max_wait is None else self.loop.time() + self.max_wait
        while True:
            if self.closed:
                raise UpstreamError("connect", "the connection pool is closed")
            if fresh and self.open >= self.size and self._idle:
                spare = self._idle.pop()
                spare.abort()
                self.forget(spare)  # its slot is free now; connection_lost finds it forgotten
            connection = None if fresh else self.take_idle()
            if connection is not None:
                return connection
            if self.open < self.size:
                return await self._connect()
            self.waits += 1
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            self.waiting += 1
            try:
                if deadline is None:
                    await waiter
                else:
                    async with asyncio.timeout_at(deadline):
                        await waiter
            except BaseException as exc:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # woken just as the wait ran out (or was cancelled): pass it on
                if isinstance(exc, TimeoutError):
                    raise UpstreamError(
                        "busy", f"every connection to the upstream stayed busy for {self.max_wait:g} s"
                    ) from None
                raise
            finally:
                self.waiting -= 1
                if not waiter.done():
                    waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    async def _connect(self) -> Connection:
        self.open += 1
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await self.loop.create_connection(
                    lambda: Connection(self),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None,
                )
        except TimeoutError:
            self._lost_slot()
            raise UpstreamError("connect", "connecting to the upstream timed out") from None
        except OSError as exc:
            self._lost_slot()
            raise UpstreamError("connect", f"cannot connect to the upstream ({exc.strerror})") from None
        except BaseException:
            self._lost_slot()
            raise
        return connection

    @property
    def idle(self) -> int:
        return len(self._idle)

    def watch(self, connection: Connection) -> None:
        self._busy.add(connection)
        if self._sweeper is None:
            self._sweeper = self.loop.create_task(self._sweep())

    def unwatch(self, connection: Connection) -> None:
        self._busy.discard(connection)

    async def _sweep(self) -> None:
        # One task per pool checks read deadlines, instead of a timer armed and cancelled per request
        # (which cost more than signing the identity); a timeout fires within a quarter of it late.
        interval = min(1.0, self.read_timeout / 4)
        while True:
            await asyncio.sleep(interval)
            now = self.loop.time()
            for connection in list(self._busy):
                connection.check_deadline(now)

    def release(self, connection: Connection) -> None:
        if self.closed:
            connection.abort()
            return
        connection.idle_since = self.loop.time()
        self._idle.append(connection)
        self._wake_one()

    def forget(self, connection: Connection) -> None:
        """Called once a connection is gone: its slot is free again."""
        if connection._forgotten:
            return
        connection._forgotten = True
        with contextlib.suppress(ValueError):
            self._idle.remove(connection)
        self._lost_slot()

    def _lost_slot(self) -> None:
        self.open -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.abort()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        await asyncio.sleep(0)  # let the transports report connection_lost
