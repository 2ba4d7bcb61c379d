"""A stuck worker among several (svckit.server.Supervisor's watchdog).

A worker whose event loop is blocked (a CPU-bound bug, a deadlock, a blocking call; SIGSTOP of its
pid is the same from outside) is not dead: the supervisor did not replace it, and the listening
socket is shared, so the other workers answered every new connection — the kubelet's probes
included — while the stuck one held the connections it had accepted (keep-alive clients, an ingress
controller's upstream connections) with every request sent on them hanging for ever. Each worker now
beats from its event loop; one silent for WORKER_STUCK_SECONDS is killed and replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from testkit.fixtures import REPO_ROOT, free_port
from testkit.workers import worker_pids

STUCK_SECONDS = 2.0
#: the stuck worker is killed within the bound, plus the supervisor's polling and a loaded host's lag
REPLACED_WITHIN = STUCK_SECONDS + 3.0
#: the test's WORKER_START_SECONDS: about a worker's start with two CPU hogs on two cores (up to 4.9 s
#: seen from the supervisor's own start)
START_SECONDS = 5.0


@dataclass
class Sample:
    port: int
    process: subprocess.Popen[bytes]
    log: list[str] = field(default_factory=list)


@pytest.fixture
async def sample() -> AsyncIterator[Sample]:
    async with running() as sample:
        yield sample


@contextlib.asynccontextmanager
async def running(**environ: str) -> AsyncIterator[Sample]:
    """The sample app with two workers and a short WORKER_STUCK_SECONDS, its log read all along;
    yielded once two workers run and one of them answers."""
    port = free_port()
    env = {**os.environ, "WORKER_STUCK_SECONDS": str(STUCK_SECONDS), **environ}
    process = subprocess.Popen(
        [sys.executable, "-m", "testkit.sampleapp", str(port), "2"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,  # the supervisor's JSON log lines
    )
    sample = Sample(port, process)

    def read_log() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            sample.log.append(line.decode(errors="replace"))

    reader = asyncio.get_running_loop().run_in_executor(None, read_log)
    try:
        deadline = time.monotonic() + 30
        while len(worker_pids(process.pid)) < 2 or not await _answers(port):
            assert time.monotonic() < deadline, "".join(sample.log)
            await asyncio.sleep(0.1)
        yield sample
    finally:
        workers = worker_pids(process.pid)
        for pid in workers:
            os.kill(pid, signal.SIGCONT)  # a stopped worker would not drain
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, 20)
        except subprocess.TimeoutExpired:
            process.kill()
        for pid in workers:  # one left hanging would hold the log's pipe open
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await reader


async def _answers(port: int) -> bool:
    try:
        connection = await _connect(port)
    except OSError:
        return False
    try:
        await asyncio.wait_for(_get(connection, "/fast"), 5)
        return True
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        connection[1].close()


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _connect(port: int) -> Connection:
    return await asyncio.open_connection("127.0.0.1", port)


async def _get(connection: Connection, path: str) -> tuple[int, dict[str, object]]:
    """One keep-alive request on ``connection``: its status and JSON body."""
    reader, writer = connection
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return status, json.loads(await reader.readexactly(length))


async def test_a_stuck_worker_is_killed_and_replaced_and_its_connections_fail_fast(sample: Sample) -> None:
    """Keep-alive connections to both workers of two; one worker SIGSTOPped while a steady stream of
    requests on fresh connections runs. Before the watchdog, the requests on the stopped worker's
    connections hung for as long as the client waited (every one of them, for the whole 12 s the test
    waited) while every fresh request and every /healthz was answered — so nothing outside would ever
    restart it. Now: the stopped worker is killed within the bound (its pid gone, a new worker serves),
    the requests it held fail at once when it dies (reset or closed unanswered) instead of hanging,
    the other worker was never touched, and no fresh request sent after the stop failed (one the worker
    had taken just before it stopped fails with it, as fast)."""
    workers = worker_pids(sample.process.pid)
    held: dict[int, list[Connection]] = {pid: [] for pid in workers}
    deadline = time.monotonic() + 30  # keep-alive connections on both workers (the second may still start)
    while time.monotonic() < deadline:
        connection = await _connect(sample.port)
        status, body = await _get(connection, "/fast")
        assert status == 200
        connections = held[int(body["pid"])]  # type: ignore[call-overload]
        if len(connections) < 3:
            connections.append(connection)
        else:
            connection[1].close()
        if all(len(connections) >= 3 for connections in held.values()):
            break
    assert all(len(connections) >= 3 for connections in held.values()), {p: len(c) for p, c in held.items()}
    stuck, other = sorted(workers)
    fresh: list[tuple[int | str, float, float]] = []  # outcome, started, seconds taken
    streaming = True

    async def stream() -> None:  # fresh connections all along, as the kubelet's probes come
        while streaming:
            started = time.monotonic()
            try:
                connection = await _connect(sample.port)
                try:
                    status, _ = await asyncio.wait_for(_get(connection, "/healthz"), 5)
                finally:
                    connection[1].close()
                fresh.append((status, started, time.monotonic() - started))
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                fresh.append((type(exc).__name__, started, time.monotonic() - started))
            await asyncio.sleep(0.02)

    streamer = asyncio.create_task(stream())
    await asyncio.sleep(0.3)
    os.kill(stuck, signal.SIGSTOP)
    stopped_at = time.monotonic()
    outcomes: list[tuple[str, float]] = []

    async def on_stuck(connection: Connection) -> None:
        try:
            await asyncio.wait_for(_get(connection, "/fast"), 12)
            outcomes.append(("answered", time.monotonic() - stopped_at))
        except TimeoutError:
            outcomes.append(("hung", time.monotonic() - stopped_at))
        except (OSError, asyncio.IncompleteReadError):
            outcomes.append(("failed", time.monotonic() - stopped_at))

    await asyncio.gather(*(on_stuck(connection) for connection in held[stuck]))
    replaced_at = None
    while time.monotonic() - stopped_at < REPLACED_WITHIN + 1:
        current = worker_pids(sample.process.pid)
        if stuck not in current and len(current) == 2:
            replaced_at = time.monotonic() - stopped_at
            break
        await asyncio.sleep(0.05)
    if replaced_at is not None:  # the new worker serves
        deadline = time.monotonic() + 30
        while True:
            connection = await _connect(sample.port)
            _, body = await _get(connection, "/fast")
            connection[1].close()
            if body["pid"] not in (stuck, other):
                break
            assert time.monotonic() < deadline
    streaming = False
    await streamer
    for connections in held.values():
        for _, writer in connections:
            writer.close()

    failed_fresh = [(what, started - stopped_at, took) for what, started, took in fresh if what != 200]
    figures = {
        "stuck outcomes": outcomes,
        "replaced after": replaced_at,
        "fresh not 200": failed_fresh,
        "fresh slowest": max(took for _, _, took in fresh),
        "fresh": len(fresh),
    }
    assert [kind for kind, _ in outcomes] == ["failed"] * len(held[stuck]), figures
    assert max(seconds for _, seconds in outcomes) < REPLACED_WITHIN, figures
    assert replaced_at is not None, figures
    assert replaced_at < REPLACED_WITHIN, figures
    assert other in worker_pids(sample.process.pid), figures
    # a fresh request the stopped worker had taken just before it stopped fails with it (fast); none
    # sent later reached it
    for what, since_stop, took in failed_fresh:
        assert what in ("ConnectionResetError", "IncompleteReadError"), figures
        assert since_stop < 0.05, figures
        assert took < REPLACED_WITHIN, figures
    assert len(fresh) > 20, figures
    stuck_lines = [json.loads(line) for line in sample.log if "worker stuck" in line]
    assert [line.get("pid") for line in stuck_lines] == [stuck], "".join(sample.log)
    # a stopped process cannot dump its stack: the supervisor waited a bounded moment, then killed it
    assert stuck_lines[0]["stack"] is None, stuck_lines
    assert "did not run" in stuck_lines[0]["stack_missing"], stuck_lines


async def test_a_busy_but_beating_worker_is_left_alone(sample: Sample) -> None:
    """Slow requests (awaiting, the loop free) on both workers for longer than the bound: nobody is
    killed — the watchdog judges the event loop, not how long requests take."""
    workers = worker_pids(sample.process.pid)
    connections = [await _connect(sample.port) for _ in range(6)]
    answers = await asyncio.gather(*(_get(c, f"/slow?s={STUCK_SECONDS + 1.5}") for c in connections))
    for _, writer in connections:
        writer.close()
    assert [status for status, _ in answers] == [200] * 6
    assert worker_pids(sample.process.pid) == workers
    assert not [line for line in sample.log if "worker stuck" in line]


#: what a client sent the stuck request with: none of it may reach the log
SECRET_TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzdHVjay10ZXN0In0.c3R1Y2stdGVzdC1zaWduYXR1cmU"
SECRET_HEADER = "x-stuck-test-secret"


def stuck_records(sample: Sample) -> list[dict[str, object]]:
    return [json.loads(line) for line in sample.log if "worker stuck" in line]


async def block_a_worker(sample: Sample, request: bytes) -> list[dict[str, object]]:
    """Send ``request`` (one that blocks its worker's loop), see its connection end with the killed
    worker, and wait for the supervisor's ``worker stuck`` records."""
    reader, writer = await _connect(sample.port)
    writer.write(request)
    await writer.drain()
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):  # the worker dies under it
        assert await asyncio.wait_for(reader.read(), REPLACED_WITHIN + 2) == b""
    writer.close()
    deadline = time.monotonic() + REPLACED_WITHIN
    while not stuck_records(sample) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return stuck_records(sample)


async def test_a_stuck_workers_stack_is_logged_before_it_is_killed(sample: Sample) -> None:
    """A handler blocks its worker's event loop in a C call (``time.sleep``). Before: the supervisor's
    one line said which pid it killed and after how long, not where the worker was stuck — the one
    thing needed to fix the cause. Now the line holds every thread's Python stack, dumped by the
    worker itself (faulthandler, on the supervisor's signal) before the kill: the blocking call's
    frames, the handler's among them; the request's headers and token appear nowhere. And which
    request held the loop (``stuck_request_id``): its access line is written when it ends, which it
    never does, so before only its peers' lines (the gateway's 504) knew of it."""
    workers = worker_pids(sample.process.pid)
    sent_at = time.monotonic()
    records = await block_a_worker(
        sample,
        b"GET /block?s=30 HTTP/1.1\r\nHost: x\r\nX-Request-ID: stuck-0123456789\r\n"
        + f"Authorization: Bearer {SECRET_TOKEN}\r\n{SECRET_HEADER}: {SECRET_TOKEN}\r\n\r\n".encode(),
    )
    deadline = time.monotonic() + REPLACED_WITHIN
    log = "".join(sample.log)
    assert len(records) == 1, log
    record = records[0]
    assert time.monotonic() - sent_at < REPLACED_WITHIN, log
    stuck = record["pid"]
    assert stuck in workers, log
    assert record["level"] == "error", record
    assert "request_id" in record, record
    assert record["starting"] is False, record
    stack = record["stack"]
    assert isinstance(stack, str), record
    assert "(most recent call first)" in stack, stack  # every thread of the worker, innermost first
    for frame in ("in block_the_loop", "in block", "sampleapp.py"):  # the blocking call's frames
        assert frame in stack, stack
    assert "block_the_loop" in str(record["stuck_at"]), record
    assert record["stuck_request_id"] == "stuck-0123456789", record
    for secret in (SECRET_TOKEN, SECRET_HEADER, "Bearer"):
        assert secret.lower() not in log.lower(), log
    while stuck in worker_pids(sample.process.pid):  # killed, then replaced
        assert time.monotonic() < deadline + 2, log
        await asyncio.sleep(0.05)


async def test_a_worker_spinning_in_python_names_its_request_too(sample: Sample) -> None:
    """A CPU-bound bug (pure Python that never yields) rather than a blocking call: the worker's
    handler of the signal runs between two of its bytecodes, in the spinning request's context."""
    records = await block_a_worker(
        sample, b"GET /block?s=30&how=spin HTTP/1.1\r\nHost: x\r\nX-Request-ID: spin-0123456789\r\n\r\n"
    )
    assert len(records) == 1, "".join(sample.log)
    assert "spin_the_loop" in str(records[0]["stuck_at"]), records
    assert records[0]["stuck_request_id"] == "spin-0123456789", records


async def test_a_worker_stuck_in_its_start_is_killed_and_replaced(tmp_path: Path) -> None:
    """A worker that hangs in its start — an import or the application factory waiting for ever —
    before its event loop first beat (here: the replacement of a worker that died). Before: the
    watchdog judged only workers that had beaten once, so it held its place among the workers for
    good, serving nothing. Now one without a first beat WORKER_START_SECONDS after its spawn is stuck
    like any other: its stack logged (the hanging factory), killed and replaced; no worker that had
    beaten is touched. (On a starved host another worker's slow start may pass the test's short
    bound too: it is killed the same way, as ``starting``.)"""
    async with running(
        WORKER_START_SECONDS=str(START_SECONDS), SAMPLEAPP_HANG_AT_START=str(tmp_path)
    ) as sample:
        connection = await _connect(sample.port)
        _, body = await asyncio.wait_for(_get(connection, "/fast"), 5)
        connection[1].close()
        dying = int(body["pid"])  # type: ignore[call-overload]
        (tmp_path / "armed").touch()
        os.kill(dying, signal.SIGKILL)  # its replacement hangs in its start
        armed_at = time.monotonic()

        def hung() -> list[dict[str, object]]:
            return [r for r in stuck_records(sample) if "in hang_at_start" in str(r["stack"])]

        while not hung():
            assert time.monotonic() - armed_at < START_SECONDS + 8, "".join(sample.log)
            await asyncio.sleep(0.05)
        record = hung()[0]
        log = "".join(sample.log)
        assert float(record["silent_seconds"]) >= START_SECONDS, record  # type: ignore[arg-type]
        assert record["starting"] is True, record
        assert "in create_app" in str(record["stack"]), record
        assert "hang_at_start" in str(record["stuck_at"]), record
        assert record["pid"] != dying, log
        assert all(r["starting"] is True for r in stuck_records(sample)), log  # no beating worker
        while record["pid"] in (current := worker_pids(sample.process.pid)) or len(current) < 2:  # replaced
            assert time.monotonic() - armed_at < START_SECONDS + 12, (current, log)
            await asyncio.sleep(0.05)
        assert (tmp_path / "taken").exists()


class _Beat:
    def __init__(self, value: float) -> None:
        self.value = value


def test_the_watchdog_judges_only_silence_it_watched(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker before its first beat is judged by the start's bound, from its spawn; a pause of the
    supervisor itself (a container paused or starved as a whole: on resuming every worker looks
    silent) restarts the count instead of killing every worker; silence past the bound while
    watching kills once."""
    from svckit import watchdog

    now = [1000.0]
    killed: list[int] = []
    monkeypatch.setattr(time, "monotonic", lambda: now[0])  # the watchdog's module reads it at call time
    monkeypatch.setattr(os, "kill", lambda pid, sig: killed.append(pid))
    dog = watchdog.Watchdog(2.0, start_seconds=4.0)
    starting, beating = _Beat(watchdog.NOT_YET), _Beat(1000.0)
    workers = [watchdog.Watched(1, starting, 1000.0), watchdog.Watched(2, beating, 990.0)]
    now[0] += 10.0  # the supervisor paused 10 s: every beat looks old, the start too
    assert dog.check(workers) == []
    now[0] += 0.1
    assert dog.check(workers) == []  # silent 0.1 s since watching resumed
    for _ in range(15):  # 1.5 s more, checked every 0.1 s: within the bound
        now[0] += 0.1
        assert dog.check(workers) == []
    for _ in range(6):
        now[0] += 0.1
        dog.check(workers)
    assert killed == [2]  # once, and not yet the worker still starting
    for _ in range(30):  # the start's bound passes too
        now[0] += 0.1
        dog.check(workers)
    assert killed == [2, 1]
