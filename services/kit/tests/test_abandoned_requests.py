"""Requests whose clients left while a worker was behind are dropped, not served (svckit.abandoned).

Reproduced: a worker frozen (SIGSTOP) while clients each sent a request and gave up on it served every
one of them when it resumed, to completion and in order, before the first request of a client still
waiting — 40 handlers of 0.1 s each, 4.1 s, before a fresh ``/fast`` was answered."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import AsyncIterator

import pytest
from svckit import abandoned
from svckit.abandoned import LATE_SECONDS, Pace, client_gone
from svckit.watchdog import BEAT_SECONDS

from testkit.workers import worker_pids

from .test_stuck_worker import Sample, _connect, _get, running

#: clients that send a request and leave while the workers are frozen, and what each would block its
#: worker's loop for if it were served: 12 s of work spread over two workers
GONE = 24
BLOCK_SECONDS = 1.0
#: clients that send a request while the workers are frozen and wait for the answer
STAYING = 4


async def test_requests_whose_clients_left_while_the_workers_were_frozen_are_dropped(sample: Sample) -> None:
    tree = [sample.process.pid, *worker_pids(sample.process.pid)]
    staying = [await _connect(sample.port) for _ in range(STAYING)]
    for pid in tree:
        os.kill(pid, signal.SIGSTOP)
    try:
        for n in range(GONE):
            _, writer = await _connect(sample.port)  # the kernel completes the handshake alone
            if n % 4:
                writer.write(f"GET /block?s={BLOCK_SECONDS} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            else:  # a write with its body, whole
                head = f"POST /block?s={BLOCK_SECONDS} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n"
                writer.write(head.encode() + b"hello")
            await writer.drain()
            writer.close()  # gone: its FIN waits in the worker's socket behind the request
            await writer.wait_closed()
        waiting = [asyncio.create_task(_get(connection, "/fast")) for connection in staying]
        # frozen for longer than the loop may lag before it counts as behind (a beat over LATE_SECONDS
        # late): what a client's patience is longer than
        await asyncio.sleep(BEAT_SECONDS + LATE_SECONDS + 0.5)
    finally:
        for pid in tree:
            os.kill(pid, signal.SIGCONT)
    resumed = time.monotonic()
    fresh = await _connect(sample.port)
    status, _ = await asyncio.wait_for(_get(fresh, "/fast"), 30)
    took = time.monotonic() - resumed
    fresh[1].close()
    # served, the abandoned requests would hold each worker's loop ~6 s before the fresh one is read
    assert status == 200
    assert took < 2.0, f"fresh request answered {took:.1f} s after the workers resumed"
    answers = await asyncio.wait_for(asyncio.gather(*waiting), 30)
    assert [status for status, _ in answers] == [200] * STAYING  # a client that waited is served
    for _, writer in staying:
        writer.close()


@pytest.fixture
async def sample() -> AsyncIterator[Sample]:
    async with running() as sample:
        yield sample


def test_a_loop_that_never_beat_is_never_behind() -> None:
    assert not Pace().behind()  # a server without the kit's beat looks at no socket


def test_a_late_beat_or_a_beat_overdue_is_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(abandoned, "LATE_SECONDS", 0.05)
    pace = Pace()
    pace.beat(0.01)
    assert not pace.behind()
    time.sleep(0.1)
    assert pace.behind()  # the next beat is overdue now
    pace.beat(0.01)  # and when it comes, it was late
    assert pace.behind()
    pace.beat(0.01)  # a beat on time
    assert not pace.behind()


class _Transport:
    """What :func:`client_gone` asks of a transport: its socket and whether it is closing."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str) -> object:
        return self.sock if name == "socket" else None


def test_a_client_is_gone_once_its_fin_is_next_in_the_socket() -> None:
    server, client = socket.socketpair()
    with server, client:
        server.setblocking(False)
        transport = _Transport(server)
        assert not client_gone(transport)  # type: ignore[arg-type]  # nothing waiting: still there
        client.sendall(b"GET / HTTP/1.1\r\n")
        assert not client_gone(transport)  # type: ignore[arg-type]  # bytes before any FIN
        assert server.recv(100)
        client.shutdown(socket.SHUT_WR)
        assert client_gone(transport)  # type: ignore[arg-type]
        assert server.fileno() >= 0  # the descriptor is still the transport's
