"""Streaming forwarder: one pooled keep-alive aiohttp session per worker, raw ASGI on both sides.

* Request bodies: refused early with 413 by ``Content-Length``; small bodies are read whole, others
  streamed with a running byte count that aborts at ``MAX_BODY_BYTES``.
* Headers: hop-by-hop headers (and any named in ``Connection``) are dropped both ways, together with
  every inbound identity header, ``Authorization`` (services never see the end-user token), cookies
  and inbound forwarding headers; the caller's signed identity and ``X-Forwarded-*`` are added by the
  caller of :meth:`Forwarder.forward`.
* Failures before the response head: connect failure → 503 with ``Retry-After``, timeout → 504,
  broken upstream → 502 with ``Retry-After``. An idempotent request whose pooled connection turned out
  to be closed is retried once on a fresh one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from starlette.types import Message, Receive, Send
from yarl import URL

from . import metrics

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
}
#: Upstream response headers replaced by the gateway's own.
STRIPPED_OUTBOUND = HOP_BY_HOP | {b"x-request-id", b"date", b"server", b"content-length"}
SMALL_BODY = 64 * 1024
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


class BodyTooLarge(Exception):
    pass


class ClientGone(Exception):
    pass


class UpstreamFailure(Exception):
    def __init__(self, status: int, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail


def connection_tokens(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    names: set[bytes] = set()
    for key, value in headers:
        if key == b"connection":
            names.update(token.strip().lower() for token in value.split(b","))
    return frozenset(names)


def new_session(pool_size: int, connect_timeout: float, read_timeout: float) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=pool_size,
            limit_per_host=pool_size,
            keepalive_timeout=4.0,  # below uvicorn's 5 s idle close, so pooled sockets are rarely stale
            ttl_dns_cache=60,
            enable_cleanup_closed=True,
        ),
        timeout=aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=read_timeout),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        cookie_jar=aiohttp.DummyCookieJar(),
        raise_for_status=False,
    )


async def read_body(receive: Receive, limit: int) -> bytes:
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


class BodyStream:
    """The inbound body as an async iterator for aiohttp, bounded by ``limit``."""

    def __init__(self, receive: Receive, limit: int) -> None:
        self.receive = receive
        self.limit = limit
        self.too_large = False
        self.gone = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        total = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.gone = True
                raise ClientGone
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.limit:
                self.too_large = True
                raise BodyTooLarge
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return


class Forwarder:
    def __init__(self, session: aiohttp.ClientSession, request_metrics: metrics.RequestMetrics) -> None:
        self.session = session
        self.metrics = request_metrics

    async def forward(
        self,
        *,
        service: str,
        method: str,
        url: URL,
        headers: list[tuple[str, str]],
        body: bytes | BodyStream | None,
        send: Send,
        extra_response_headers: list[tuple[bytes, bytes]],
        on_status: Callable[[int], None],
    ) -> None:
        """Send the request upstream and stream the answer to ``send``.

        Raises :class:`UpstreamFailure`, :class:`BodyTooLarge` or :class:`ClientGone` only before
        anything was sent to the client; later failures end the response early.
        """
        attempts = 2 if method in IDEMPOTENT and not isinstance(body, BodyStream) else 1
        data: Any = body.__aiter__() if isinstance(body, BodyStream) else body
        started = time.perf_counter()
        for attempt in range(attempts):
            try:
                response = await self.session.request(
                    method, url, headers=headers, data=data, allow_redirects=False, compress=None
                )
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                self._check_body(body)
                if attempt + 1 < attempts and not isinstance(exc, aiohttp.ClientConnectorError):
                    continue
                raise self._failure(service, exc) from None
            except (aiohttp.ClientError, TimeoutError, ClientGone, BodyTooLarge) as exc:
                self._check_body(body)
                if isinstance(exc, ClientGone | BodyTooLarge):
                    raise
                raise self._failure(service, exc) from None
            break
        try:
            self.metrics.upstream(service, time.perf_counter() - started)
            await self._relay(response, send, extra_response_headers, on_status, service)
        finally:
            response.release()

    @staticmethod
    def _check_body(body: bytes | BodyStream | None) -> None:
        if isinstance(body, BodyStream):
            if body.too_large:
                raise BodyTooLarge
            if body.gone:
                raise ClientGone

    @staticmethod
    def _failure(service: str, exc: BaseException) -> UpstreamFailure:
        if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
            kind, status, detail = "timeout", 504, f"The {service} service did not answer in time."
        elif isinstance(exc, aiohttp.ClientConnectorError):
            kind, status, detail = "connect", 503, f"The {service} service is unreachable."
        else:
            kind, status, detail = "protocol", 502, f"The {service} service failed to answer properly."
        metrics.upstream_errors.labels(service, kind).inc()
        log.warning("upstream request failed", extra={"upstream": service, "error": type(exc).__name__})
        return UpstreamFailure(status, kind, detail)

    async def _relay(
        self,
        response: aiohttp.ClientResponse,
        send: Send,
        extra: list[tuple[bytes, bytes]],
        on_status: Callable[[int], None],
        service: str,
    ) -> None:
        raw = list(response.raw_headers)
        dropped = STRIPPED_OUTBOUND | connection_tokens(raw)
        headers = [(key.lower(), value) for key, value in raw if key.lower() not in dropped]
        length = response.content_length
        status = response.status
        on_status(status)
        if response.method == "HEAD" or status in (204, 304):
            headers.extend((key.lower(), value) for key, value in raw if key.lower() == b"content-length")
            headers.extend(extra)
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        if length is not None and length <= SMALL_BODY:
            try:
                body = await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise self._failure(service, exc) from None
            headers.append((b"content-length", str(len(body)).encode()))
            headers.extend(extra)
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        if length is not None:
            headers.append((b"content-length", str(length).encode()))
        headers.extend(extra)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        message: Message
        try:
            async for chunk in response.content.iter_any():
                message = {"type": "http.response.body", "body": chunk, "more_body": True}
                await send(message)
        except (aiohttp.ClientError, TimeoutError) as exc:
            metrics.upstream_errors.labels(service, "protocol").inc()
            log.warning(
                "upstream broke off mid-response", extra={"upstream": service, "error": type(exc).__name__}
            )
            raise
        await send({"type": "http.response.body", "body": b"", "more_body": False})
