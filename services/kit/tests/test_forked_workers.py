"""Workers forked from the supervisor's fork server (``svckit.server.START_METHOD``).

Each worker of a multi-worker service (the gateway) was spawned: a fresh interpreter that imported
everything again (~0.6 s of CPU per worker, at every start and every replacement). They are now
forked from a fork server that imported what a worker runs once. What must stay true, in real
processes of the sample app:

* nothing is left of the service once its supervisor is gone — SIGKILLed, as an OOM kill or a
  ``kill -9`` does: its workers drain and end (before, spawned workers went on serving as orphans, for
  ever), and the fork server ends with them;
* a fork server killed alone does not leave workers that nobody watches: the supervisor stops them and
  starts new ones from a new fork server;
* what a worker draws at random (``random``, the kit's nonces, ``uuid4``, ``secrets``) differs from
  what any other worker draws, although all were forked from one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil

from testkit.fixtures import REPO_ROOT, free_port
from testkit.workers import fork_servers, gone, worker_pids

from .test_stuck_worker import _answers, _connect, _get, running

#: what the processes of a killed supervisor may take to drain and end (idle: at once)
GONE_WITHIN = 15.0


@contextlib.contextmanager
def supervisor(port: int) -> Iterator[subprocess.Popen[bytes]]:
    """The sample app with two workers, started as ``python -c`` (so that its module is no
    ``__main__`` and the fork server imports it, as it imports the gateway's application)."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from testkit.sampleapp import main; sys.exit(main())",
            str(port),
            "2",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def ended(pids: list[int]) -> None:
    deadline = time.monotonic() + GONE_WITHIN
    while not gone(pids):
        assert time.monotonic() < deadline, [pid for pid in pids if not gone([pid])]
        await asyncio.sleep(0.1)


async def serving(port: int, pid: int, timeout: float = 30.0) -> set[int]:
    deadline = time.monotonic() + timeout
    while len(workers := worker_pids(pid)) < 2 or not await _answers(port):
        assert time.monotonic() < deadline, "the sample app did not start"
        await asyncio.sleep(0.1)
    return workers


async def test_a_killed_supervisor_leaves_no_worker_and_no_fork_server() -> None:
    port = free_port()
    with supervisor(port) as process:
        workers = await serving(port, process.pid)
        servers = [server.pid for server in fork_servers(process.pid)]
        assert len(servers) == 1
        others = [child.pid for child in psutil.Process(process.pid).children() if child.pid not in servers]
        process.kill()
        process.wait()
        await ended([*workers, *servers, *others])
        assert not await _answers(port)  # the listening socket went with the last worker


async def test_a_killed_fork_server_leaves_no_unwatched_worker() -> None:
    """The supervisor learns of its workers' ends from the fork server: once it is gone, both look
    dead. They are stopped (they drain, as on SIGTERM) and replaced from a new fork server."""
    port = free_port()
    with supervisor(port) as process:
        workers = await serving(port, process.pid)
        (server,) = fork_servers(process.pid)
        server.kill()
        deadline = time.monotonic() + GONE_WITHIN
        while not gone(list(workers)) or len(current := worker_pids(process.pid)) < 2 or current & workers:
            assert time.monotonic() < deadline, (workers, worker_pids(process.pid))
            await asyncio.sleep(0.1)
        assert [s.pid for s in fork_servers(process.pid)] != [server.pid]
        assert await _answers(port)
        assert process.poll() is None


async def test_each_worker_draws_its_own_random_values() -> None:
    port = free_port()
    with supervisor(port) as process:
        await serving(port, process.pid)
        draws: dict[int, list[dict[str, object]]] = {}
        for _ in range(60):  # a new connection each time: either worker may take it
            connection = await _connect(port)
            try:
                status, body = await _get(connection, "/entropy")
            finally:
                connection[1].close()
            assert status == 200
            draws.setdefault(int(str(body["pid"])), []).append(body)
            if len(draws) == 2 and min(len(d) for d in draws.values()) >= 3:
                break
        assert len(draws) == 2, json.dumps(draws)
        for key in ("random", "nonce", "uuid", "secret"):
            first, second = ({str(d[key]) for d in drawn} for drawn in draws.values())
            assert not first & second, (key, draws)


async def test_workers_are_the_fork_servers_children_and_stopped_by_the_supervisor() -> None:
    """SIGTERM to the supervisor: the workers it signals are the fork server's children, they drain
    and end, and the fork server ends with the last of them."""
    async with running() as sample:
        workers = worker_pids(sample.process.pid)
        (server,) = fork_servers(sample.process.pid)
        assert {child.pid for child in server.children()} == workers
        assert all(psutil.Process(pid).ppid() == server.pid for pid in workers)
        sample.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(sample.process.wait, 20) == 0
        assert gone(list(workers))  # the supervisor waited for them
        await ended([server.pid])  # the fork server, once its last client (the supervisor) is gone
