"""The supervisor's watchdog over its workers' event loops (WORKER_STUCK_SECONDS).

A worker that dies is replaced (:class:`svckit.server.Supervisor`); one that is *stuck* — its event
loop blocked by a CPU-bound bug, a deadlock, a blocking call — is not dead, and was never replaced.
The listening socket is shared, so the other workers accept every new connection: the kubelet's
probes (a fresh connection each) kept passing and the pod was never restarted, while every
connection the stuck worker had accepted — keep-alive clients, an ingress controller's pooled
upstream connections — held each request sent on it for ever (39 keep-alive connections of two
workers, all hung for the 12 s the test waited, while 545 fresh /healthz were answered in 25 ms at
most; ``services/kit/tests/test_stuck_worker.py``).

Each worker now beats from its event loop: a task writes ``time.monotonic()`` (system-wide on Linux,
so comparable across processes) into a shared double every :data:`BEAT_SECONDS`. The supervisor
kills (SIGKILL: a blocked loop would never act on SIGTERM) a worker whose last beat is older than
WORKER_STUCK_SECONDS, logs it and counts it in ``worker_stuck_kills_total``; its ordinary
replacement of a dead worker then starts another (and merges the dead one's metrics files). The
connections it held end with it — reset, or closed unanswered — so their clients fail at once and
may retry, instead of hanging.

Before the kill, the worker's threads' Python stacks are logged in the same record (``stack``, and
``stuck_at``: the event loop's innermost frame): the worker dumps them itself, from C, on the
supervisor's signal (:mod:`svckit.stacks`), so the line says *where* the loop was blocked, not only
that it was. The wait for the dump is bounded: a worker that cannot run its handler (stopped, or
starved) is killed without one (``stack_missing`` says why).

A worker before its first beat is judged by another bound, WORKER_START_SECONDS from its spawn
(default :data:`WORKER_START_SECONDS`): its start — the imports, the application factory — may take
long (13 s seen on a loaded test host), but one that hangs held its place among the workers for good,
serving nothing, since only workers that had beaten once were watched. It holds no connection yet (it
accepts only once its loop runs); a start-up that *fails* (uvicorn's exit code 3) still stops the
supervisor, since it would fail the same way again, while a hung one killed here is replaced like any
stuck worker. Not taken for stuck: silence while the
supervisor itself did not run — a host or container paused or starved as a whole would otherwise
find every worker silent on resuming, before they had a chance to beat, and kill them all. Silence
counts only from the supervisor's last regular check (it checks every 0.1 s: a gap over
:data:`SUPERVISOR_GAP_SECONDS` restarts the count for every worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from . import stacks
from .abandoned import pace
from .metrics import worker_stuck_kills
from .stacks import StackFile

log = logging.getLogger("svckit.server")

#: a worker is killed once its event loop has not beaten for this long (WORKER_STUCK_SECONDS): what
#: the kubelet tolerates of a one-worker pod with the chart's liveness probe (3 failures 10 s apart),
#: about 100 times the worst beat gap measured with two CPU hogs on two cores under load (docs/runbook.md)
WORKER_STUCK_SECONDS = 30.0
#: a worker is killed once this long has passed since its spawn without a first beat (WORKER_START_SECONDS):
#: its start — the interpreter, the imports, the application factory — hung (13 s seen on a loaded
#: test host for the gateway's start, the longest measured; docs/runbook.md)
WORKER_START_SECONDS = 60.0
#: how often a worker's event loop beats
BEAT_SECONDS = 0.25
#: a pause of the supervisor itself longer than this restarts every worker's count of silence
SUPERVISOR_GAP_SECONDS = 1.0
#: a worker that has not beaten yet
NOT_YET = 0.0


class Beat(Protocol):
    """A shared double (``multiprocessing``'s ``RawValue("d")``): the worker's last beat."""

    value: float


@contextlib.asynccontextmanager
async def beating(heartbeat: Beat | None) -> AsyncIterator[None]:
    """Beat into ``heartbeat`` from this event loop for as long as the block runs (read by the
    supervisor's watchdog and the liveness probe; ``None``: no one reads it), and into
    :data:`svckit.abandoned.pace` — whether the loop keeps up — in either case."""

    async def beat() -> None:
        while True:
            if heartbeat is not None:
                heartbeat.value = time.monotonic()
            pace.beat(BEAT_SECONDS)
            await asyncio.sleep(BEAT_SECONDS)

    task = asyncio.create_task(beat(), name="svckit-heartbeat")
    try:
        yield
    finally:
        task.cancel()


@dataclass
class Watched:
    """One worker as the watchdog sees it: its pid, its heartbeat, when it was spawned (``time.monotonic()``)
    and where it dumps its stacks (``None``: nowhere)."""

    pid: int | None
    heartbeat: Beat
    spawned_at: float
    stacks: StackFile | None = None


class Watchdog:
    """The supervisor's side: which workers have been silent too long, and their killing."""

    def __init__(self, stuck_seconds: float, start_seconds: float = WORKER_START_SECONDS) -> None:
        self.stuck_seconds = stuck_seconds
        self.start_seconds = start_seconds
        self._last_check = time.monotonic()
        self._watching_since = self._last_check
        self._judged: set[int] = set()

    def check(self, workers: list[Watched]) -> list[int]:
        """Kill every worker silent for longer than its bound — since its last beat, or since its
        spawn while it has not beaten yet — after logging its stacks; their pids."""
        now = time.monotonic()
        if now - self._last_check > SUPERVISOR_GAP_SECONDS:  # the supervisor itself did not run
            self._watching_since = now
        self._last_check = now
        self._judged &= {worker.pid for worker in workers if worker.pid is not None}
        stuck = [worker for worker in workers if self._is_stuck(worker, now)]
        if not stuck:
            return []
        asked = [w.stacks for w in stuck if w.stacks and w.pid is not None and w.stacks.ask(w.pid)]
        stacks.collect(asked)  # bounded: the kill is never held up by a worker that cannot dump
        killed = []
        for worker in stuck:
            assert worker.pid is not None
            self._log(worker, now)
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGKILL)
            self._judged.add(worker.pid)  # judged once: the kill is on its way
            worker_stuck_kills.inc()
            killed.append(worker.pid)
        self._last_check = time.monotonic()  # waiting for the dumps was no pause of the supervisor
        return killed

    def _is_stuck(self, worker: Watched, now: float) -> bool:
        if worker.pid is None or worker.pid in self._judged:
            return False
        beat = worker.heartbeat.value
        if beat == NOT_YET:
            return now - max(worker.spawned_at, self._watching_since) > self.start_seconds
        return now - max(beat, self._watching_since) > self.stuck_seconds

    def _log(self, worker: Watched, now: float) -> None:
        """One record before the kill: the worker, its silence, and where its event loop is (the
        stacks it dumped, or why there are none)."""
        beat = worker.heartbeat.value
        starting = beat == NOT_YET
        where: dict[str, object] = {"stack": None}
        if worker.stacks is None:
            where["stack_missing"] = "no dump file (not a worker of svckit's supervisor)"
        elif worker.stacks.asked_at_size is None:
            where["stack_missing"] = "the worker was not yet running svckit's code (still in its spawn)"
        else:
            dump = worker.stacks.dump()
            if dump:
                where["stack"] = stack = stacks.shown(dump)
                where["stuck_at"] = stacks.innermost(stack, worker.stacks.loop_thread())
                where["stuck_request_id"] = stacks.blocked_request(dump)
            else:
                where["stack_missing"] = (
                    f"no dump within {stacks.WAIT_SECONDS:g} s: the process did not run"
                    " (stopped, or starved of CPU)"
                )
        if starting:
            message = "worker stuck: its event loop has not run within WORKER_START_SECONDS of its start"
        else:
            message = "worker stuck: its event loop has not run for WORKER_STUCK_SECONDS"
        log.error(
            message + "; killing it",
            extra={
                "pid": worker.pid,
                "starting": starting,
                "silent_seconds": round(now - (worker.spawned_at if starting else beat), 1),
                "bound_seconds": self.start_seconds if starting else self.stuck_seconds,
                **where,
            },
        )
