"""A gateway that was frozen does not forward the requests whose clients left meanwhile.

A frozen gateway pod (a paused node, a CPU-throttling stall, SIGSTOP) keeps taking connections and
requests in the kernel; the ingress or the browser gives up and closes. Resumed, the gateway read
them and forwarded every one upstream — listings no one would read, and writes their clients had
given up on, done late. While its event loop is behind, a request whose client's FIN is already in
the socket is dropped before it is decided (the kit's :meth:`svckit.server.ProblemHttpProtocol.client_left`,
on the gateway's callback path too): counted in ``http_requests_abandoned_total``, never upstream.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal

import psutil
from svckit.abandoned import LATE_SECONDS
from svckit.watchdog import BEAT_SECONDS

from testkit.fixtures import ServiceProcess, scrape

from .conftest import Echo, Provider, process_env

GONE = 10


async def test_requests_whose_clients_left_while_the_gateway_was_frozen_never_reach_upstream(
    provider: Provider, echo: Echo, identity_keys: dict[str, str], redis_prefix: str
) -> None:
    process = ServiceProcess(
        "gateway", process_env(provider, echo, identity_keys, redis_prefix, GATEWAY_WORKERS="1")
    )
    await asyncio.to_thread(process.start)
    try:
        assert process.process is not None
        tree = [process.process.pid, *(child.pid for child in psutil.Process(process.process.pid).children())]
        request = (
            f"GET /api/timesheets HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {provider.token()}\r\n\r\n"
        ).encode()
        host, port = "127.0.0.1", int(process.url.rsplit(":", 1)[1])
        reader, staying = await asyncio.open_connection(host, port)
        staying.write(request)  # a warm-up on the connection that stays
        await staying.drain()
        assert (await _answer(reader)).startswith(b"HTTP/1.1 200")
        forwarded = echo.requests
        for pid in tree:
            os.kill(pid, signal.SIGSTOP)
        try:
            for _ in range(GONE):
                _, writer = await asyncio.open_connection(host, port)
                writer.write(request)
                await writer.drain()
                writer.close()  # gone: an ingress or a browser that timed out
                await writer.wait_closed()
            staying.write(request)
            await staying.drain()
            # frozen for longer than a client's patience here: longer than the loop may lag before
            # it counts as behind (a beat over LATE_SECONDS late), which is what the look waits for
            await asyncio.sleep(BEAT_SECONDS + LATE_SECONDS + 0.5)
        finally:
            for pid in tree:
                os.kill(pid, signal.SIGCONT)
        head = await asyncio.wait_for(_answer(reader), 30)
        assert head.startswith(b"HTTP/1.1 200"), head  # the client that waited is answered
        staying.close()
        dropped = 0.0
        for _ in range(200):
            dropped = _sample(await scrape(process.url), "http_requests_abandoned_total")
            if dropped >= GONE:
                break
            await asyncio.sleep(0.05)
        assert dropped == GONE
        assert echo.requests == forwarded + 1  # only the one whose client waited went upstream
    finally:
        await asyncio.to_thread(process.stop)


async def _answer(reader: asyncio.StreamReader) -> bytes:
    """One response read whole (the gateway frames with ``content-length``); its head."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length: *([0-9]+)\r$", head)
    assert length is not None, head
    await reader.readexactly(int(length.group(1)))
    return head


def _sample(exposition: str, name: str) -> float:
    found = re.search(rf"^{name} ([0-9.e+]+)$", exposition, re.M)
    return float(found.group(1)) if found else 0.0
