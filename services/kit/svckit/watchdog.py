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

What is *not* taken for stuck: a worker before its first beat (still importing its application:
13 s seen on a loaded test host; it holds no connection yet, since it accepts only once its loop
runs, and a start-up that fails stops the supervisor), and silence while the
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
from typing import Protocol

from .metrics import worker_stuck_kills

log = logging.getLogger("svckit.server")

#: a worker is killed once its event loop has not beaten for this long (WORKER_STUCK_SECONDS): what
#: the kubelet tolerates of a one-worker pod with the chart's liveness probe (3 failures 10 s apart),
#: about 100 times the worst beat gap measured with two CPU hogs on two cores under load (docs/runbook.md)
WORKER_STUCK_SECONDS = 30.0
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
    """Beat into ``heartbeat`` from this event loop for as long as the block runs (nothing when
    ``None``: one worker, no supervisor)."""
    if heartbeat is None:
        yield
        return

    async def beat() -> None:
        while True:
            heartbeat.value = time.monotonic()
            await asyncio.sleep(BEAT_SECONDS)

    task = asyncio.create_task(beat(), name="svckit-heartbeat")
    try:
        yield
    finally:
        task.cancel()


class Watchdog:
    """The supervisor's side: which workers have been silent too long, and their killing."""

    def __init__(self, stuck_seconds: float) -> None:
        self.stuck_seconds = stuck_seconds
        self._last_check = time.monotonic()
        self._watching_since = self._last_check

    def check(self, workers: list[tuple[int | None, Beat]]) -> list[int]:
        """Kill every worker (pid, heartbeat) silent for longer than the bound; their pids."""
        now = time.monotonic()
        if now - self._last_check > SUPERVISOR_GAP_SECONDS:  # the supervisor itself did not run
            self._watching_since = now
        self._last_check = now
        killed = []
        for pid, heartbeat in workers:
            beat = heartbeat.value
            if pid is None or beat == NOT_YET:
                continue
            silent = now - max(beat, self._watching_since)
            if silent <= self.stuck_seconds:
                continue
            log.error(
                "worker stuck: its event loop has not run for WORKER_STUCK_SECONDS; killing it",
                extra={
                    "pid": pid,
                    "silent_seconds": round(now - beat, 1),
                    "bound_seconds": self.stuck_seconds,
                },
            )
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            heartbeat.value = NOT_YET  # judged once: the kill is on its way
            worker_stuck_kills.inc()
            killed.append(pid)
        return killed
