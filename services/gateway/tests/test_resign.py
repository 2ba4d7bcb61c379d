"""A request the gateway sends again is signed again: the services accept each signed request once
(its nonce, svckit.replay), so a retry over a fresh connection — after a pooled connection was hung
up on with the request read — must carry a new signature, not the one the upstream may have seen."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway import metrics
from gateway.proxy import Forwarder
from gateway.upstream import UpstreamPool

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok"


async def test_a_retried_request_carries_a_fresh_signature() -> None:
    heads: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first_connection = not heads
        try:
            heads.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(OK)
            await writer.drain()
            if first_connection:  # the next request on this kept-alive connection: read, never answered
                heads.append(await reader.readuntil(b"\r\n\r\n"))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool(f"http://127.0.0.1:{port}", size=4, connect_timeout=2.0, read_timeout=5.0)
    forwarder = Forwarder({"timesheets": pool}, metrics.RequestMetrics())
    signatures = iter(f"x-identity-nonce: {n}\r\n".encode() for n in ("second", "third"))
    answers: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        answers.append(message)

    try:
        for signed in (b"x-identity-nonce: first\r\n", b"x-identity-nonce: again\r\n"):
            await forwarder.forward(
                service="timesheets",
                method="GET",
                target=b"/timesheets",
                headers=[],
                signed=signed,
                resign=lambda: next(signatures),
                body=None,
                send=send,  # type: ignore[arg-type]
                extra_response_headers=[],
                on_status=lambda status: None,
            )
    finally:
        await pool.close()
        server.close()
    nonces = [line for head in heads for line in head.split(b"\r\n") if line.startswith(b"x-identity-nonce")]
    # the first request; the second as signed (read on the stale connection); its retry, signed anew
    assert nonces == [b"x-identity-nonce: first", b"x-identity-nonce: again", b"x-identity-nonce: second"]
    assert [m["status"] for m in answers if m["type"] == "http.response.start"] == [200, 200]
