"""How the kit serves (svckit.server): problem bodies from the HTTP layer, head limits, and a shutdown
that resets nothing — with one worker and with several."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import select
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send
from svckit import cli, cycle, server
from svckit.app import create_service_app
from svckit.contracts.problem import Problem
from svckit.server import MAX_HEAD_BYTES, MAX_HEADERS, MAX_TARGET_BYTES
from svckit.settings import ServiceSettings, load_settings
from uvicorn.server import ServerState

from testkit.drain import load_through
from testkit.fixtures import REPO_ROOT, answer_lifespan, free_port, receiver_env, serve_app


@pytest.fixture(scope="module")
async def base_url(identity_keys: dict[str, str]) -> AsyncIterator[str]:
    settings = load_settings(ServiceSettings, env=receiver_env(identity_keys))
    async with serve_app(create_service_app(settings, [])) as url:
        yield url


async def raw(base_url: str, request: bytes) -> tuple[bytes, dict[str, object]]:
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        response = await asyncio.wait_for(reader.read(), 10)  # the server closes after a refusal
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return head, json.loads(body)


POST = b"POST /x HTTP/1.1\r\nHost: x\r\n"


@pytest.mark.parametrize(
    ("request_bytes", "status", "says"),
    [
        (POST + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "Content-Length"),
        (POST + b"Content-Length: 3\r\nTransfer-Encoding: identity\r\n\r\nabc", 400, "Content-Length"),
        (POST + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400, "Duplicate Content-Length"),
        (POST + b"Content-Length: -1\r\n\r\n", 400, "Content-Length"),
        (POST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", 400, "chunk size"),
        (POST + b"Transfer-Encoding: gzip\r\n\r\n", 400, "Transfer-Encoding"),
        # RFC 9112 §6.1: a transfer coding the server does not understand (only chunked is) is a 501
        # naming it; llhttp read "gzip, chunked" as chunked and the body went on as if not gzipped
        (POST + b"Transfer-Encoding: xyz, chunked\r\n\r\n0\r\n\r\n", 501, "xyz"),
        (POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501, "gzip"),
        (POST + b"Transfer-Encoding: GZIP ,Chunked\r\n\r\n0\r\n\r\n", 501, "gzip"),
        (POST + b"Transfer-Encoding: xyz;q=1, chunked\r\n\r\n0\r\n\r\n", 501, "xyz;q=1"),
        (POST + b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501, "gzip"),
        # chunked twice (§7.1: MUST NOT), not last (§6.3), with a parameter, a trailing tab or a trailing
        # empty list element: llhttp's own 400s, kept
        (POST + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400, "Transfer-Encoding"),
        (
            POST + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            "Transfer-Encoding",
        ),
        (POST + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400, "Transfer-Encoding"),
        (POST + b"Transfer-Encoding: chunked;x=1\r\n\r\n0\r\n\r\n", 400, "Transfer-Encoding"),
        (POST + b"Transfer-Encoding: chunked\t\r\n\r\n0\r\n\r\n", 400, "Transfer-Encoding"),
        (POST + b"Transfer-Encoding: chunked,\r\n\r\n0\r\n\r\n", 400, "Transfer-Encoding"),
        (b"GET /x HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n", 400, "header value"),
        (b"GET /x HTTP/1.1\r\nHost: x\r\nX A: b\r\n\r\n", 400, "header token"),
        (b"GET /x HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 400, "whitespace"),
        (b"G@T /x HTTP/1.1\r\nHost: x\r\n\r\n", 400, "method"),
        (b"GET /x HTTP/9.9\r\nHost: x\r\n\r\n", 400, "version"),
        (b"GET /x\x00y HTTP/1.1\r\nHost: x\r\n\r\n", 400, "url"),
        (b"GET /x HTTP/1.1\nHost: x\n\n", 400, "CRLF"),
        # a proxy's method: 501 saying so (was 400 "not valid HTTP/1.1 (User callback error)": the
        # parser's words about this server's code)
        (b"CONNECT 127.0.0.1:8101 HTTP/1.1\r\nHost: 127.0.0.1:8101\r\n\r\n", 501, "CONNECT"),
        (b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n", 501, "no proxy"),
        # Host as RFC 9112 §3.2 has it: present in HTTP/1.1, once, a host[:port]
        (b"GET /x HTTP/1.1\r\n\r\n", 400, "must have a Host"),
        (b"GET /x HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400, "more than one Host"),
        (b"GET /x HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "not a host[:port]"),
        # Content-Type is a singleton (RFC 9110 §8.3): with two lines, which media type the body is in
        # depends on which one a reader takes; refused before any reader can disagree
        (POST + b"Content-Type: application/json\r\nContent-Type: text/plain\r\n\r\n", 400, "Content-Type"),
        (POST + b"Content-Type: text/plain\r\ncontent-type: application/json\r\n\r\n", 400, "Content-Type"),
        (b"GET /x HTTP/1.1\r\nHost: a/b?c\r\n\r\n", 400, "not a host[:port]"),
        (b"GET /x HTTP/1.1\r\nHost: user@a\r\n\r\n", 400, "not a host[:port]"),
        (b"GET /" + b"a" * (MAX_TARGET_BYTES + 1) + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "target"),
        (b"GET /x HTTP/1.1\r\nX-Big: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n", 431, "head"),
        # a header value that never ends: refused while it is still open, not buffered without bound
        (b"GET /x HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (4 * MAX_HEAD_BYTES), 431, "head"),
        (
            b"GET /x HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(MAX_HEADERS + 1)) + b"\r\n",
            431,
            "header fields",
        ),
    ],
)
async def test_the_server_layer_refuses_with_problem_documents(
    base_url: str, request_bytes: bytes, status: int, says: str
) -> None:
    head, body = await raw(base_url, request_bytes)
    assert head.startswith(b"HTTP/1.1 %d" % status), head
    assert b"content-type: application/problem+json" in head.lower()
    assert b"connection: close" in head.lower()
    assert body["status"] == status
    assert says in str(body["detail"]), body
    assert "callback" not in str(body["detail"]), body


@pytest.mark.parametrize(
    "upgrade",
    [
        b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n",
        b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
    ],
)
async def test_an_upgrade_request_is_plain_http_and_floods_no_log(
    base_url: str, upgrade: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """No protocol besides HTTP/1.1 is spoken here: an ``Upgrade`` is ignored (RFC 9110 §7.8) and the
    request answered as plain HTTP (here the identity gate's 401 of an unsigned request). uvicorn wrote two
    warnings for each (one telling to ``pip install 'uvicorn[standard]'``); a flood of them now
    leaves one rate-limited line at most."""
    caplog.set_level(logging.WARNING)
    for _ in range(20):
        head, body = await raw(
            base_url, b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + upgrade + b"\r\n"
        )
        assert head.startswith(b"HTTP/1.1 401"), head  # the app's answer: no signed identity
        assert body["status"] == 401
    lines = [record.getMessage() for record in caplog.records]
    assert not [line for line in lines if "pip install" in line or "Unsupported upgrade" in line], lines
    assert len([line for line in lines if "upgrade request served as plain HTTP" in line]) <= 1, lines


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /x HTTP/1.0\r\n\r\n",  # HTTP/1.0 may leave Host out
        b"GET /x HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost:\r\nConnection: close\r\n\r\n",  # empty: a target without authority
    ],
)
async def test_a_request_with_a_valid_host_or_none_in_http_1_0_is_served(
    base_url: str, request_bytes: bytes
) -> None:
    reader, writer = await asyncio.open_connection(*base_url.removeprefix("http://").split(":"))
    try:
        writer.write(request_bytes)
        response = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    assert not response.startswith(b"HTTP/1.1 400"), response[:300]
    assert response.startswith(b"HTTP/1.1 "), response[:300]


async def echo_body(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers 200 with the request body it read."""
    if scope["type"] != "http":
        await answer_lifespan(receive, send)
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]}
    )
    await send({"type": "http.response.body", "body": body})


@pytest.mark.parametrize(
    "coding",
    [b"chunked", b"Chunked", b"CHUNKED", b" chunked", b"chunked ", b"\tchunked", b", chunked"],
)
async def test_chunked_in_any_case_and_spacing_is_understood(coding: bytes) -> None:
    """``chunked`` alone (a token: any case, RFC 9112 §7; optional whitespace and empty list elements,
    RFC 9110 §5.6.1) is read as chunked: the body arrives whole, and the request pipelined after it is
    served too."""
    async with serve_app(echo_body) as url:
        reader, writer = await asyncio.open_connection(*url.removeprefix("http://").split(":"))
        try:
            writer.write(
                POST + b"Transfer-Encoding: " + coding + b"\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
                b"GET /y HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            response = await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
    assert response.count(b"HTTP/1.1 200 ") == 2, response[:600]
    assert b"\r\n\r\n{}HTTP/1.1 200 " in response, response[:600]


async def test_the_last_resort_500_is_a_problem_document() -> None:
    """An application failing outside every handler (uvicorn answers for it) still yields a problem."""

    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raise RuntimeError("outside every handler")

    async with serve_app(broken) as url:
        head, body = await raw(url, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 500")
    assert b"application/problem+json" in head
    assert body["status"] == 500
    assert "outside" not in json.dumps(body)


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_under_keep_alive_load_resets_nothing(workers: int) -> None:
    """SIGTERM while keep-alive clients, new-connection clients and slow requests run: the slow ones
    complete, later connections are refused, and no request is reset or cut without an answer.
    (uvicorn's own supervisor reset 6-10 connections per run here; svckit.server closes its copy of
    the listening socket first, accepts what the kernel queued, and drains idle connections gently.)"""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "testkit.sampleapp", str(port), str(workers)], cwd=REPO_ROOT
    )
    try:
        for _ in range(100):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.1)
        await asyncio.sleep(0.5 * workers)  # every worker up
        base = f"http://127.0.0.1:{port}"
        report = await load_through(
            f"{base}/fast", f"{base}/slow?s=1.5", lambda: process.send_signal(signal.SIGTERM)
        )
        code = await asyncio.to_thread(process.wait, 20)
    finally:
        if process.poll() is None:
            process.kill()
    assert report.requests_before_signal > 50
    assert report.slow == ["ok"] * 4, report
    assert report.broken == 0, (report.after_signal, report.details)
    assert report.after_signal["refused"] > 0, report.after_signal  # it did stop listening
    assert code in (0, -signal.SIGTERM)


async def test_an_early_answer_reaches_a_client_still_sending(identity_keys: dict[str, str]) -> None:
    """413 from the Content-Length alone while the client still sends 5 MiB: the server lingers (FIN
    after the answer, input discarded) instead of closing under the client, whose kernel would
    otherwise get a reset and throw the unread answer away."""
    settings = load_settings(ServiceSettings, env=receiver_env(identity_keys))
    async with serve_app(create_service_app(settings, [], max_body_size=1024)) as url:
        host, port = url.removeprefix("http://").split(":")
        for _ in range(3):
            reader, writer = await asyncio.open_connection(host, int(port))
            body = b"x" * (5 * 1024 * 1024)
            head = b"Content-Type: application/json\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
            writer.write(POST + head % len(body))

            async def send_body(stream: asyncio.StreamWriter = writer, data: bytes = body) -> None:
                try:
                    stream.write(data)
                    await stream.drain()
                except ConnectionError:
                    pass

            sending = asyncio.ensure_future(send_body())
            response = await asyncio.wait_for(reader.read(), 10)
            await sending
            writer.close()
            assert response.startswith(b"HTTP/1.1 413"), response[:100]
            assert b"application/problem+json" in response


def test_a_shut_door_completes_no_new_handshake_but_keeps_the_queue() -> None:
    """After refuse_new_connections, a queued connection is still accepted and a new one never lands
    in the queue (its SYN is dropped), so closing the listener afterwards resets nobody."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    queued = socket.create_connection(("127.0.0.1", port))
    assert server.refuse_new_connections(listener)
    late = socket.socket()
    late.setblocking(False)
    assert late.connect_ex(("127.0.0.1", port)) == errno.EINPROGRESS
    select.select([], [late], [], 0.3)  # a completed handshake would make it writable at once
    assert late.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    accepted, _ = listener.accept()
    listener.setblocking(False)
    with pytest.raises(BlockingIOError):
        listener.accept()  # the late connection never completed its handshake
    listener.close()
    for sock in (accepted, queued, late):
        sock.close()


def _raw_app(started: asyncio.Event, go_on: asyncio.Event, body: bytes) -> object:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        length = str(len(body)).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", length)]})
        started.set()
        await go_on.wait()
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})

    return app


@pytest.mark.parametrize(("method", "size"), [("GET", 5), ("HEAD", 5), ("GET", cycle.COALESCE_BYTES + 1)])
async def test_a_response_head_leaves_with_its_body(method: str, size: int) -> None:
    """One write per small response: the head waits for the body (and goes alone for HEAD, or before a
    large body). A loopback write lands in the peer's receive buffer before it returns, so a head sent
    at ``http.response.start`` would already be readable when the application signals."""
    started, go_on = asyncio.Event(), asyncio.Event()
    body = b"x" * size
    async with serve_app(_raw_app(started, go_on, body)) as url:  # type: ignore[arg-type]
        host, port = url.removeprefix("http://").split(":")
        loop = asyncio.get_running_loop()
        client = socket.create_connection((host, int(port)))
        client.setblocking(False)
        try:
            await loop.sock_sendall(client, f"{method} / HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            await started.wait()
            try:
                with pytest.raises(BlockingIOError):
                    client.recv(65536)
            finally:
                go_on.set()  # the application must finish, or the server's shutdown waits for it
            want = len(body) if method == "GET" else 0
            response = b""
            while b"\r\n\r\n" not in response or len(response.partition(b"\r\n\r\n")[2]) < want:
                chunk = await asyncio.wait_for(loop.sock_recv(client, 1 << 20), 10)
                assert chunk, response
                response += chunk
        finally:
            client.close()
    head, _, received = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert received == (body if method == "GET" else b"")


async def test_a_100_continue_is_not_held_back() -> None:
    """The client waits for ``100 Continue`` before it sends the body: holding it would deadlock."""

    async def echo(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        body = (await receive())["body"]
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
        await send({"type": "http.response.body", "body": body})

    async with serve_app(echo) as url:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert interim.startswith(b"HTTP/1.1 100")
            writer.write(b"hello")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200")
            assert await asyncio.wait_for(reader.readexactly(5), 10) == b"hello"
        finally:
            writer.close()


@pytest.mark.unit
async def test_the_last_resort_500_is_a_problem_document_that_closes_the_connection() -> None:
    """What every request cycle sends when an application failed before answering."""
    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    await cycle.send_internal_error(send)
    start, body = sent
    assert start["status"] == 500
    headers = dict(start["headers"])  # type: ignore[call-overload]
    assert headers[b"content-type"] == b"application/problem+json"
    assert headers[b"connection"] == b"close"
    payload = body["body"]
    assert isinstance(payload, bytes)
    assert int(headers[b"content-length"]) == len(payload)
    problem = Problem.model_validate_json(payload)
    assert problem.status == 500
    assert body["more_body"] is False


@pytest.mark.unit
async def test_the_request_timeouts_reach_every_connection_from_the_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """REQUEST_HEAD_TIMEOUT_SECONDS, REQUEST_BODY_TIMEOUT_SECONDS, RESPONSE_SEND_TIMEOUT_SECONDS and
    MAX_CONNECTIONS_PER_WORKER: the settings' defaults are the server's, and what they say is what
    each connection's protocol uses (through ServingConfig, which a plain uvicorn.Config cannot
    carry)."""
    defaults = load_settings(ServiceSettings, env={})
    assert defaults.request_head_timeout_seconds == server.REQUEST_HEAD_TIMEOUT_SECONDS
    assert defaults.request_body_timeout_seconds == server.REQUEST_BODY_TIMEOUT_SECONDS
    assert defaults.response_send_timeout_seconds == server.RESPONSE_SEND_TIMEOUT_SECONDS
    assert defaults.max_connections_per_worker == server.MAX_CONNECTIONS_PER_WORKER
    settings = load_settings(
        ServiceSettings,
        env={
            "REQUEST_HEAD_TIMEOUT_SECONDS": "3",
            "REQUEST_BODY_TIMEOUT_SECONDS": "4.5",
            "RESPONSE_SEND_TIMEOUT_SECONDS": "6",
            "MAX_CONNECTIONS_PER_WORKER": "7",
        },
    )
    served: list[uvicorn.Config] = []

    def capture(config: uvicorn.Config, workers: int) -> int:
        served.append(config)
        return 0

    monkeypatch.setattr(server, "serve", capture)
    assert cli.serve("unused:factory", settings) == 0
    (config,) = served
    assert isinstance(config, server.ServingConfig)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("not called")

    config.app = app
    config.factory = False
    protocol = server.ProblemHttpProtocol(
        config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop()
    )
    assert (protocol.request_head_timeout, protocol.request_body_timeout) == (3.0, 4.5)
    assert (protocol.response_send_timeout, protocol.max_connections) == (6.0, 7)
