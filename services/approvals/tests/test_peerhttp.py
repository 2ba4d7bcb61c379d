"""The approvals service's keep-alive client to the timesheets service, against scripted peers on
loopback: framing, reuse, a kept connection the peer closed, timeouts, answers that are not HTTP, and
the signed identity headers (verified as the timesheets service verifies them)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import pytest
import uvloop
from approvals.peer import PRINCIPAL, PeerUnavailable, Timesheets
from approvals.peerhttp import PeerHttp, PeerHttpError
from svckit.identity import CONTENT_DIGEST, IdentitySigner, IdentityVerifier, content_digest

KEYS = {"approvals-timesheets-1": b"a-secret-of-the-approvals-to-timesheets-pair-0123456789"}

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    line, *lines = head.decode().split("\r\n")
    headers = {}
    for header in lines:
        if header:
            name, _, value = header.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return line.encode(), headers, body


@contextlib.asynccontextmanager
async def scripted(handler: Handler) -> AsyncIterator[tuple[str, list[int]]]:
    """A TCP server calling ``handler`` per connection (with its number); yields its URL and the
    connection numbers seen."""
    seen: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(len(seen))
        try:
            await handler(reader, writer, seen[-1])
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        server.close()


def client(url: str, idle_seconds: float = 2.0) -> PeerHttp:
    return PeerHttp(url, IdentitySigner(KEYS), PRINCIPAL, idle_seconds=idle_seconds)


def answer(body: bytes, status: str = "200 OK", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %s\r\ncontent-length: %d\r\n%s\r\n%s" % (status.encode(), len(body), extra, body)


async def test_requests_are_signed_and_framed_and_the_connection_is_kept() -> None:
    requests: list[tuple[bytes, dict[str, str], bytes]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while True:
            requests.append(await read_request(reader))
            writer.write(answer(b'{"ok":true}'))

    async with scripted(handler) as (url, seen):
        peer = client(url)
        assert await peer.request("GET", "/internal/x?a=1", timeout=2, idempotent=True) == (
            200,
            b'{"ok":true}',
        )
        body = b'{"decision":"approved"}'
        assert await peer.request("POST", "/internal/y", body=body, timeout=2, idempotent=True) == (
            200,
            b'{"ok":true}',
        )
        await peer.close()
    assert seen == [0]  # one connection for both
    verifier = IdentityVerifier({"approvals": KEYS})
    for (line, headers, sent), (method, target) in zip(
        requests, (("GET", "/internal/x?a=1"), ("POST", "/internal/y")), strict=True
    ):
        assert line == f"{method} {target} HTTP/1.1".encode()
        identity = verifier.verify(headers, method=method, target=target)
        assert headers[CONTENT_DIGEST] == content_digest(sent)
        assert identity.subject == PRINCIPAL.subject
        assert identity.kind == "service"
    assert requests[1][1]["content-type"] == "application/json"
    assert requests[1][2] == b'{"decision":"approved"}'


async def test_chunked_answers_and_interim_heads_are_read() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        writer.write(
            b'HTTP/1.1 409 Conflict\r\ntransfer-encoding: chunked\r\n\r\n3\r\n{"a\r\n4\r\n":1}\r\n0\r\n\r\n'
        )

    async with scripted(handler) as (url, _):
        assert await client(url).request("GET", "/x", timeout=2, idempotent=True) == (409, b'{"a":1}')


async def test_a_kept_connection_the_peer_closed_is_replaced_for_idempotent_requests_only() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(answer(b"first" if n == 0 else b"again"))
        await writer.drain()
        if n == 0:  # keep-alive announced, but the next request finds the connection gone unanswered
            await read_request(reader)
            writer.transport.abort()
            return
        while True:
            await read_request(reader)
            writer.write(answer(b"again"))

    async with scripted(handler) as (url, seen):
        peer = client(url)
        assert await peer.request("GET", "/x", timeout=2, idempotent=True) == (200, b"first")
        assert await peer.request("GET", "/x", timeout=2, idempotent=True) == (200, b"again")
        assert seen == [0, 1]

    async with scripted(handler) as (url, seen):
        peer = client(url)
        await peer.request("POST", "/x", body=b"{}", timeout=2, idempotent=False)
        with pytest.raises(PeerHttpError) as failure:
            await peer.request("POST", "/x", body=b"{}", timeout=2, idempotent=False)
        assert failure.value.retryable
        assert seen == [0]


async def test_connection_close_and_idle_connections_are_not_reused() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await read_request(reader)
            writer.write(answer(b"x", extra=b"connection: close\r\n" if n == 0 else b""))

    async with scripted(handler) as (url, seen):
        peer = client(url, idle_seconds=0.05)
        for _ in range(2):
            await peer.request("GET", "/x", timeout=2, idempotent=True)
        assert seen == [0, 1]  # the first answer closed its connection
        await asyncio.sleep(0.1)
        await peer.request("GET", "/x", timeout=2, idempotent=True)
        assert seen == [0, 1, 2]  # the second was idle too long


async def test_timeouts_broken_answers_and_an_absent_peer_fail_the_call() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(b"<html>not http</html>\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")

    async with scripted(silent) as (url, _):
        with pytest.raises(TimeoutError):
            await client(url).request("GET", "/x", timeout=0.2, idempotent=True)
    async with scripted(garbage) as (url, _):
        with pytest.raises(PeerHttpError, match="not HTTP"):
            await client(url).request("GET", "/x", timeout=2, idempotent=True)
    async with scripted(half) as (url, _):
        with pytest.raises(PeerHttpError, match="lost") as failure:
            await client(url).request("GET", "/x", timeout=2, idempotent=True)
        assert not failure.value.retryable  # part of the answer came: it was received
    async with scripted(silent) as (url, _):
        pass  # the port is free again: nothing listens
    with pytest.raises(PeerHttpError, match="cannot connect"):
        await client(url).request("GET", "/x", timeout=2, idempotent=True)


async def test_the_workflow_sees_every_failure_as_an_unavailable_peer() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(answer(b"\xff\xfe", status="200 OK"))

    async with scripted(garbage) as (url, _):
        peer = Timesheets(client(url), 2)
        with pytest.raises(PeerUnavailable):
            await peer.pending(PRINCIPAL, 20, None)
    with pytest.raises(PeerUnavailable, match="unreachable"):
        await peer.pending(PRINCIPAL, 20, None)


def test_the_base_url_must_be_plain_http() -> None:
    with pytest.raises(ValueError, match="http://"):
        client("https://timesheets:8101")


SCENARIOS = [
    test_requests_are_signed_and_framed_and_the_connection_is_kept,
    test_chunked_answers_and_interim_heads_are_read,
    test_a_kept_connection_the_peer_closed_is_replaced_for_idempotent_requests_only,
    test_connection_close_and_idle_connections_are_not_reused,
    test_timeouts_broken_answers_and_an_absent_peer_fail_the_call,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda scenario: scenario.__name__[5:45])
def test_on_uvloop(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """The services serve on uvloop (its transports are not asyncio's classes)."""
    uvloop.run(scenario())
