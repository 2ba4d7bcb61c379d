"""Clients that hold a connection without sending (svckit.server), on a real loopback server with raw
sockets and short timeouts: one that stops reading its response, one that trickles a body the server
has already answered, and more connections than a worker may hold open."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest
import uvloop
from prometheus_client import REGISTRY
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send
from svckit.server import ProblemHttpProtocol

from testkit.fixtures import answer_lifespan, serve_app

CHUNK = b"x" * 65536
FOREVER = b"GET /forever HTTP/1.1\r\nHost: x\r\n\r\n"
BIG = 16 * 1024 * 1024  # more than the kernel takes into a socket's send buffer (4 MiB)

#: how each ``/forever`` application ended ("returned" or "failed"), in order
STREAMED: list[str] = []


async def forever() -> AsyncIterator[bytes]:
    while True:
        yield CHUNK
        await asyncio.sleep(0)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """``/forever`` an endless streamed body (Starlette's streaming response, which returns when it
    hears ``http.disconnect``); ``/big`` 4 MiB in one message; ``/early`` a 413 answered without
    reading the body (as a body limit does); ``/slow`` a short 200 after half a second; anything else
    a short 200 at once."""
    if scope["type"] == "lifespan":
        await answer_lifespan(receive, send)
        return
    path = scope["path"]
    if path == "/forever":
        try:
            await StreamingResponse(forever())(scope, receive, send)
        except BaseException:
            STREAMED.append("failed")
            raise
        STREAMED.append("returned")
        return
    if path == "/early":
        body = json.dumps({"type": "about:blank", "status": 413, "title": "Content Too Large"}).encode()
        headers = [(b"content-type", b"application/problem+json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    if path == "/slow":
        await asyncio.sleep(0.5)
    body = b"x" * BIG if path == "/big" else b"ok"
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]}
    )
    await send({"type": "http.response.body", "body": body})


class Short(ProblemHttpProtocol):
    """Every timeout short; the open connections of its server visible to the test."""

    request_head_timeout = 0.8
    request_body_timeout = 0.8
    response_send_timeout = 0.5
    linger_seconds = 0.3
    max_connections = 5
    #: the server's set of open connections (uvicorn's ``server_state.connections``)
    open: set[Any] = set()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout_keep_alive = 0.4  # type: ignore[assignment]  # uvicorn's is whole seconds
        Short.open = self.connections


class NeverPaused(Short):
    """Writing never pauses (a write buffer limit far above any response here): a response's rest
    waits in the transport's buffer without flow control ever seeing it."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        transport.set_write_buffer_limits(high=64 * 1024 * 1024)
        super().connection_made(transport)


@contextlib.asynccontextmanager
async def server(protocol: type[ProblemHttpProtocol] = Short) -> AsyncIterator[tuple[str, int]]:
    async def served(scope: Scope, receive: Receive, send: Send) -> None:
        await app(scope, receive, send)

    served.http_protocol = protocol  # type: ignore[attr-defined]
    async with serve_app(served) as url:
        host, port = url.removeprefix("http://").split(":")
        yield host, int(port)


async def connect(address: tuple[str, int]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(*address)


@contextlib.asynccontextmanager
async def reluctant(address: tuple[str, int], request: bytes) -> AsyncIterator[socket.socket]:
    """A raw client socket that sent ``request`` and reads only when the test reads (no stream
    reader taking bytes in the background), with a kernel receive buffer of 4 KiB (set before the
    handshake, so its window never grows): what the client does not read stays at the server."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, address)
        await loop.sock_sendall(sock, request)
        yield sock
    finally:
        sock.close()


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


async def until(condition: Callable[[], bool], within: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def read_to_end(sock: socket.socket, within: float = 5) -> tuple[int, str]:
    """How many bytes the client can still read, and how the connection ended ("eof", "reset")."""
    loop = asyncio.get_running_loop()
    received = 0
    try:
        async with asyncio.timeout(within):
            while chunk := await loop.sock_recv(sock, 1024 * 1024):
                received += len(chunk)
    except ConnectionError:
        return received, "reset"
    return received, "eof"


# --- a client that stops reading its response -----------------------------------------------------


async def test_a_client_that_stops_reading_is_disconnected_after_the_send_timeout() -> None:
    """A streamed response to a client that reads nothing: the server's writes pause and stayed
    paused for ever (no send timeout), holding the connection and the application's task waiting to
    write. Now the connection is ended once writing has been paused RESPONSE_SEND_TIMEOUT_SECONDS
    without progress; the application hears ``http.disconnect`` and returns; counted."""
    STREAMED.clear()
    before = sample("http_send_timeouts_total")
    async with server() as address, reluctant(address, FOREVER) as sock:
        ended = await until(lambda: bool(STREAMED), within=Short.response_send_timeout + 4)
        assert ended, "the application is still writing 4.5 s after its client stopped reading"
        assert STREAMED == ["returned"]
        assert sample("http_send_timeouts_total") == before + 1
        assert await until(lambda: not Short.open, within=1)
        _, how = await read_to_end(sock)
        assert how == "reset"  # what the server still held for the client was dropped, the kernel's too


async def test_a_slow_but_steady_reader_is_not_cut_off() -> None:
    """The send timeout bounds silence, not the response: a client taking a little every 0.1 s keeps
    writing paused longer than the timeout at a time (the buffer drains slowly), and is served."""
    STREAMED.clear()
    before = sample("http_send_timeouts_total")
    loop = asyncio.get_running_loop()
    async with server() as address:
        async with reluctant(address, FOREVER) as sock:
            started, received = loop.time(), 0
            while loop.time() - started < 5 * Short.response_send_timeout:
                await asyncio.sleep(0.1)
                received += len(await asyncio.wait_for(loop.sock_recv(sock, 2048), 2))
            assert received > 0
            assert STREAMED == []  # still streaming
            assert sample("http_send_timeouts_total") == before
        assert await until(lambda: STREAMED == ["returned"], within=3)


async def test_a_response_left_in_the_buffer_of_a_closed_connection_is_dropped() -> None:
    """A complete response whose rest waits in the transport's buffer (writing never paused), to a
    client that reads nothing: the server closes the idle connection, but a close waits for the
    buffer to drain, so the connection stayed open for ever. The send timeout covers it too."""
    before = sample("http_send_timeouts_total")
    async with (
        server(NeverPaused) as address,
        reluctant(address, b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n") as sock,
    ):
        # keep-alive (0.4 s), then the linger (0.3 s), then the send timeout (0.5 s)
        counted = await until(lambda: sample("http_send_timeouts_total") == before + 1, within=5)
        assert counted, "the connection was not ended 5 s after its client stopped reading"
        assert await until(lambda: not Short.open, within=1)
        received, how = await read_to_end(sock)
        assert received < BIG
        assert how == "reset"


# --- a body trickled after an early answer ------------------------------------------------------


@pytest.mark.parametrize("framing", ["chunked", "length"])
async def test_a_body_trickled_after_an_early_answer_does_not_hold_the_connection(framing: str) -> None:
    """The application answers before reading the body (a 413 from the length, a 401); the rest of
    the body was read and discarded under the keep-alive timer alone, so a byte every 0.2 s held the
    connection for ever. Now such an answer says ``Connection: close`` and the connection ends after
    it (lingering: FIN at once, the rest discarded for at most ``linger_seconds``)."""
    async with server() as address:
        reader, writer = await connect(address)
        if framing == "chunked":
            writer.write(b"POST /early HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n")
        else:
            writer.write(b"POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nx")

        async def trickle() -> str:
            try:
                for _ in range(50):  # 10 s
                    await asyncio.sleep(0.2)
                    writer.write(b"1\r\nx\r\n" if framing == "chunked" else b"x")
                    await writer.drain()
            except ConnectionError:
                return "refused"
            return "accepted"

        trickling = asyncio.ensure_future(trickle())
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 413")
            assert b"connection: close" in head.lower()
            body = await asyncio.wait_for(reader.read(), 3)  # and the server's FIN right after it
            assert json.loads(body)["status"] == 413
            outcome = await asyncio.wait_for(trickling, 10)
        finally:
            trickling.cancel()
            writer.close()
    assert outcome == "refused"  # the server closed: later bytes met a reset


async def test_a_body_read_whole_keeps_the_connection() -> None:
    """An answer after the whole body was read leaves the connection open for the next request."""
    async with server() as address:
        reader, writer = await connect(address)
        for _ in range(2):
            writer.write(b"POST /len HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200")
            assert b"connection: close" not in head.lower()
            assert await asyncio.wait_for(reader.readexactly(2), 5) == b"ok"
        writer.close()


# --- open connections per worker ------------------------------------------------------------------


async def served(address: tuple[str, int]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A new connection that got a 200 for a request (and is kept open)."""
    reader, writer = await connect(address)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200"), head
    assert await asyncio.wait_for(reader.readexactly(2), 5) == b"ok"
    return reader, writer


async def assert_refused(address: tuple[str, int]) -> None:
    """A connection over the limit that sends nothing is answered 503 (once its window for a probe's
    request ends) and ends."""
    before = sample("http_refused_total", {"status": "503"})
    reader, writer = await connect(address)
    try:
        response = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503"), response[:200]
    assert b"retry-after: " in head.lower()
    assert b"connection: close" in head.lower()
    assert json.loads(body)["status"] == 503
    assert sample("http_refused_total", {"status": "503"}) == before + 1


async def test_open_connections_per_worker_are_capped_and_counted_down_on_every_close() -> None:
    """Idle connections, each within its timeouts, had no limit. Now a worker holds at most
    ``max_connections``; one more is answered 503 and closed. Every way a connection ends gives its
    place back: closed by the client; by the server when idle, after a 408, after an early answer,
    after a 400, after a response with ``Connection: close``, after its own 503, and aborted by the
    send timeout (the clients do not close theirs meanwhile: the server must)."""
    STREAMED.clear()
    limit = Short.max_connections
    async with server() as address:
        clients = [await served(address) for _ in range(limit)]
        await assert_refused(address)
        for _, writer in clients:
            writer.close()
        assert await until(lambda: not Short.open, within=2), Short.open

        clients = [await served(address) for _ in range(limit)]
        await assert_refused(address)
        # the server ends each of them, a different way
        _idle, head, early, bad, closing = clients
        head[1].write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never completed: 408
        early[1].write(b"POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nx")
        bad[1].write(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n")  # 400
        closing[1].write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert await until(lambda: not Short.open, within=3), Short.open
        for _, writer in clients:
            writer.close()

        async with reluctant(address, FOREVER):
            assert await until(lambda: bool(STREAMED), within=4)
            assert await until(lambda: not Short.open, within=2), Short.open

        clients = [await served(address) for _ in range(limit)]
        await assert_refused(address)
        for _, writer in clients:
            writer.close()


async def test_at_the_limit_the_probes_are_still_answered() -> None:
    """A worker at its limit (the slowloris case the limit is for) must still answer the kubelet's
    probes, or its liveness probe fails and the pod is restarted under the attack, dropping every
    request in flight. A connection over the limit may send one request head within a short window:
    ``/healthz`` and ``/readyz`` are served (then closed), anything else is the 503 at once, and a
    connection that sends nothing gets the 503 when the window ends."""
    limit = Short.max_connections
    async with server() as address:
        clients = [await served(address) for _ in range(limit)]
        for path in ("/healthz", "/readyz"):
            reader, writer = await connect(address)
            writer.write(b"GET %b HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
            response = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            assert response.startswith(b"HTTP/1.1 200"), response[:200]
            assert b"connection: close" in response.lower()
        before = sample("http_refused_total", {"status": "503"})
        reader, writer = await connect(address)
        started = asyncio.get_running_loop().time()
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        response = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert response.startswith(b"HTTP/1.1 503"), response[:200]
        assert b"retry-after: " in response.lower()
        assert asyncio.get_running_loop().time() - started < Short.request_head_timeout / 2
        assert sample("http_refused_total", {"status": "503"}) == before + 1
        await assert_refused(address)  # sends nothing: the 503 when the window ends
        for _, writer in clients:
            writer.close()
        assert await until(lambda: not Short.open, within=3), Short.open


async def test_a_probe_pipelined_with_another_request_over_the_limit_is_answered_first() -> None:
    """A connection over the limit that sends a probe's head and, in the same write, another request:
    the probe's 200 comes first (answers in request order, RFC 9112 §9.3.2), then the connection
    ends; the request behind it is never answered out of turn, before the probe's."""
    limit = Short.max_connections
    async with server() as address:
        clients = [await served(address) for _ in range(limit)]
        reader, writer = await connect(address)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        response = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert response.startswith(b"HTTP/1.1 200"), response[:300]
        assert response.count(b"HTTP/1.1 ") == 1, response  # the request behind it: unanswered
        assert b"connection: close" in response.lower()
        for _, writer in clients:
            writer.close()
        assert await until(lambda: not Short.open, within=3), Short.open


@pytest.mark.parametrize(
    "refused",
    [
        pytest.param(b"GET /" + b"a" * 17000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", id="target_too_long"),
        pytest.param(b"GET / HTTP/1.1\r\n\r\n", id="no_host"),
    ],
)
async def test_a_refused_request_pipelined_behind_another_is_answered_after_it(refused: bytes) -> None:
    """A request the HTTP layer refuses (414, 400 …), pipelined behind one it accepted: the accepted
    one's answer comes first, then the refusal (answers in request order, RFC 9112 §9.3.2) — not the
    refusal first and the accepted request's task failing to write after it."""
    async with server() as address:
        reader, writer = await connect(address)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + refused)
        response = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert response.startswith(b"HTTP/1.1 200"), response[:300]
        second = response.split(b"\r\n\r\nok", 1)[1]
        assert second[:12] in (b"HTTP/1.1 414", b"HTTP/1.1 400"), response[:300]


async def test_a_head_growing_over_the_limit_behind_another_request_is_refused_after_it() -> None:
    """A pipelined head that passes the head limit only across several reads (one endless header
    value, counted in raw bytes) behind a request still being answered: the earlier answer first,
    then the 431 — as for a head refused in one read."""
    async with server() as address:
        reader, writer = await connect(address)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nX-Long: ")
        await writer.drain()
        for _ in range(5):  # 80 KiB of one header value, in reads the server takes one by one
            await asyncio.sleep(0.02)
            writer.write(b"v" * 16384)
            await writer.drain()
        response = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert response.startswith(b"HTTP/1.1 200"), response[:300]
        second = response.split(b"\r\n\r\nok", 1)[1]
        assert second[:12] == b"HTTP/1.1 431", response[:300]


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record)


@pytest.mark.parametrize(
    ("flood", "at_the_limit"),
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", True, id="over_the_connection_limit"),
        pytest.param(b"GET /" + b"a" * 17000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", False, id="target_too_long"),
    ],
)
async def test_a_flood_of_refusals_logs_one_line_not_one_per_refusal(
    flood: bytes, at_the_limit: bool
) -> None:
    """Refusals of the HTTP layer are counted, and logged one line per REFUSAL_LOG_SECONDS at most
    (svckit.server's RefusalLog): uvicorn's own "Invalid HTTP request received." warning, one per
    refused request, must not come on top, or an attack at the connection limit floods the logs."""
    limit = Short.max_connections
    handler = Lines()
    loggers = [logging.getLogger(name) for name in ("uvicorn.error", "svckit.server")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        async with server() as address:
            clients = [await served(address) for _ in range(limit if at_the_limit else 0)]
            for _ in range(20):
                reader, writer = await connect(address)
                writer.write(flood)
                response = await asyncio.wait_for(reader.read(), 5)
                writer.close()
                assert response[:12] in (b"HTTP/1.1 503", b"HTTP/1.1 414"), response[:200]
            for _, writer in clients:
                writer.close()
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    warnings = [r.getMessage() for r in handler.lines if r.levelno >= logging.WARNING]
    assert len(warnings) <= 1, warnings


@pytest.mark.parametrize(
    "scenario",
    [
        test_a_client_that_stops_reading_is_disconnected_after_the_send_timeout,
        test_a_slow_but_steady_reader_is_not_cut_off,
        test_a_response_left_in_the_buffer_of_a_closed_connection_is_dropped,
        test_open_connections_per_worker_are_capped_and_counted_down_on_every_close,
        test_at_the_limit_the_probes_are_still_answered,
        test_a_probe_pipelined_with_another_request_over_the_limit_is_answered_first,
        test_a_head_growing_over_the_limit_behind_another_request_is_refused_after_it,
    ],
    ids=lambda scenario: scenario.__name__.removeprefix("test_"),
)
def test_on_uvloop(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """The same on uvloop, which ``python -m <service>`` serves with (its transports buffer, pause,
    close and abort as asyncio's do, and its socket is a stand-in that must take the options)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())
