"""Streaming forwarder: raw ASGI towards the client, :mod:`gateway.upstream` pools towards the services.

* Request bodies: refused early with 413 by ``Content-Length``; small bodies are read whole and sent
  with the head in one write, others streamed (chunked) with a running byte count that aborts at
  ``MAX_BODY_BYTES``.
* Headers: hop-by-hop headers (and any named in ``Connection``) are dropped both ways, together with
  every inbound identity header, ``Authorization`` (services never see the end-user token), cookies
  and inbound forwarding headers; the caller's signed identity and ``X-Forwarded-*`` are added by the
  caller of :meth:`Forwarder.forward`.
* Failures before the response head: connect failure, or every pooled connection busy for
  ``UPSTREAM_POOL_WAIT_SECONDS`` (``upstream_busy``) → 503 with ``Retry-After``, timeout → 504,
  broken upstream → 502 with ``Retry-After``; for a write, the problem's ``outcome`` says whether it
  can have taken effect (:class:`UpstreamFailure`). A request is sent once more, on a fresh connection,
  when its pooled connection turned out to be closed and it is idempotent, or whatever its method
  when it provably never reached the upstream (``UpstreamError.unsent``). A failure after the head
  was sent ends the response early (:class:`UpstreamBrokeOff`): the client sees a truncated body.
* Slow clients: a pooled connection goes back to the pool as soon as its response is in the gateway's
  memory, before the client is fed; a response over :data:`SMALL_BODY` is read ahead whole within the
  worker's budget, else streamed for a bounded time (:mod:`gateway.readahead`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping

from starlette.types import Receive, Send

from . import metrics
from .readahead import ReadAhead
from .upstream import Connection, UpstreamError, UpstreamPool

log = logging.getLogger("gateway.proxy")

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
#: Inbound headers never forwarded upstream (besides hop-by-hop ones and ``x-identity-*``).
STRIPPED_INBOUND = HOP_BY_HOP | {
    b"host",
    b"authorization",
    b"dpop",  # the proof was for the gateway; services get the signed identity
    b"cookie",
    b"x-request-id",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-forwarded-port",
    b"x-real-ip",
    b"forwarded",
    b"content-length",
    b"expect",
    b"content-digest",  # the gateway sends its own, bound by the identity signature
}
#: Upstream response headers replaced by the gateway's own.
STRIPPED_OUTBOUND = HOP_BY_HOP | {b"x-request-id", b"date", b"server", b"content-length"}
SMALL_BODY = 64 * 1024
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
#: methods that change nothing: a failed one has no outcome to report
SAFE = frozenset({"GET", "HEAD", "OPTIONS"})
#: Methods whose requests carry no body unless the client sends one (no ``Content-Length: 0`` then).
NO_BODY_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE"})


class BodyTooLarge(Exception):
    pass


class ClientGone(Exception):
    pass


class UpstreamFailure(Exception):
    """A failure before the response head. ``outcome`` (for a method that changes something; empty
    for a read) is the problem's ``outcome`` member, as the services' own 503s give it:
    ``not_stored`` when no attempt can have reached the service (it could not be connected to, or
    provably never read the request), ``unknown`` when one may have (it broke off or stayed silent
    after the request went out: it may have acted on it)."""

    def __init__(self, status: int, kind: str, detail: str, outcome: str = "", reason: str = "") -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail
        self.outcome = outcome
        self.reason = reason


#: An upstream's 401: it refused the identity the gateway signed (svckit.identity.IdentityGate). The
#: caller's token was verified here already, so it is never the caller's to hear (a 401 sends the SPA to
#: renew, then to sign in again, which cannot help): :meth:`Forwarder._identity_refused` makes it a 502.
IDENTITY_REFUSED = 401
#: the service's reasons for a timestamp beyond its window (svckit.identity.CLOCK_SKEW; ``stale`` from a
#: service of an earlier release, during a rolling upgrade), and the gateway's for it: a clock is off
UPSTREAM_CLOCK_SKEW = frozenset({"clock_skew", "stale"})
IDENTITY_CLOCK_SKEW = "identity_clock_skew"
#: any other refusal of the signed identity (keys that do not match, a replayed nonce): the platform's
#: configuration, not the caller
IDENTITY_REJECTED = "upstream_identity_refused"
_UPSTREAM_REASON = re.compile(rb'"reason"\s*:\s*"([a-z_]{1,40})"')


def connection_tokens(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    names: set[bytes] = set()
    for key, value in headers:
        if key == b"connection":
            names.update(token.strip().lower() for token in value.split(b","))
    return frozenset(names)


async def read_body(receive: Receive, limit: int, *, stream_above: int | None = None) -> bytes | BodyStream:
    """The inbound body, whole; past ``stream_above`` bytes the rest is handed over as a stream.

    Reading the start of a body of unknown length before contacting the upstream means a small
    chunked upload goes out with a ``Content-Length`` in one write, and one that turns out too large
    early is refused without the upstream ever seeing a request.
    """
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks) if len(chunks) != 1 else chunks[0]
        if stream_above is not None and total > stream_above:
            return BodyStream(receive, limit, chunks, total)


class BodyStream:
    """The inbound body as an async iterator, bounded by ``limit`` (``first``: chunks already read)."""

    def __init__(
        self, receive: Receive, limit: int, first: list[bytes] | None = None, received: int = 0
    ) -> None:
        self.receive = receive
        self.limit = limit
        self.first = first or []
        self.received = received

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.first:
            if chunk:
                yield chunk
        total = self.received
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.limit:
                raise BodyTooLarge
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return


class UpstreamBrokeOff(Exception):
    """The upstream failed after the response head went to the client (already logged and counted)."""


class _Held:
    """The pooled connection of one exchange until it is given back: as soon as the response is in
    memory (:meth:`Forwarder._relay`), else when :meth:`Forwarder.forward` ends."""

    __slots__ = ("connection",)

    def __init__(self, connection: Connection) -> None:
        self.connection: Connection | None = connection

    def release(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.finish()


class Forwarder:
    def __init__(
        self,
        pools: Mapping[str, UpstreamPool],
        request_metrics: metrics.RequestMetrics,
        *,
        read_ahead: ReadAhead | None = None,
        stream_seconds: float = 30.0,
    ) -> None:
        """``read_ahead``: the worker's budget for responses read ahead of their clients (none: every
        response over :data:`SMALL_BODY` is streamed); ``stream_seconds``: how long a streamed response
        may hold its upstream connection (``UPSTREAM_READ_TIMEOUT_SECONDS``)."""
        self.pools = pools
        self.metrics = request_metrics
        self.read_ahead = read_ahead if read_ahead is not None else ReadAhead(0)
        self.stream_seconds = stream_seconds

    async def forward(
        self,
        *,
        service: str,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]] | bytes,
        signed: bytes,
        body: bytes | BodyStream | None,
        send: Send,
        resign: Callable[[], bytes] | None = None,
        extra_response_headers: list[tuple[bytes, bytes]],
        on_status: Callable[[int], None],
        started: Exchange | None = None,
    ) -> None:
        """Send the request upstream and stream the answer to ``send``.

        ``signed`` is the identity header block, already serialised (:class:`PreparedIdentity`);
        ``resign`` gives a fresh one for a retry (a receiver accepts each signed request once).
        ``started``: the first attempt, already sent by :meth:`start` (the callback path of
        :mod:`gateway.serving` hands over whatever it does not relay itself: errors, retries, large
        or streamed answers, a client that is not reading).
        Raises :class:`UpstreamFailure`, :class:`BodyTooLarge` or :class:`ClientGone` only before
        anything was sent to the client, :class:`UpstreamBrokeOff` after.
        """
        pool = self.pools[service]
        head = _request_head(method, pool.prefix + target, pool.host_header, headers, signed, body)
        expect_body = method != "HEAD"
        streamed = isinstance(body, BodyStream)
        attempts = 1 if streamed else 2  # a streamed body cannot be sent twice
        started_at = started.started_at if started is not None else time.perf_counter()
        reached = False  # whether an attempt so far may have reached the service
        for attempt in range(attempts):
            if attempt == 0 and started is not None:
                connection = started.connection
            else:
                idle = pool.take_idle() if attempt == 0 else None  # the common case needs no suspension
                if attempt and resign is not None:
                    head = _request_head(
                        method, pool.prefix + target, pool.host_header, headers, resign(), body
                    )
                try:
                    connection = idle if idle is not None else await pool.acquire(fresh=attempt > 0)
                except UpstreamError as exc:
                    raise self._failure(service, exc, method, reached) from None
            try:
                if attempt == 0 and started is not None:
                    pass
                elif isinstance(body, BodyStream):
                    await connection.start_streaming(head, body, expect_body=expect_body)
                else:
                    connection.start(head, body, expect_body=expect_body)
                await connection.read_head()
            except UpstreamError as exc:
                connection.abort()
                reached = reached or not (exc.unsent or exc.kind == "connect")
                if attempt + 1 < attempts and (exc.unsent or (exc.retryable and method in IDEMPOTENT)):
                    metrics.upstream_retries.labels(service, "unsent" if exc.unsent else "idempotent").inc()
                    continue
                raise self._failure(service, exc, method, reached) from None
            except BaseException:
                connection.abort()
                raise
            break
        self.metrics.upstream(service, time.perf_counter() - started_at)
        if connection.status == IDENTITY_REFUSED:
            raise await self._identity_refused(connection, service, method)
        held = _Held(connection)
        try:
            await self._relay(held, connection, send, extra_response_headers, on_status, service, method)
        finally:
            held.release()

    def start(
        self,
        *,
        service: str,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]] | bytes,
        signed: bytes,
        body: bytes | None,
    ) -> Exchange | None:
        """The first attempt of :meth:`forward`, sent without suspending on an idle pooled connection
        (``None``: none idle, so :meth:`forward` must wait for one)."""
        pool = self.pools[service]
        connection = pool.take_idle()
        if connection is None:
            return None
        started_at = time.perf_counter()
        head = _request_head(method, pool.prefix + target, pool.host_header, headers, signed, body)
        connection.start(head, body, expect_body=method != "HEAD", defer=True)
        return Exchange(connection, started_at)

    def relayable(self, exchange: Exchange) -> bool | None:
        """Whether the callback path can answer now from a started exchange without suspending:
        ``True`` (the response is complete), ``False`` (hand it to :meth:`forward`: an error, or a
        body to stream), ``None`` (not yet: wait for more of it)."""
        connection = exchange.connection
        if connection.complete:
            return connection.status != IDENTITY_REFUSED
        if connection.error is not None:
            return False
        if not connection.head_done:
            return None
        if connection.status == IDENTITY_REFUSED:
            return False
        if not connection.expect_body or connection.status in (204, 304):
            return True
        length = connection.content_length
        return None if length is not None and length <= SMALL_BODY else False

    def answer(
        self, exchange: Exchange, service: str, extra: list[tuple[bytes, bytes]]
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """A relayable exchange's response for the client: status, headers, whole body (the exchange
        is not finished: the caller writes the answer, then calls :meth:`Exchange.finish`)."""
        connection = exchange.connection
        self.metrics.upstream(service, time.perf_counter() - exchange.started_at)
        headers = self._response_headers(connection)
        length = connection.content_length
        if not connection.expect_body or connection.status in (204, 304):
            if length is not None:
                headers.append((b"content-length", str(length).encode()))
            body = b""
        else:
            body = connection.take_body()
            headers.append((b"content-length", str(len(body)).encode()))
        headers.extend(extra)
        return connection.status, headers, body

    def answer_block(
        self, exchange: Exchange, service: str, extra: list[tuple[bytes, bytes]]
    ) -> tuple[int, bytes, bytes] | None:
        """:meth:`answer` for the common relayable response — complete, with a body, and no
        ``Connection`` header from the upstream — with its header lines already serialised: the
        upstream's end-to-end headers (names lower-cased by the parser), ``content-length`` and
        ``extra`` (the gateway's own, lower-case names). ``None``: anything else (:meth:`answer`)."""
        connection = exchange.connection
        status = connection.status
        if (
            not connection.complete
            or not connection.expect_body
            or status in (204, 304)
            or connection.has_connection_header
        ):
            return None
        self.metrics.upstream(service, time.perf_counter() - exchange.started_at)
        body = connection.take_body()
        parts: list[bytes] = []
        for key, value in connection.headers:
            if key not in STRIPPED_OUTBOUND:
                parts += (key, b": ", value, b"\r\n")
        parts += (b"content-length: ", b"%d" % len(body), b"\r\n")
        for key, value in extra:
            parts += (key, b": ", value, b"\r\n")
        return status, b"".join(parts), body

    @staticmethod
    def _response_headers(connection: Connection) -> list[tuple[bytes, bytes]]:
        """The upstream's end-to-end response headers (its hop-by-hop ones, and those named in its
        ``Connection``, dropped; ``content-length`` too: the caller sets its own)."""
        raw = connection.headers
        dropped = STRIPPED_OUTBOUND
        if connection.has_connection_header:
            dropped = dropped | connection_tokens(raw)
        return [(key, value) for key, value in raw if key not in dropped]

    @staticmethod
    def _failure(service: str, exc: UpstreamError, method: str, reached: bool) -> UpstreamFailure:
        reason = ""
        if exc.kind == "timeout":
            status, detail = 504, f"The {service} service did not answer in time."
        elif exc.kind == "busy":
            # every pooled connection taken (by requests a frozen or slow service does not answer):
            # the request was never sent
            status, detail, reason = (
                503,
                f"The {service} service is busy answering earlier requests.",
                "upstream_busy",
            )
        elif exc.kind == "connect":
            status, detail = 503, f"The {service} service is unreachable."
        else:
            status, detail = 502, f"The {service} service failed to answer properly."
        outcome = ""
        if method not in SAFE:
            outcome = "unknown" if reached else "not_stored"
            detail += (
                " Whether the request took effect is unknown: repeat it with the same Idempotency-Key,"
                " or look the resource up, once the service answers again."
                if reached
                else " The request did not reach it: nothing was changed."
            )
        metrics.upstream_errors.labels(service, exc.kind).inc()
        log.warning("upstream request failed", extra={"upstream": service, "error": exc.detail})
        return UpstreamFailure(status, exc.kind, detail, outcome, reason=reason)

    async def _identity_refused(self, connection: Connection, service: str, method: str) -> UpstreamFailure:
        """The service refused the signed identity (its 401): a 502 that names the cause — the clocks
        (``identity_clock_skew``) or anything else (``upstream_identity_refused``) — counted in
        ``gateway_upstream_errors_total{service, kind}`` under that name. The service refused before
        its handler ran, so a write took no effect (``not_stored``)."""
        held = _Held(connection)
        body = b""
        try:
            length = connection.content_length
            if connection.complete:
                body = connection.take_body()
            elif length is not None and length <= SMALL_BODY:
                body = await connection.read_body()
        except UpstreamError:
            pass  # the reason is unknown: the generic refusal
        finally:
            held.release()  # back to the pool when the answer was read whole, else closed
        match = _UPSTREAM_REASON.search(body)
        upstream_reason = match.group(1).decode() if match else "unknown"
        if upstream_reason in UPSTREAM_CLOCK_SKEW:
            kind = IDENTITY_CLOCK_SKEW
            detail = (
                f"The {service} service refused this request because its clock and the gateway's "
                "disagree: a server clock on the platform is off. Nothing is wrong with your sign-in."
            )
        else:
            kind = IDENTITY_REJECTED
            detail = (
                f"The {service} service refused the identity the gateway forwarded ({upstream_reason}): "
                "a configuration fault of the platform. Nothing is wrong with your sign-in."
            )
        outcome = ""
        if method not in SAFE:
            outcome = "not_stored"
            detail += " The request was not carried out: nothing was changed."
        metrics.upstream_errors.labels(service, kind).inc()
        log.warning(
            "upstream refused the signed identity", extra={"upstream": service, "reason": upstream_reason}
        )
        return UpstreamFailure(502, kind, detail, outcome, reason=kind)

    async def _relay(
        self,
        held: _Held,
        connection: Connection,
        send: Send,
        extra: list[tuple[bytes, bytes]],
        on_status: Callable[[int], None],
        service: str,
        method: str,
    ) -> None:
        """The response to the client; the connection given back (``held``) as soon as the whole
        response is in memory, before the client has taken any of it (:mod:`gateway.readahead`)."""
        headers = self._response_headers(connection)
        length = connection.content_length
        status = connection.status
        on_status(status)
        if not connection.expect_body or status in (204, 304):
            held.release()
            if length is not None:
                headers.append((b"content-length", str(length).encode()))
            headers.extend(extra)
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        if connection.complete or (length is not None and length <= SMALL_BODY):
            try:
                body = connection.take_body() if connection.complete else await connection.read_body()
            except UpstreamError as exc:  # the service answered, but its answer was lost
                raise self._failure(service, exc, method, reached=True) from None
            held.release()
            headers.append((b"content-length", str(len(body)).encode()))
            headers.extend(extra)
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        if length is not None and self.read_ahead.reserve(length):
            try:
                await self._relay_read_ahead(held, connection, send, headers + extra, service, method)
            finally:
                self.read_ahead.give_back(length)
            return
        metrics.response_streamed.labels(service).inc()
        if length is not None:
            headers.append((b"content-length", str(length).encode()))
        headers.extend(extra)
        await self._relay_streamed(held, connection, send, headers, service)

    async def _relay_read_ahead(
        self,
        held: _Held,
        connection: Connection,
        send: Send,
        headers: list[tuple[bytes, bytes]],
        service: str,
        method: str,
    ) -> None:
        """A large response read whole as fast as the upstream sends it (its length reserved in the
        budget), the connection given back, then fed to the client from memory."""
        connection.read_ahead()
        try:
            await connection.wait_complete()
        except UpstreamError as exc:
            raise self._failure(service, exc, method, reached=True) from None  # nothing sent yet: 502/504
        status, chunks = connection.status, connection.take_chunks()
        held.release()  # from here on the connection may serve another request
        headers.append((b"content-length", str(sum(map(len, chunks))).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        chunks.reverse()
        while True:  # handed over piece by piece, each after the client's socket took the previous
            chunk = chunks.pop() if chunks else b""
            await send({"type": "http.response.body", "body": chunk, "more_body": bool(chunks)})
            if not chunks:
                return

    async def _relay_streamed(
        self,
        held: _Held,
        connection: Connection,
        send: Send,
        headers: list[tuple[bytes, bytes]],
        service: str,
    ) -> None:
        """A response relayed with back-pressure, holding its connection: for no longer than
        :attr:`stream_seconds`, after which the client's response is cut off; given back as soon as
        the rest of the response is in memory."""
        rest: list[bytes] = []
        try:
            async with asyncio.timeout(self.stream_seconds):
                await send({"type": "http.response.start", "status": connection.status, "headers": headers})
                async for chunk in connection.iter_body():
                    if connection.complete:  # the rest is here: the connection goes back now
                        rest = [chunk, *connection.take_chunks()]
                        held.release()
                        break
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamError as exc:
            metrics.upstream_errors.labels(service, exc.kind).inc()
            log.warning("upstream broke off mid-response", extra={"upstream": service, "error": exc.detail})
            raise UpstreamBrokeOff from None
        except TimeoutError:
            metrics.response_cutoffs.labels(service).inc()
            log.warning(
                "streamed response cut off",
                extra={
                    "upstream": service,
                    "error": f"not relayed within {self.stream_seconds:g} s (a slow client, most likely)",
                },
            )
            raise UpstreamBrokeOff from None
        for chunk in rest:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class Exchange:
    """A request sent upstream by :meth:`Forwarder.start`, its response not yet relayed."""

    __slots__ = ("connection", "started_at")

    def __init__(self, connection: Connection, started_at: float) -> None:
        self.connection = connection
        self.started_at = started_at

    def finish(self) -> None:
        self.connection.finish()


def _request_head(
    method: str,
    target: bytes,
    host: bytes,
    headers: list[tuple[bytes, bytes]] | bytes,
    signed: bytes,
    body: bytes | BodyStream | None,
) -> bytes:
    """The request line and headers, framed for HTTP/1.1.

    No value can smuggle a line break: inbound headers were parsed by uvicorn's llhttp, the target
    was checked to be printable ASCII, and the identity block by :class:`PreparedIdentity`.
    """
    lines = [method.encode(), b" ", target, b" HTTP/1.1\r\nhost: ", host, b"\r\n"]
    if isinstance(headers, bytes):  # already header lines (gateway.stages.Forward.upstream_headers)
        lines.append(headers)
    else:
        for key, value in headers:
            lines += (key, b": ", value, b"\r\n")
    lines.append(signed)
    if isinstance(body, BodyStream):
        lines.append(b"transfer-encoding: chunked\r\n\r\n")
    elif body:
        lines += (b"content-length: ", str(len(body)).encode(), b"\r\n\r\n")
    elif method in NO_BODY_METHODS:
        lines.append(b"\r\n")
    else:
        lines.append(b"content-length: 0\r\n\r\n")
    return b"".join(lines)
