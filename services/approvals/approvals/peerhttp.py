"""Keep-alive HTTP/1.1 to the timesheets service: the approvals service's peer hop.

Why not aiohttp's client here, when the rest of the service uses it (the outbox relay, the readiness
check): a decision makes two calls to the timesheets service and the queue one, and
``ClientSession.request`` spends about as much CPU per call as everything the approvals service does
for the call itself (request and response objects, multidicts, URL building, timers, tracing hooks):
measured with ``bench/approvals.py`` (the figures are in the service README and in the commit that
introduced this module). The hop needs none of that: one known peer, small JSON bodies, requests
signed as the one principal ``service:approvals`` (its identity headers prepared once:
:class:`svckit.identity.PreparedIdentity`). So the head is framed here as bytes, written with the body
in one ``write``, and the answer parsed by llhttp through ``httptools`` (the parser uvicorn serves
with). What it has to get right:

* framing: ``Content-Length`` or chunked answers (llhttp), ``1xx`` heads skipped, a parse error or
  bytes nobody asked for retire the connection;
* reuse: a connection goes back to a LIFO pool only after a complete answer the peer did not mark
  ``Connection: close``; one idle longer than ``idle_seconds`` (below the kit's ``KEEP_ALIVE_SECONDS``) is
  closed rather than used; the pool holds at most ``limit`` connections, callers beyond wait;
* timeouts: one deadline per call (connect, waiting for a pool slot, the answer);
  a call that times out or is cancelled closes its connection (its answer may still come);
* connection loss: :class:`PeerHttpError`; a reused connection that closed before any byte of the
  answer (the peer may have closed it idle just as it was sent) is sent again on a new connection,
  once, only for requests the caller marks idempotent.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from typing import cast
from urllib.parse import urlsplit

import httptools
from svckit.context import current_request_id, new_request_id
from svckit.identity import EMPTY_DIGEST, Identity, IdentitySigner, content_digest, new_nonce

MAX_HEAD_BYTES = 64 * 1024
_UNSAFE = re.compile(r"[^\x21-\x7e]")  # what a request id or target must not hold to become a head line


class PeerHttpError(Exception):
    """The call failed without an answer: could not connect, the connection broke, or the answer was
    not HTTP. ``retryable``: a reused connection ended before any byte of the answer came back."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class _Connection(asyncio.Protocol):
    """One keep-alive connection: a single request at a time, its answer collected by the parser."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.parts: list[bytes] = []
        self.status = 0
        self.head_bytes = 0
        self.received = False
        self.reusable = False
        self.closed = False
        self.idle_since = 0.0

    # --- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's is no asyncio.Transport subclass)

    def data_received(self, data: bytes) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():  # an answer nobody asked for
            self.close()
            return
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(PeerHttpError("the peer switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(PeerHttpError(f"the peer's answer is not HTTP/1.1: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        if self.waiter is not None and not self.waiter.done():
            reason = type(exc).__name__ if exc is not None else "closed"
            self.waiter.set_exception(
                PeerHttpError(f"connection to the peer lost ({reason})", retryable=not self.received)
            )

    # --- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.parts.clear()
        self.head_bytes = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value)
        if self.head_bytes > MAX_HEAD_BYTES:
            raise httptools.HttpParserError("the answer's head is too large")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.parts.append(body)

    def on_message_complete(self) -> None:
        if self.status < 200:  # an interim answer (100 Continue, 103): the real one follows
            return
        self.reusable = self.parser.should_keep_alive()
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result((self.status, b"".join(self.parts)))

    # --- use -----------------------------------------------------------------------------------

    def _fail(self, error: PeerHttpError) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(error)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def send(self, data: bytes, loop: asyncio.AbstractEventLoop) -> asyncio.Future[tuple[int, bytes]]:
        self.waiter = waiter = loop.create_future()
        self.received = self.reusable = False
        self.status = 0
        assert self.transport is not None
        self.transport.write(data)
        return waiter


class PeerHttp:
    """Signed requests to one peer (``base_url``) as one principal, over a pool of keep-alive
    connections. :meth:`request` answers ``(status, body)`` or raises :class:`PeerHttpError` /
    ``TimeoutError``."""

    def __init__(
        self,
        base_url: str,
        signer: IdentitySigner,
        principal: Identity,
        *,
        limit: int = 64,
        idle_seconds: float = 2.0,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"the peer's URL must be http://host[:port][/prefix]: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self._host_line = f"host: {parts.netloc}\r\n".encode()
        self.identity = signer.prepare(principal)
        self.idle_seconds = idle_seconds
        self._idle: deque[_Connection] = deque()
        self._slots = asyncio.Semaphore(limit)
        self._closed = False

    async def request(
        self,
        method: str,
        target: str,
        *,
        body: bytes = b"",
        content_type: bytes = b"application/json",
        timeout: float,
        idempotent: bool,
    ) -> tuple[int, bytes]:
        """``target``: the path (after the base URL's own) and query, as sent and signed."""
        target = self.prefix + target
        if _UNSAFE.search(target) is not None:
            raise ValueError("the request target holds characters that cannot be sent as they are")
        request_id = current_request_id()
        if not request_id or _UNSAFE.search(request_id) is not None:
            request_id = new_request_id()
        target_bytes = target.encode()
        line = f"{method} {target} HTTP/1.1\r\n".encode()
        digest = (content_digest(body) if body else EMPTY_DIGEST).encode()
        framing = b"content-type: %s\r\ncontent-length: %d\r\n" % (content_type, len(body)) if body else b""

        def signed() -> bytes:
            """The request, signed with a nonce of its own: a receiver accepts each signed request
            once, so a copy sent again after its first reached the peer would be refused as a replay."""
            block = self.identity.header_block(
                method=method,
                target=target_bytes,
                request_id=request_id.encode(),
                timestamp=str(int(time.time())).encode(),
                nonce=new_nonce().encode(),
                digest=digest,
            )
            return b"".join((line, self._host_line, block, framing, b"\r\n", body))

        async with asyncio.timeout(timeout):
            async with self._slots:
                for attempt in (1, 2):
                    data = signed()
                    connection, reused = await self._connection()
                    try:
                        answer = await connection.send(data, asyncio.get_running_loop())
                    except PeerHttpError as exc:
                        connection.close()
                        if attempt == 1 and reused and exc.retryable and idempotent:
                            continue
                        raise
                    except BaseException:  # a timeout or a cancellation: its answer may still come
                        connection.close()
                        raise
                    connection.waiter = None
                    if connection.reusable and not connection.closed and not self._closed:
                        connection.idle_since = time.monotonic()
                        self._idle.append(connection)
                    else:
                        connection.close()
                    return answer
        raise AssertionError("unreachable")

    async def _connection(self) -> tuple[_Connection, bool]:
        """A pooled connection (the most recently used that is still fit), or a new one."""
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            transport = connection.transport
            if (
                connection.closed
                or transport is None
                or transport.is_closing()
                or now - connection.idle_since > self.idle_seconds
            ):
                connection.close()
                continue
            return connection, True
        try:
            _, connection = await asyncio.get_running_loop().create_connection(
                _Connection, self.host, self.port
            )
        except OSError as exc:
            raise PeerHttpError(f"cannot connect to the peer: {type(exc).__name__}") from exc
        return connection, False

    async def close(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()
