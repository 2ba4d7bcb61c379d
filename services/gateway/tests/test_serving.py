"""The gateway's own serving path for API requests (gateway.serving): HTTP/1.1 as uvicorn's cycle
speaks it — pipelining, HEAD, 100-continue, chunked bodies, Connection: close — on a real gateway,
written and read byte for byte."""

from __future__ import annotations

import asyncio
import json
from typing import Any, NamedTuple

import pytest
from gateway.app import create_app
from gateway.serving import ApiCycle, GatewayHttpProtocol

from testkit.fixtures import serve_app

from .conftest import Provider, StartGateway


class Answer(NamedTuple):
    status: int
    headers: dict[bytes, bytes]
    body: bytes


async def read_answer(reader: asyncio.StreamReader, head_only: bool) -> Answer:
    """One response off the stream: its head, then a Content-Length or chunked body (none for HEAD)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status_line, *lines = head[:-4].split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    body = b""
    if head_only:
        pass
    elif b"content-length" in headers:
        body = await reader.readexactly(int(headers[b"content-length"]))
    elif headers.get(b"transfer-encoding") == b"chunked":
        while size := int((await reader.readuntil(b"\r\n"))[:-2], 16):
            body += (await reader.readexactly(size + 2))[:-2]
        await reader.readuntil(b"\r\n")
    return Answer(int(status_line.split()[1]), headers, body)


async def exchange(
    gateway: str, requests: bytes, methods: list[str], *, then: bytes = b"", wait_for: bytes = b""
) -> list[Answer]:
    """Write ``requests`` at once (optionally wait for an interim ``wait_for`` and write ``then``), and
    read one response per method off the same connection, in order."""
    host, port = gateway.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(requests)
        if wait_for:
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert interim.startswith(wait_for), interim
            writer.write(then)
        return [await read_answer(reader, method == "HEAD") for method in methods]
    finally:
        writer.close()


def get(target: str, token: str, request_id: str, *, method: str = "GET", extra: str = "") -> bytes:
    return (
        f"{method} {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        f"X-Request-Id: {request_id}\r\n{extra}\r\n"
    ).encode()


async def test_pipelined_requests_are_answered_in_order(gateway: str, provider: Provider) -> None:
    token = provider.scoped("read:timesheets")
    pipeline = (
        get("/api/timesheets/1", token, "req-one-0001")
        + b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-Id: req-health-01\r\n\r\n"  # not an API request
        + get("/api/nowhere", token, "req-two-0002")  # refused by the edge: 404
        + get("/api/timesheets/3", token, "req-three-003", extra="Connection: close\r\n")
    )
    answers = await exchange(gateway, pipeline, ["GET"] * 4)
    assert [answer.status for answer in answers] == [200, 200, 404, 200]
    ids = [answer.headers.get(b"x-request-id") for answer in answers]
    assert ids == [b"req-one-0001", b"req-health-01", b"req-two-0002", b"req-three-003"]
    assert json.loads(answers[0].body)["path"] == "/timesheets/1"
    assert json.loads(answers[3].body)["path"] == "/timesheets/3"
    assert answers[2].headers[b"content-type"] == b"application/problem+json"
    assert answers[3].headers[b"connection"] == b"close"


async def test_head_answers_the_head_only_and_keeps_the_connection(gateway: str, provider: Provider) -> None:
    token = provider.scoped("read:timesheets")
    head, after = await exchange(
        gateway,
        get("/api/timesheets/1", token, "req-head-0001", method="HEAD")
        + get("/api/timesheets/2", token, "req-next-0002", extra="Connection: close\r\n"),
        ["HEAD", "GET"],
    )
    assert head.status == 200
    assert int(head.headers[b"content-length"]) > 0  # the GET's length, without its body
    assert after.status == 200  # so the next response starts where the head ended
    assert json.loads(after.body)["path"] == "/timesheets/2"


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_body_after_100_continue(gateway: str, provider: Provider, chunked: bool) -> None:
    token = provider.scoped("create:timesheets")
    body = b'{"hours": 8}'
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}"
    request = (
        f"POST /api/timesheets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nExpect: 100-continue\r\n{framing}\r\nConnection: close\r\n\r\n"
    ).encode()
    sent = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if chunked else body
    (answer,) = await exchange(gateway, request, ["POST"], wait_for=b"HTTP/1.1 100 Continue", then=sent)
    assert answer.status == 200
    echoed: dict[str, Any] = json.loads(answer.body)
    assert echoed["method"] == "POST"
    assert echoed["body_length"] == len(body)


async def test_keep_alive_closes_idle_connections_only(
    start_gateway: StartGateway, provider: Provider
) -> None:
    """The keep-alive timer is armed once per idle stretch (svckit.server), with the callback path too:
    a connection idle for the timeout is closed; one that was used meanwhile, or waits for a slow
    answer, is not."""

    class ShortKeepAlive(GatewayHttpProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.timeout_keep_alive = 0.4  # type: ignore[assignment]  # uvicorn's is whole seconds

    app = create_app(start_gateway.settings())  # type: ignore[attr-defined]
    app.http_protocol = ShortKeepAlive
    token = provider.scoped("read:timesheets")
    async with serve_app(app) as gateway:
        host, port = gateway.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for number in range(3):  # used every 0.25 s: never idle for 0.4 s
                writer.write(get(f"/api/timesheets/{number}", token, f"req-alive-{number:04d}"))
                assert (await read_answer(reader, False)).status == 200
                await asyncio.sleep(0.25)
            writer.write(get("/api/timesheets/slow?s=0.7", token, "req-slow-0001"))  # longer than 0.4 s
            assert (await read_answer(reader, False)).status == 200
            started = asyncio.get_running_loop().time()
            assert await asyncio.wait_for(reader.read(), 5) == b""  # then idle: closed
            assert 0.3 < asyncio.get_running_loop().time() - started < 2
        finally:
            writer.close()


def api_tasks() -> list[asyncio.Task[Any]]:
    """The tasks serving API requests on this loop (the task path: an :class:`ApiCycle`'s ``run_asgi``)."""
    serving = []
    for task in asyncio.all_tasks():
        frame = getattr(task.get_coro(), "cr_frame", None)
        if (
            frame is not None
            and frame.f_code.co_name == "run_asgi"
            and isinstance(frame.f_locals.get("self"), ApiCycle)
        ):
            serving.append(task)
    return serving


async def test_a_cached_request_is_served_from_callbacks_without_a_task(
    gateway: str, provider: Provider
) -> None:
    """The callback path (gateway.serving): once its token is verified, a request without a body is
    sent upstream and answered with no task of its own; a token to verify still takes a task."""
    token = provider.scoped("read:timesheets", subject="callback-path")
    host, port = gateway.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        for number, expect_task in ((1, True), (2, False), (3, False)):
            writer.write(get(f"/api/timesheets/slow?s=0.3&n={number}", token, f"req-callback-{number:03d}"))
            await asyncio.sleep(0.15)  # the request is with the upstream now
            assert bool(api_tasks()) is expect_task
            answer = await read_answer(reader, False)
            assert answer.status == 200
            assert answer.headers[b"x-request-id"] == f"req-callback-{number:03d}".encode()
            assert json.loads(answer.body)["query"] == f"s=0.3&n={number}"
            assert json.loads(answer.body)["identity"]["subject"] == "callback-path"
    finally:
        writer.close()


async def test_answers_the_callback_path_hands_over(gateway: str, provider: Provider) -> None:
    """A large answer (streamed, not relayed whole), a HEAD, and an answer the client cannot take yet
    are carried on by the task path from the exchange already started, on one keep-alive connection."""
    token = provider.scoped("read:timesheets")
    await exchange(
        gateway, get("/api/timesheets/warm", token, "req-warm-0001", extra="Connection: close\r\n"), ["GET"]
    )
    big, head, small = await exchange(
        gateway,
        get("/api/timesheets/big", token, "req-big-00001")
        + get("/api/timesheets/1", token, "req-head-0001", method="HEAD")
        + get("/api/timesheets/2", token, "req-small-0001", extra="Connection: close\r\n"),
        ["GET", "HEAD", "GET"],
    )
    assert big.status == 200
    assert big.body == b"x" * 300_000
    assert big.headers[b"x-request-id"] == b"req-big-00001"
    assert head.status == 200
    assert head.body == b""
    assert small.status == 200
    assert json.loads(small.body)["path"] == "/timesheets/2"

    # a client that does not read: the answers pile up until the gateway stops writing, then flow
    host, port = gateway.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port), limit=1 << 24)
    try:
        count = 40
        for number in range(count):
            writer.write(get("/api/timesheets/big", token, f"req-pile-{number:04d}"))
        await writer.drain()
        await asyncio.sleep(1.0)  # socket buffers full: the gateway's writes are paused
        for number in range(count):
            answer = await read_answer(reader, False)
            assert answer.status == 200
            assert len(answer.body) == 300_000
            assert answer.headers[b"x-request-id"] == f"req-pile-{number:04d}".encode()
    finally:
        writer.close()


async def test_a_client_gone_before_its_answer_costs_the_next_request_nothing(
    gateway: str, provider: Provider
) -> None:
    """A client that hangs up while its request is with the upstream (callback path): the answer is
    dropped, the upstream connection goes back to the pool, and the next request is served."""
    token = provider.scoped("read:timesheets")
    await exchange(
        gateway, get("/api/timesheets/warm", token, "req-warm-0002", extra="Connection: close\r\n"), ["GET"]
    )
    host, port = gateway.removeprefix("http://").split(":")
    for number in range(3):
        _, writer = await asyncio.open_connection(host, int(port))
        writer.write(get("/api/timesheets/slow?s=0.2", token, f"req-gone-{number:04d}"))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()
    await asyncio.sleep(0.4)
    (answer,) = await exchange(
        gateway, get("/api/timesheets/after", token, "req-after-0001", extra="Connection: close\r\n"), ["GET"]
    )
    assert answer.status == 200
    assert json.loads(answer.body)["path"] == "/timesheets/after"


async def test_one_connection_with_changing_tokens_and_headers(
    start_gateway: StartGateway, provider: Provider
) -> None:
    """What a client connection's memo keeps (gateway.request.ConnectionMemo: its last token, its
    forwarding, its forwarded header lines) is reused only for the very same bytes: each request on
    one connection reaches the upstream as its own token and headers say, with a refusal in between,
    and the answer relayed with its framing (an upstream without a Connection header: the relay's
    pre-framed path)."""
    heads: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                heads.append(head)
                body = b'{"n": %d}' % len(heads)
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-upstream: scripted\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(body), body)
                )
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    upstream = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    alice = provider.scoped("read:timesheets", subject="memo-alice")
    bob = provider.scoped("read:timesheets", subject="memo-bob")
    unscoped = provider.scoped("read:audit", subject="memo-carol")
    steps = [  # token, extra header lines, expected status, expected subject upstream
        (alice, "X-Custom: one\r\n", 200, "memo-alice"),
        (alice, "X-Custom: one\r\n", 200, "memo-alice"),
        (bob, "X-Custom: one\r\n", 200, "memo-bob"),
        (bob, "X-Custom: two\r\nX-Identity-Subject: forged\r\n", 200, "memo-bob"),
        (unscoped, "", 403, ""),
        ("not-a-token", "", 401, ""),
        (alice, "X-Custom: three\r\n", 200, "memo-alice"),
    ]
    try:
        async with start_gateway(timesheets_url=upstream) as gateway:
            host, port = gateway.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            try:
                for number, (token, extra, status, subject) in enumerate(steps):
                    request_id = f"req-memo-{number:04d}"
                    writer.write(get(f"/api/timesheets/{number}", token, request_id, extra=extra))
                    answer = await read_answer(reader, False)
                    assert answer.status == status, (number, answer)
                    assert answer.headers[b"x-request-id"] == request_id.encode()
                    assert int(answer.headers[b"content-length"]) == len(answer.body)
                    if status != 200:
                        continue
                    assert answer.headers[b"x-upstream"] == b"scripted"
                    lines = heads[-1].decode().split("\r\n")
                    assert lines[0] == f"GET /timesheets/{number} HTTP/1.1"
                    fields = [line.partition(": ") for line in lines[1:] if line]
                    seen = {name: value for name, _, value in fields}
                    assert [name for name, _, _ in fields].count("x-identity-subject") == 1
                    assert seen["x-identity-subject"] == subject
                    assert seen["x-request-id"] == request_id
                    assert seen["x-custom"] == extra.split("\r\n")[0].removeprefix("X-Custom: ")
                    assert "authorization" not in seen
            finally:
                writer.close()
    finally:
        server.close()
    nonces = [line for head in heads for line in head.split(b"\r\n") if line.startswith(b"x-identity-nonce")]
    assert len(nonces) == len(set(nonces)) == 5  # a fresh nonce for every forwarded request
