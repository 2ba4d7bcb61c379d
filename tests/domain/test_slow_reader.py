"""Slow readers behind the gateway: what a client that takes its response slowly can hold.

The attack: an employee lists the largest page the API gives (100 entries with 2000-character notes,
~830 KB) and then takes it a few bytes at a time, always within the send timeout. The service holds
nothing by then (its handler built the body and released its database connection before writing);
the gateway relayed the answer with back-pressure, so each such reader kept one of the gateway's
pooled connections to the service busy until it had taken everything. ``UPSTREAM_POOL_SIZE`` of them
and every other user's request to that service waited for a connection, with no end (503s never
came: the pool waits without a limit, and ``/readyz`` stayed 200). Reproduced with the pool at 2.

The readers connect with a TCP segment size of 1460 bytes, as over a real network: on loopback the
kernel's send buffer grows to 4 MiB and swallows the whole page, which hid the hold.

Both ends run as processes, as deployed (``python -m timesheets``, ``python -m gateway``, one worker).
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from bench.api import AUDIENCE, Issuer
from testkit.fixtures import ServiceProcess, ServiceRedis, runtime_url

EMPLOYEE = "openid read:timesheets create:timesheets delete:timesheets"
POOL = 2
PAGE = "/api/timesheets?limit=100"
#: a well-behaved request must be answered within this (on the old code it was never answered)
PATIENCE = 20.0


class Stack:
    def __init__(self, timesheets: ServiceProcess, gateway: ServiceProcess, issuer: Issuer) -> None:
        self.timesheets = timesheets
        self.gateway = gateway
        self.issuer = issuer


@pytest.fixture
def stack(
    request: pytest.FixtureRequest,
    domain_database: str,
    service_env: dict[str, str],
    service_redis: ServiceRedis,
    tmp_path: Path,
) -> Iterator[Stack]:
    """Timesheets and a one-worker gateway with :data:`POOL` connections to it; ``request.param``:
    more gateway settings."""
    timesheets = ServiceProcess(
        "timesheets",
        {
            **service_env,
            "DATABASE_URL": runtime_url(domain_database, "timesheets"),
            "REDIS_URL": service_redis.url("timesheets"),
            "AUDIT_URL": "http://127.0.0.1:9",
        },
        log_dir=tmp_path,
    )
    issuer = Issuer()
    gateway = ServiceProcess(
        "gateway",
        {
            **service_env,
            "REDIS_URL": service_redis.url("gateway"),
            "OIDC_ISSUER": issuer.issuer,
            "OIDC_AUDIENCE": AUDIENCE,
            "TIMESHEETS_URL": timesheets.url,
            "APPROVALS_URL": "http://127.0.0.1:9",
            "AUDIT_URL": "http://127.0.0.1:9",
            "GATEWAY_WORKERS": "1",
            "UPSTREAM_POOL_SIZE": str(POOL),
            # one token's many slow readers are what these tests are about; the per-subject limit
            # (left unset, the pool's size less one) is taken off but where a test sets it
            "GATEWAY_MAX_IN_FLIGHT_PER_SUBJECT": "0",
            **getattr(request, "param", {}),
        },
        log_dir=tmp_path,
    )
    with timesheets.start("/readyz"):
        try:
            gateway.start("/readyz", timeout=60)
            yield Stack(timesheets, gateway, issuer)
        finally:
            gateway.stop()
            issuer.close()


async def fill_page(session: aiohttp.ClientSession, stack: Stack, token: str, entries: int = 100) -> None:
    """``entries`` entries with the longest notes (2000 four-byte characters each)."""
    note = "\U0001f600" * 2000
    for i in range(entries):
        day = f"2026-{1 + i // 28:02d}-{1 + i % 28:02d}"
        async with session.post(
            stack.gateway.url + "/api/timesheets",
            json={"date": day, "project": "Slow", "hours": 1, "notes": note},
            headers={"Authorization": f"Bearer {token}"},
        ) as response:
            assert response.status == 201, await response.text()


def slow_reader(stack: Stack, token: str, requests: int = 1, path: str = PAGE) -> socket.socket:
    """A client over a real network's segment size, with a small receive buffer, that sends
    ``requests`` GETs (pipelined) and reads nothing until told."""
    host, port = stack.gateway.url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1460)
    sock.connect((host, int(port)))
    head = f"GET {path} HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {token}\r\n\r\n"
    sock.sendall(head.encode() * requests)
    return sock


def content_length(head: bytes) -> int:
    """The ``Content-Length`` of a response head (the gateway always sends one here)."""
    return next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """The one response on ``sock``, read now: its status and body (short if the gateway cut it off)."""
    sock.settimeout(PATIENCE)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    length = content_length(head)
    while len(body) < length:
        more = sock.recv(65536)
        if not more:
            break
        body += more
    return status, body


def answers_until_cut_off(sock: socket.socket, requests: int) -> tuple[int, bool]:
    """Reads the pipelined answers on ``sock`` in order: how many came whole, and whether the one
    after them was cut off (the connection closed inside its body)."""
    sock.settimeout(PATIENCE)
    data, whole = b"", 0
    while whole < requests:
        while b"\r\n\r\n" not in data:
            more = sock.recv(65536)
            if not more:
                return whole, False  # closed between answers: nothing cut
            data += more
        head, _, data = data.partition(b"\r\n\r\n")
        assert int(head.split(b" ")[1]) == 200, head
        length = content_length(head)
        while len(data) < length:
            more = sock.recv(65536)
            if not more:
                return whole, True
            data += more
        data, whole = data[length:], whole + 1
    return whole, False


async def other_user_gets_an_answer(session: aiohttp.ClientSession, stack: Stack) -> int:
    token = stack.issuer.token(f"bystander-{uuid.uuid4().hex[:6]}", EMPLOYEE)
    async with session.get(
        stack.gateway.url + "/api/timesheets",
        headers={"Authorization": f"Bearer {token}"},
        timeout=aiohttp.ClientTimeout(total=PATIENCE),
    ) as response:
        await response.read()
        return response.status


def value(text: str, name: str) -> float:
    """The sum of the samples in a scrape whose line starts with ``name`` (a family, or one series)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


async def metric(session: aiohttp.ClientSession, stack: Stack, name: str) -> float:
    async with session.get(stack.gateway.metrics_url) as response:
        return value(await response.text(), name)


async def metrics_until(session: aiohttp.ClientSession, stack: Stack, holds: Callable[[str], bool]) -> None:
    """Until ``holds`` is true of a scrape of the gateway (its figures are written once a second), or
    :data:`PATIENCE` passed (the caller's checks then show what happened instead)."""
    deadline = asyncio.get_running_loop().time() + PATIENCE
    while asyncio.get_running_loop().time() < deadline:
        async with session.get(stack.gateway.metrics_url) as response:
            if holds(await response.text()):
                return
        await asyncio.sleep(0.2)


async def settled(session: aiohttp.ClientSession, stack: Stack, pages: int) -> None:
    """Until ``pages`` large answers sit whole in the gateway's read-ahead budget and no pooled
    connection is busy (the figures are written once a second), or :data:`PATIENCE` passed — what the
    old code never reached: its connections stayed busy while the readers took nothing."""
    busy = 'gateway_upstream_connections{service="timesheets",state="busy"}'
    await metrics_until(
        session,
        stack,
        lambda text: (
            value(text, "gateway_response_buffer_bytes") >= pages * 800_000 and value(text, busy) == 0
        ),
    )


async def cut_off_by_now(session: aiohttp.ClientSession, stack: Stack, answers: int) -> None:
    """Until the gateway has cut off ``answers`` streamed answers (written once a second), or
    :data:`PATIENCE` passed (the caller's reads then show what happened instead)."""
    await metrics_until(session, stack, lambda text: value(text, "gateway_response_cutoffs_total") >= answers)


async def test_slow_readers_of_the_largest_page_hold_no_upstream_connection(stack: Stack) -> None:
    reader = stack.issuer.token(f"slow-{uuid.uuid4().hex[:6]}", EMPLOYEE)
    async with aiohttp.ClientSession() as session:
        await fill_page(session, stack, reader)
        readers = [slow_reader(stack, reader) for _ in range(POOL)]
        try:
            await settled(session, stack, POOL)  # their answers have left the service (however busy the host)
            assert await other_user_gets_an_answer(session, stack) == 200, stack.gateway.logs()[-3000:]
            await asyncio.sleep(1.2)  # the pools' figures are written once a second
            assert (
                await metric(session, stack, 'gateway_upstream_pool_waits_total{service="timesheets"}') == 0
            )
            busy = 'gateway_upstream_connections{service="timesheets",state="busy"}'
            assert await metric(session, stack, busy) == 0
            for sock in readers:  # and each slow reader still gets its page, whole
                status, body = read_response(sock)
                assert status == 200
                assert len(json.loads(body)["items"]) == 100
        finally:
            for sock in readers:
                sock.close()


@pytest.mark.parametrize(
    "stack",
    [
        {
            "GATEWAY_RESPONSE_BUFFER_BYTES": "0",
            "UPSTREAM_READ_TIMEOUT_SECONDS": "2",
            # the bystander waits for the connection the first cut-off frees (at 2 s): the pool's own
            # bound on that wait (1 s by default, then 503 upstream_busy) is another test's matter
            "UPSTREAM_POOL_WAIT_SECONDS": "10",
        }
    ],
    indirect=True,
)
async def test_without_read_ahead_room_a_slow_reader_holds_a_connection_for_a_bounded_time(
    stack: Stack,
) -> None:
    """The budget taken (here: none at all), large answers stream holding their connections, as
    before — for ``UPSTREAM_READ_TIMEOUT_SECONDS`` in all; then the slow client's answer is cut off.

    Each reader pipelines more of the largest page than the kernel can hold for it: one page alone
    may fit in the gateway's socket send buffer, which Linux grows up to ``tcp_wmem``'s maximum (a CI
    run had a whole 831 KB page go out, its connection given back, nothing to cut off), and the
    cut-off is about the answer that does not fit."""
    reader = stack.issuer.token(f"slow-{uuid.uuid4().hex[:6]}", EMPLOYEE)
    send_buffer_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    pages = 2 + 2 * send_buffer_max // 800_000
    async with aiohttp.ClientSession() as session:
        await fill_page(session, stack, reader)
        readers = [slow_reader(stack, reader, requests=pages) for _ in range(POOL)]
        try:
            await asyncio.sleep(1)  # their answers are streaming, holding both connections
            assert await other_user_gets_an_answer(session, stack) == 200, stack.gateway.logs()[-3000:]
            # Read only once the gateway has cut them off: on a loaded host the service makes the pages
            # slowly, and the bystander gets the connection the first cut-off frees; a reader that
            # started reading before its answer had stalled for the bound would (rightly) take every
            # page whole.
            await cut_off_by_now(session, stack, POOL)
            for sock in readers:  # an answer of each is cut off: closed short of its length
                whole, cut_off = answers_until_cut_off(sock, pages)
                assert cut_off, (whole, stack.gateway.logs()[-4000:])
            assert await metric(session, stack, "gateway_response_cutoffs_total") >= POOL
            assert await metric(session, stack, "gateway_response_streamed_total") >= POOL
            assert "streamed response cut off" in stack.gateway.logs()
        finally:
            for sock in readers:
                sock.close()


async def test_clients_not_reading_pipelined_answers_hold_no_upstream_connection(stack: Stack) -> None:
    """Small answers (under 64 KiB: relayed whole) to a client that pipelines requests and reads
    nothing: once its socket is full, each next answer waited to be written while holding the
    connection it had come on."""
    reader = stack.issuer.token(f"slow-{uuid.uuid4().hex[:6]}", EMPLOYEE)
    async with aiohttp.ClientSession() as session:
        await fill_page(session, stack, reader, entries=5)  # a page of ~42 KB
        readers = [
            slow_reader(stack, reader, requests=40, path="/api/timesheets?limit=5") for _ in range(POOL)
        ]
        try:
            await asyncio.sleep(1)  # their sockets are full, the next answers waiting to be written
            assert await other_user_gets_an_answer(session, stack) == 200, stack.gateway.logs()[-3000:]
            await asyncio.sleep(1.2)  # the pools' figures are written once a second
            # it found an idle connection: it did not wait for one (the service's keep-alive close
            # freed a held one after 5 s, so on the old code it was answered, but only after a wait)
            assert (
                await metric(session, stack, 'gateway_upstream_pool_waits_total{service="timesheets"}') == 0
            )
        finally:
            for sock in readers:
                sock.close()


IN_FLIGHT = POOL - 1  # below the pool, as the gateway requires
#: slow readers of one token: more than the budget's one page + the pool's two connections
READERS = 6
IN_FLIGHT_REFUSED = 'gateway_rate_limited_total{limit="in_flight"}'


async def stalled_or_refused(session: aiohttp.ClientSession, stack: Stack) -> None:
    """Until the slow readers hold what they can: every pooled connection busy with one waiting
    behind them (the old code's stall, which lasts until a streamed answer is cut off), or several
    of their requests refused for being in flight (the limit) — or :data:`PATIENCE` passed."""
    busy = 'gateway_upstream_connections{service="timesheets",state="busy"}'
    waits = 'gateway_upstream_pool_waits_total{service="timesheets"}'
    await metrics_until(
        session,
        stack,
        lambda text: (
            value(text, IN_FLIGHT_REFUSED) >= READERS - IN_FLIGHT
            or (value(text, busy) == POOL and value(text, waits) >= 1)
        ),
    )


async def logged(stack: Stack, text: str) -> None:
    """Until ``text`` is in the gateway's log (access lines are written in batches)."""
    deadline = asyncio.get_running_loop().time() + PATIENCE
    while text not in stack.gateway.logs(None):
        assert asyncio.get_running_loop().time() < deadline, stack.gateway.logs()
        await asyncio.sleep(0.1)


@pytest.mark.parametrize(
    "stack",
    [
        {
            "GATEWAY_RESPONSE_BUFFER_BYTES": "1000000",  # one page read ahead; the others stream
            "UPSTREAM_READ_TIMEOUT_SECONDS": "120",  # a stall outlasts the test's patience
            "GATEWAY_MAX_IN_FLIGHT_PER_SUBJECT": str(IN_FLIGHT),
        }
    ],
    indirect=True,
)
async def test_one_tokens_slow_readers_beyond_budget_and_pool_do_not_stall_other_users(
    stack: Stack,
) -> None:
    """The residual of read-ahead: one valid token opening more slow readers of the largest page than
    the budget's pages + the pool's connections. One is read ahead, two stream holding both pooled
    connections, the rest wait for one — and so did every other user of the service, until the
    streamed answers were cut off (``UPSTREAM_READ_TIMEOUT_SECONDS``, 30 s by default: a bystander
    waited 29.8 s at 400 readers), wave after wave, within the token's rate limit, which counts
    requests, not requests in flight. With ``GATEWAY_MAX_IN_FLIGHT_PER_SUBJECT`` below the pool size
    that token's further requests are refused (429) while its earlier answers are still being taken,
    and a pooled connection stays free for everyone else."""
    reader = stack.issuer.token(f"slow-{uuid.uuid4().hex[:6]}", EMPLOYEE)
    send_buffer_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    pages = 2 + 2 * send_buffer_max // 800_000  # more than the kernel can hold for one reader
    async with aiohttp.ClientSession() as session:
        await fill_page(session, stack, reader)
        readers = [slow_reader(stack, reader, requests=pages) for _ in range(READERS)]
        try:
            await stalled_or_refused(session, stack)
            started = asyncio.get_running_loop().time()
            assert await other_user_gets_an_answer(session, stack) == 200, stack.gateway.logs()[-3000:]
            assert asyncio.get_running_loop().time() - started < PATIENCE
            # the slow token's requests beyond the limit are refused while its answers are in flight
            async with session.get(
                stack.gateway.url + "/api/timesheets?limit=1",
                headers={"Authorization": f"Bearer {reader}"},
                timeout=aiohttp.ClientTimeout(total=PATIENCE),
            ) as response:
                assert response.status == 429
                assert response.headers["Content-Type"] == "application/problem+json"
                assert response.headers["Retry-After"] == "1"
                problem = await response.json(content_type=None)
            assert problem["reason"] == "rate_limit_in_flight"
            assert "in progress" in problem["detail"]
            assert await metric(session, stack, IN_FLIGHT_REFUSED) >= READERS - IN_FLIGHT
            await logged(stack, '"route": "/api/timesheets", "status": 429')  # the access line
        finally:
            for sock in readers:
                sock.close()
        # the readers gone, their places are given back: the token is served again
        deadline = asyncio.get_running_loop().time() + PATIENCE
        while True:
            async with session.get(
                stack.gateway.url + "/api/timesheets?limit=1", headers={"Authorization": f"Bearer {reader}"}
            ) as response:
                await response.read()
                if response.status == 200:
                    break
            assert asyncio.get_running_loop().time() < deadline, "the readers' places were not given back"
            await asyncio.sleep(0.2)
