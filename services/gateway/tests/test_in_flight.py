"""Requests in flight per subject and service (``GATEWAY_MAX_IN_FLIGHT…``, :class:`gateway.stages.InFlight`).

A subject's place is taken at admission and given back in :meth:`gateway.edge.Edge.finish`, whichever
way the request ends: these tests take each way on a real gateway in front of the echo upstream and
wait until the worker's count is back to nothing (a leak would refuse the subject for good).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import uuid
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

from gateway.app import GatewayApp, create_app
from gateway.edge import Edge
from prometheus_client import REGISTRY

from testkit.fixtures import free_port, serve_app

from .conftest import Echo, Provider, StartGateway

#: generous for a loaded CI host: every wait below ends as soon as its state is reached
DEADLINE = 15.0
BIG = 300_000  # the echo's /big answer: over 64 KiB, so read ahead or streamed


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@contextlib.asynccontextmanager
async def gateway_with(start_gateway: StartGateway, **overrides: Any) -> AsyncIterator[tuple[str, Edge]]:
    """A gateway (in this process) and its edge, whose in-flight counts the tests read."""
    app = create_app(start_gateway.settings(**overrides))  # type: ignore[attr-defined]
    assert isinstance(app, GatewayApp)
    async with serve_app(app) as url:
        edge = app.gateway.edge
        assert edge is not None
        yield url, edge


async def until(condition: Any, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + DEADLINE
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"not within {DEADLINE} s: {what}"
        await asyncio.sleep(0.02)


async def given_back(edge: Edge) -> None:
    """Until no subject has a request in flight in this worker."""
    await until(lambda: not edge.in_flight.counts, f"places given back (left: {edge.in_flight.counts})")


def head(target: str, token: str, method: str = "GET", extra: str = "") -> bytes:
    return f"{method} {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n{extra}\r\n".encode()


async def slow_client(gateway: str, requests: bytes) -> socket.socket:
    """A client over a real network's segment size with a small receive buffer (as
    tests/domain/test_slow_reader.py builds them) that writes ``requests`` and reads nothing."""
    host, port = gateway.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1460)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (host, int(port)))
    await loop.sock_sendall(sock, requests)
    return sock


def more_than_the_kernel_holds() -> int:
    """Pipelined /big answers that cannot all fit in the socket buffers (tcp_wmem's maximum)."""
    with open("/proc/sys/net/ipv4/tcp_wmem") as file:
        return 2 + 2 * int(file.read().split()[2]) // BIG


async def request(gateway: str, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """One request written byte for byte on its own connection (``Connection: close``); the answer."""
    host, port = gateway.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(raw)
        data = await asyncio.wait_for(reader.read(), DEADLINE)
    finally:
        writer.close()
    top, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = top.decode("latin-1").split("\r\n")
    headers = {
        name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)
    }
    return int(status_line.split()[1]), headers, body


async def get(gateway: str, target: str, token: str) -> tuple[int, dict[str, str], bytes]:
    return await request(gateway, head(target, token, extra="Connection: close\r\n"))


# --- the limit ------------------------------------------------------------------------------------


async def test_a_subject_over_its_limit_is_refused_and_others_are_not(
    start_gateway: StartGateway, provider: Provider, echo: Echo
) -> None:
    before = sample("gateway_rate_limited_total", limit="in_flight")
    subject = f"busy-{uuid.uuid4().hex[:6]}"
    busy = provider.scoped("read:timesheets", subject=subject)
    calm = provider.scoped("read:timesheets", subject=f"calm-{uuid.uuid4().hex[:6]}")
    async with gateway_with(start_gateway, gateway_max_in_flight_per_subject=2) as (gateway, edge):
        held = [asyncio.create_task(get(gateway, "/api/timesheets/slow?s=1.5", busy)) for _ in range(2)]
        await until(lambda: sum(edge.in_flight.counts.values()) == 2, "two requests in flight")
        status, headers, body = await get(gateway, "/api/timesheets/1", busy)
        assert status == 429
        assert headers["content-type"] == "application/problem+json"
        assert headers["retry-after"] == "1"
        problem = json.loads(body)
        assert problem["reason"] == "rate_limit_in_flight"
        assert "at most 2 at once" in problem["detail"]
        # another subject (same client, same address) is not affected
        assert (await get(gateway, "/api/timesheets/1", calm))[0] == 200
        assert sample("gateway_rate_limited_total", limit="in_flight") == before + 1
        assert [(await task)[0] for task in held] == [200, 200]
        await given_back(edge)
        # and the subject is served again once its answers are out
        assert (await get(gateway, "/api/timesheets/1", busy))[0] == 200
        await given_back(edge)
    # on the audit trail like the other rate-limit refusals: aggregated, with the caller's identity
    deadline = asyncio.get_running_loop().time() + DEADLINE
    while True:
        found = [
            event
            for event in echo.events
            if event["details"].get("reason") == "rate_limit_in_flight"
            and event["actor"]["subject"] == subject
        ]
        if found:
            break
        assert asyncio.get_running_loop().time() < deadline, "no audit record"
        await asyncio.sleep(0.05)
    [event] = found
    assert event["action"] == "access.denied"
    assert event["details"]["status"] == 429
    assert event["details"]["count"] == 1
    assert event["details"]["route"] == "/api/timesheets/{id}"


async def test_the_limit_is_per_service(start_gateway: StartGateway, provider: Provider) -> None:
    """A subject whose requests to one service are stuck (a frozen pod: each waits for the read
    timeout) is refused more of them, and still served by the other services: with one count per
    subject, a frozen approvals service had a manager's timesheet listings refused 429 (45 of 80,
    tests/faults/test_frozen_service.py)."""
    token = provider.scoped("read:timesheets", "read:audit", subject=f"both-{uuid.uuid4().hex[:6]}")
    async with gateway_with(start_gateway, gateway_max_in_flight_per_subject=2) as (gateway, edge):
        held = [asyncio.create_task(get(gateway, "/api/timesheets/slow?s=1.5", token)) for _ in range(2)]
        await until(lambda: sum(edge.in_flight.counts.values()) == 2, "two requests in flight")
        assert (await get(gateway, "/api/timesheets/1", token))[0] == 429
        assert (await get(gateway, "/api/audit/events", token))[0] == 200
        assert [(await task)[0] for task in held] == [200, 200]
        await given_back(edge)


async def test_zero_means_no_limit(start_gateway: StartGateway, provider: Provider) -> None:
    token = provider.scoped("read:timesheets", subject=f"many-{uuid.uuid4().hex[:6]}")
    async with gateway_with(start_gateway, gateway_max_in_flight_per_subject=0) as (gateway, edge):
        statuses = await asyncio.gather(
            *(get(gateway, "/api/timesheets/slow?s=0.3", token) for _ in range(5))
        )
        assert [status for status, _, _ in statuses] == [200] * 5
        assert edge.in_flight.counts == {}


# --- every way a request ends gives its place back -------------------------------------------------


async def test_answers_relayed_whole_read_ahead_and_streamed(
    start_gateway: StartGateway, provider: Provider
) -> None:
    token = provider.scoped("read:timesheets", "create:timesheets", subject=f"u-{uuid.uuid4().hex[:6]}")
    for budget in (64 * 1024 * 1024, 0):  # read ahead; streamed
        async with gateway_with(
            start_gateway, gateway_max_in_flight_per_subject=1, gateway_response_buffer_bytes=budget
        ) as (gateway, edge):
            # one connection, one request after another: the callback path (a cached token, an idle
            # connection), the task path (the first request verifies the token), a body, a large answer
            host, port = gateway.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port), limit=1 << 22)
            try:
                for target in ("/api/timesheets/1", "/api/timesheets/2", "/api/timesheets/big"):
                    writer.write(head(target, token))
                    top = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE)
                    assert top.startswith(b"HTTP/1.1 200"), top
                    length = int(top.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    await asyncio.wait_for(reader.readexactly(length), DEADLINE)
                    await given_back(edge)
                writer.write(head("/api/timesheets", token, "POST", "Content-Length: 2\r\n") + b"{}")
                top = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE)
                assert top.startswith(b"HTTP/1.1 200"), top
                await given_back(edge)
            finally:
                writer.close()
            # several at once on a pool of one (they wait for the connection, then go one by one)
            others = [
                provider.scoped("read:timesheets", subject=f"p-{uuid.uuid4().hex[:6]}") for _ in range(3)
            ]
            answers = await asyncio.gather(*(get(gateway, "/api/timesheets/slow?s=0.2", t) for t in others))
            assert [status for status, _, _ in answers] == [200] * 3
            await given_back(edge)


async def test_clients_gone_while_their_answers_are_read_ahead_or_streamed(
    start_gateway: StartGateway, provider: Provider
) -> None:
    token = provider.scoped("read:timesheets", subject=f"gone-{uuid.uuid4().hex[:6]}")
    pages = more_than_the_kernel_holds()
    for budget in (64 * 1024 * 1024, 0):
        async with gateway_with(
            start_gateway,
            gateway_max_in_flight_per_subject=4,
            gateway_response_buffer_bytes=budget,
            upstream_read_timeout_seconds=60,  # not cut off: the clients hang up first
        ) as (gateway, edge):
            streamed = sample("gateway_response_streamed_total", service="timesheets")
            sock = await slow_client(gateway, head("/api/timesheets/big", token) * pages)
            try:
                if budget:  # its answers stuck behind a full socket, one of them read ahead whole
                    await until(
                        lambda: sample("gateway_response_buffer_bytes") >= BIG and edge.in_flight.counts,
                        "an answer read ahead and waiting for the client",
                    )
                else:
                    await until(
                        lambda before=streamed: (
                            sample("gateway_response_streamed_total", service="timesheets") > before
                            and edge.in_flight.counts
                        ),
                        "an answer streaming to the client",
                    )
            finally:
                sock.close()
            await given_back(edge)


async def test_a_streamed_answer_cut_off(start_gateway: StartGateway, provider: Provider) -> None:
    token = provider.scoped("read:timesheets", subject=f"cut-{uuid.uuid4().hex[:6]}")
    async with gateway_with(
        start_gateway,
        gateway_max_in_flight_per_subject=4,
        gateway_response_buffer_bytes=0,
        upstream_read_timeout_seconds=1,
    ) as (gateway, edge):
        cutoffs = sample("gateway_response_cutoffs_total", service="timesheets")
        # one answer larger than every buffer between the service and the client can hold (on
        # loopback they grow to megabytes): it cannot be complete in the gateway before the cut-off
        sock = await slow_client(gateway, head("/api/timesheets/big?n=64000000", token))
        try:
            await until(
                lambda: sample("gateway_response_cutoffs_total", service="timesheets") > cutoffs,
                "a streamed answer cut off",
            )
            await given_back(edge)  # the client is still connected; its connection was closed under it
        finally:
            sock.close()


async def test_a_client_gone_before_its_answer_arrives(
    start_gateway: StartGateway, provider: Provider
) -> None:
    token = provider.scoped("read:timesheets", subject=f"left-{uuid.uuid4().hex[:6]}")
    async with gateway_with(start_gateway, gateway_max_in_flight_per_subject=4) as (gateway, edge):
        assert (await get(gateway, "/api/timesheets/warm", token))[0] == 200  # the callback path next
        for _ in range(3):
            sock = await slow_client(gateway, head("/api/timesheets/slow?s=0.3", token))
            await until(lambda: edge.in_flight.counts, "the request in flight")
            sock.close()
        await given_back(edge)


async def test_upstream_failures_and_refusals_after_admission(
    start_gateway: StartGateway, provider: Provider
) -> None:
    token = provider.scoped("read:timesheets", "create:timesheets", subject=f"err-{uuid.uuid4().hex[:6]}")
    async with gateway_with(
        start_gateway,
        gateway_max_in_flight_per_subject=1,
        upstream_read_timeout_seconds=0.3,
        approvals_url=f"http://127.0.0.1:{free_port()}",  # nothing listens there
    ) as (gateway, edge):
        # the service too slow: 504
        assert (await get(gateway, "/api/timesheets/slow?s=1", token))[0] == 504
        await given_back(edge)
        # the service unreachable: 503
        approver = provider.scoped("approve:timesheets", subject=f"err-{uuid.uuid4().hex[:6]}")
        assert (await get(gateway, "/api/approvals", approver))[0] == 503
        await given_back(edge)
        # a body over the limit, refused after admission: 413
        too_large = head(
            "/api/timesheets", token, "POST", "Content-Length: 999999999\r\nConnection: close\r\n"
        )
        assert (await request(gateway, too_large))[0] == 413
        await given_back(edge)
        # a body the client never finishes: it is gone
        sock = await slow_client(
            gateway, head("/api/timesheets", token, "POST", "Content-Length: 100\r\n") + b"{"
        )
        await until(lambda: edge.in_flight.counts, "the request reading its body")
        sock.close()
        await given_back(edge)
        assert (await get(gateway, "/api/timesheets/1", token))[0] == 200
        await given_back(edge)


async def test_a_request_cancelled_in_flight(start_gateway: StartGateway, provider: Provider) -> None:
    """A request's task cancelled while its answer is with the service (what the server's drain does
    to a request that outlasts it): the place goes back as the task unwinds. Called through the edge's
    ASGI entry, as a server calls it, with the real upstream behind."""
    token = provider.scoped("read:timesheets", subject=f"cancel-{uuid.uuid4().hex[:6]}")
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    async with gateway_with(start_gateway, gateway_max_in_flight_per_subject=4) as (_, edge):
        scope = {
            "type": "http",
            "http_version": "1.1",
            "scheme": "http",
            "method": "GET",
            "path": "/api/timesheets/slow",
            "raw_path": b"/api/timesheets/slow",
            "query_string": b"s=5",
            "headers": [(b"host", b"x"), (b"authorization", f"Bearer {token}".encode())],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8080),
        }
        task = asyncio.create_task(edge(scope, receive, send))
        await until(lambda: edge.in_flight.counts, "the request in flight")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert edge.in_flight.counts == {}
        assert sent == []


async def test_requests_in_flight_are_on_the_metrics(start_gateway: StartGateway, provider: Provider) -> None:
    """An SRE sees how close the busiest subject is to its limit, and how many requests are in flight
    in all, without a per-request cost: both gauges are set by the once-a-second metrics flush.

    The gauges are the process's, and other gateways of this test process (the session's) write their
    own figures into them every second: the test runs its gateway's flush itself and reads the gauges
    before anything else can run (waiting for the periodic flush failed twice in CI: another
    gateway's flush wrote 0 in between)."""
    busy = provider.scoped("read:timesheets", subject=f"busy-{uuid.uuid4().hex[:6]}")
    calm = provider.scoped("read:timesheets", subject=f"calm-{uuid.uuid4().hex[:6]}")
    app = create_app(start_gateway.settings(gateway_max_in_flight_per_subject=8))  # type: ignore[attr-defined]
    assert isinstance(app, GatewayApp)
    async with serve_app(app) as gateway:
        edge = app.gateway.edge
        assert edge is not None

        def flushed() -> tuple[float, float]:
            app.gateway.flush_metrics()
            return sample("gateway_requests_in_flight"), sample("gateway_requests_in_flight_busiest_subject")

        held = [asyncio.create_task(get(gateway, "/api/timesheets/slow?s=3", busy)) for _ in range(3)]
        held.append(asyncio.create_task(get(gateway, "/api/timesheets/slow?s=3", calm)))
        await until(lambda: sum(edge.in_flight.counts.values()) == 4, "four requests in flight")
        assert flushed() == (4, 3)
        assert [(await task)[0] for task in held] == [200] * 4
        await given_back(edge)
        assert flushed() == (0, 0)
