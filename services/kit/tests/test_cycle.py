"""The kit's request cycle (svckit.cycle.LeanCycle) and connection timer (svckit.server), on a real
loopback server: the framing rules uvicorn's cycle had, one write per small response, a response
head that cannot be split, and clients that stop sending (idle, in a head, in a body)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import REGISTRY
from starlette.types import Receive, Scope, Send
from svckit.cycle import check_head, check_names
from svckit.server import ProblemHttpProtocol

from testkit.fixtures import answer_lifespan, serve_app


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """``/len`` a body with its length, ``/chunked`` one without (two parts), ``/close`` one the app
    ends with ``Connection: close``, ``/slow?s=`` after a pause, ``/split`` a header value that would
    start a new line, ``/short`` fewer bytes than its length, ``/echo?s=`` the request body read after
    a pause (``/disconnected`` when the server said the client had gone); ``/stream`` and
    ``/started`` begin their response before reading the body (``/stream`` sends a first part of it,
    ``/started`` only its head), then read the body and end the response with it: each records what
    its reading ended with in :data:`ENDED`."""
    if scope["type"] == "lifespan":
        await answer_lifespan(receive, send)
        return
    path = scope["path"]
    if path in ("/stream", "/started"):
        await respond_before_reading(path, receive, send)
        return
    body = path.encode()
    if path in ("/slow", "/echo") and scope["query_string"]:
        await asyncio.sleep(float(scope["query_string"].decode().removeprefix("s=")))
    if path == "/echo":
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                body = b"/disconnected"
                break
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
    if path == "/chunked":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"one,", "more_body": True})
        await send({"type": "http.response.body", "body": b"two"})
        return
    headers = [(b"content-length", str(len(body) + (path == "/short")).encode())]
    if path == "/close":
        headers.append((b"connection", b"close"))
    if path == "/split":
        headers.append((b"x-note", b"a\r\nset-cookie: evil=1"))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


#: what each ``/stream`` or ``/started`` request's reading ended with ("complete", "disconnect"), in order
ENDED: list[str] = []


async def respond_before_reading(path: str, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    if path == "/stream":
        await send({"type": "http.response.body", "body": b"begun;", "more_body": True})
    body = b""
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                ENDED.append("disconnect")
                break
            body += message.get("body", b"")
            if not message.get("more_body", False):
                ENDED.append("complete")
                break
        await send({"type": "http.response.body", "body": body})
    except BaseException:
        ENDED.append("failed")
        raise
    ENDED.append("returned")


class ShortKeepAlive(ProblemHttpProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout_keep_alive = 0.4  # type: ignore[assignment]  # uvicorn's is whole seconds


class ShortTimeouts(ShortKeepAlive):
    request_head_timeout = 0.8
    request_body_timeout = 0.8


class ShortBodyTimeout(ProblemHttpProtocol):
    """Only the body's timeout short; the keep-alive (5 s) and the head's (10 s) as served."""

    request_body_timeout = 1.5


#: what the app in the middle of one (a disconnected cycle) sends, if it were sent
DISCONNECTED = b"/disconnected"


@contextlib.asynccontextmanager
async def connection(
    protocol: type[ProblemHttpProtocol] | None = None,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    served: Any = app
    if protocol is not None:

        async def served(scope: Scope, receive: Receive, send: Send) -> None:
            await app(scope, receive, send)

        served.http_protocol = protocol
    async with serve_app(served) as url:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            yield reader, writer
        finally:
            writer.close()


async def read_response(reader: asyncio.StreamReader, method: str = "GET") -> tuple[bytes, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.lower().split(b"\r\n")
    if method == "HEAD":
        return head, b""
    for line in lines:
        if line.startswith(b"content-length:"):
            return head, await asyncio.wait_for(reader.readexactly(int(line.split(b":")[1])), 10)
    assert b"transfer-encoding: chunked" in lines
    body = b""
    while True:
        size = int((await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)).strip(), 16)
        chunk = await asyncio.wait_for(reader.readexactly(size + 2), 10)
        if size == 0:
            return head, body
        body += chunk[:-2]


def request(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


async def test_pipelined_requests_are_framed_as_uvicorn_frames_them() -> None:
    """With and without a length, a HEAD, and an application's ``Connection: close``: answered in
    order on one connection, which ends after the close."""
    async with connection() as (reader, writer):
        writer.write(request("/len") + request("/chunked") + request("/len", "HEAD") + request("/close"))
        head, body = await read_response(reader)
        assert head.startswith(b"HTTP/1.1 200")
        assert body == b"/len"
        head, body = await read_response(reader)
        assert b"transfer-encoding: chunked" in head
        assert body == b"one,two"
        head, body = await read_response(reader, "HEAD")
        assert b"content-length: 4" in head
        assert body == b""
        head, body = await read_response(reader)
        assert b"connection: close" in head
        assert body == b"/close"
        assert await asyncio.wait_for(reader.read(), 10) == b""


@pytest.mark.parametrize("path", ["/split", "/short"])
async def test_a_response_that_cannot_be_framed_ends_the_connection(path: str) -> None:
    """A header value that would start a new line is never sent (nothing of the head leaves); a body
    shorter than its length ends the connection after what was sent, so the client cannot take the
    next response for the rest of this one."""
    async with connection() as (reader, writer):
        writer.write(request(path) + request("/len"))
        received = await asyncio.wait_for(reader.read(), 10)
    assert b"set-cookie" not in received
    assert b"/len" not in received  # the pipelined request after it was not answered on this connection
    if path == "/short":
        assert received.startswith(b"HTTP/1.1 200")
        assert received.endswith(b"/short")
    else:
        assert received == b""


async def test_keep_alive_closes_idle_connections_only() -> None:
    """The connection timer is not made per request: a connection idle for the timeout is
    closed; one that was used meanwhile, or waits for a slow answer, is not."""
    async with connection(ShortKeepAlive) as (reader, writer):
        for _ in range(3):  # used every 0.25 s: never idle for 0.4 s
            writer.write(request("/len"))
            assert (await read_response(reader))[1] == b"/len"
            await asyncio.sleep(0.25)
        writer.write(request("/slow?s=0.7"))  # longer than 0.4 s
        assert (await read_response(reader))[1] == b"/slow"
        started = asyncio.get_running_loop().time()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # then idle: closed
        assert 0.3 < asyncio.get_running_loop().time() - started < 2


@pytest.mark.unit
@pytest.mark.parametrize(
    ("head", "valid"),
    [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-a: b\tc\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nx-a: b\r\nset-cookie: evil\r\n\r\n", True),  # lines, as framed
        (b"HTTP/1.1 200 OK\r\nx-a: b\nset-cookie: evil\r\n\r\n", False),  # a bare LF in a value
        (b"HTTP/1.1 200 OK\r\nx-a: b\rset-cookie: evil\r\n\r\n", False),  # a bare CR
        (b"HTTP/1.1 200 OK\r\nx-a: b\x00c\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nx-a: b\x7f\r\n\r\n", False),
    ],
)
def test_a_response_head_is_lines_and_nothing_else(head: bytes, valid: bool) -> None:
    if valid:
        check_head(head)
    else:
        with pytest.raises(RuntimeError):
            check_head(head)


@pytest.mark.unit
def test_a_line_end_inside_a_value_is_caught_by_the_line_count() -> None:
    """``x-a: b\\r\\nset-cookie: evil`` framed as one header is well-formed lines on its own; the
    count the framing made (status line, one header, blank line) is what tells."""
    head = b"HTTP/1.1 200 OK\r\nx-a: b\r\nset-cookie: evil\r\n\r\n"
    check_head(head, 4)
    with pytest.raises(RuntimeError):
        check_head(head, 3)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("names", "valid"),
    [
        (b"x-ok", True),
        (b"content-type" + b"x-a~1", True),
        (b"x a", False),
        (b"x:a", False),
        (b"x\x00", False),
        (b"x\ta", False),
        (b"\xff", False),
    ],
)
def test_header_names_must_be_tokens(names: bytes, valid: bool) -> None:
    if valid:
        check_names(names)
    else:
        with pytest.raises(RuntimeError):
            check_names(names)


# --- clients that stop sending ------------------------------------------------------------------------


async def until_closed(reader: asyncio.StreamReader, within: float = 5) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and how long that took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    received = await asyncio.wait_for(reader.read(), within)
    return received, loop.time() - started


def assert_problem(response: bytes, status: int) -> None:
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d" % status), response[:300]
    assert b"content-type: application/problem+json" in head.lower()
    assert b"connection: close" in head.lower()
    assert json.loads(body)["status"] == status


async def test_a_connection_that_sends_nothing_is_closed_when_idle() -> None:
    """No first request: idle all the same (uvicorn armed its timer only after a first response)."""
    async with connection(ShortTimeouts) as (reader, _):
        received, took = await until_closed(reader)
    assert received == b""
    assert 0.3 < took < 2


@pytest.mark.parametrize("trickle", [False, True])
async def test_a_request_head_not_complete_in_time_is_answered_408(trickle: bool) -> None:
    """Half a head, then silence (slowloris) — or a byte now and then, which keeps the connection
    from ever being idle: the head's deadline counts from its first byte."""
    async with connection(ShortTimeouts) as (reader, writer):
        writer.write(b"GET /len HTTP/1.1\r\nHost: x\r\n")
        if trickle:
            for _ in range(5):
                await asyncio.sleep(0.25)
                writer.write(b"X")
        received, took = await until_closed(reader)
    assert_problem(received, 408)
    assert took < 3
    assert b"/len" not in received


async def test_a_request_body_that_stops_arriving_is_answered_408() -> None:
    """A declared length that never arrives: the application waits for the rest (until it hears
    ``http.disconnect``), the client is answered 408 and the connection ends."""
    async with connection(ShortTimeouts) as (reader, writer):
        writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        received, took = await until_closed(reader)
    assert_problem(received, 408)
    assert DISCONNECTED not in received  # what the application answered afterwards was dropped
    assert 0.7 < took < 3


async def test_waiting_on_the_application_is_not_the_client_stalling() -> None:
    """Slower than every timeout, the application: with its whole body sent (a slow answer), with the
    body held back by the client until ``100 Continue`` (sent when the application reads), with a
    body that keeps arriving slowly (silence never as long as the timeout)."""
    async with connection(ShortTimeouts) as (reader, writer):
        writer.write(b"POST /slow?s=1.5 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        assert (await read_response(reader))[1] == b"/slow"

        writer.write(
            b"POST /echo?s=1.5 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert interim.startswith(b"HTTP/1.1 100")
        writer.write(b"abc")
        assert (await read_response(reader))[1] == b"abc"

        writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
        for byte in b"hello":
            await asyncio.sleep(0.4)
            writer.write(bytes([byte]))
        assert (await read_response(reader))[1] == b"hello"

        # more than the server buffers: reading is paused until the application reads, after 1.5 s
        big = b"x" * (4 * 65536)
        writer.write(b"POST /echo?s=1.5 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(big))
        writer.write(big[: 65536 * 2])
        await asyncio.sleep(1.0)
        writer.write(big[65536 * 2 :])
        assert (await read_response(reader))[1] == big


def refused_408() -> float:
    return REGISTRY.get_sample_value("http_refused_total", {"status": "408"}) or 0.0


async def ended(*outcomes: str) -> list[str]:
    """What the ``/stream`` or ``/started`` application recorded, once it has (or 3 s have passed)."""
    for _ in range(300):
        if len(ENDED) >= len(outcomes):
            break
        await asyncio.sleep(0.01)
    return ENDED


async def test_a_body_that_stalls_after_the_response_began_ends_the_connection() -> None:
    """A response under way (its head and a first part sent) while the application still reads the
    body, and the client stops sending: the body clock stopped once a response had started (a 408
    could no longer be sent), so the connection — and the application's task waiting for the body —
    were held for as long as the client liked. Now the body timeout ends the connection (the client
    has a truncated response: a chunked body without its last chunk), it is counted as a 408 of the
    HTTP layer, and the application hears ``http.disconnect`` and returns."""
    ENDED.clear()
    before = refused_408()
    async with connection(ShortTimeouts) as (reader, writer):
        writer.write(b"POST /stream HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        try:
            received, took = await until_closed(reader)
        except TimeoutError:
            pytest.fail("the connection is still open 5 s after the body stopped arriving")
    assert received == b"6\r\nbegun;\r\n"  # the part sent before the stall, nothing after it
    assert took < 3
    assert refused_408() == before + 1
    assert await ended("disconnect", "returned") == ["disconnect", "returned"]


async def test_a_body_that_stalls_after_an_unsent_response_start_is_answered_408() -> None:
    """The application started its response (``http.response.start``) and then waits for the body:
    nothing of the response has left yet (the kit's cycle sends a head with the first part of its
    body), so the client can still be answered 408, and is."""
    ENDED.clear()
    before = refused_408()
    async with connection(ShortTimeouts) as (reader, writer):
        writer.write(b"POST /started HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        try:
            received, took = await until_closed(reader)
        except TimeoutError:
            pytest.fail("the connection is still open 5 s after the body stopped arriving")
    assert_problem(received, 408)
    assert took < 3
    assert refused_408() == before + 1
    assert await ended("disconnect", "returned") == ["disconnect", "returned"]


async def test_a_stalled_body_is_answered_when_its_timeout_ends() -> None:
    """The body's silence was measured by the connection's one timer, which fires once per shortest
    of the timeouts: the 408 came up to that period late (5 s with the defaults; 1.3 s here, where
    the client is not in step with the timer). Now a request waiting for its body has a timer of its
    own, due when the timeout ends."""
    async with connection(ShortBodyTimeout) as (reader, writer):
        await asyncio.sleep(0.2)  # not in step with the connection's timer
        writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        received, took = await until_closed(reader)
    assert_problem(received, 408)
    late = took - ShortBodyTimeout.request_body_timeout
    assert -0.05 < late < 0.5, f"the 408 came {late:+.2f} s after the body timeout"


async def test_the_body_clock_restarts_when_the_server_is_ready_for_the_body_again() -> None:
    """The body's timer does not count while the client may not send (it waits for ``100 Continue``)
    or the server is not reading (paused until the application consumes what came): it stops then,
    and is armed again when that ends — the 100 sent, reading resumed — so a client that stalls
    afterwards is still answered 408, on time from that moment."""
    loop = asyncio.get_running_loop()
    async with connection(ShortTimeouts) as (reader, writer):
        writer.write(
            b"POST /echo?s=1.5 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert interim.startswith(b"HTTP/1.1 100")
        received, took = await until_closed(reader)  # and the body never comes
    assert_problem(received, 408)
    assert 0.75 < took < 0.8 + 0.5

    async with connection(ShortTimeouts) as (reader, writer):
        started = loop.time()
        writer.write(b"POST /echo?s=1.5 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (65536 * 5))
        writer.write(b"x" * 65536 * 4)  # paused after the first 64 KiB until the application reads
        received, _ = await until_closed(reader)
        took = loop.time() - started
    assert_problem(received, 408)
    assert 1.5 + 0.75 < took < 1.5 + 0.8 + 0.5
