"""One supervised periodic task for every background loop of every service.

Why one: the platform's background work — relaying the outbox, verifying the audit chain,
reconciling pending approvals, flushing the gateway's denials and metrics, syncing rate-limit
counts, refreshing signing keys — used to be a dozen hand-written ``while True`` loops, each with
its own idea of start-up, shutdown, error handling and logging. One of them dying silently, or
logging a traceback ten times a second while its database is away, is the kind of fault nobody
notices until it matters. A :class:`PeriodicTask` behaves the same everywhere:

* **start / stop**: :meth:`~PeriodicTask.start` in the lifespan; :meth:`~PeriodicTask.stop` ends a
  pause at once, lets a run in flight finish within ``stop_timeout`` and then cancels it;
* **runs**: ``func`` is awaited every ``interval`` seconds (``jitter`` spreads replicas apart).
  ``func`` returning ``True`` means "more work is waiting": it runs again at once (draining a
  backlog). :meth:`~PeriodicTask.wake` runs it now instead of at the end of the pause;
* **errors never end the loop and never become a crash loop**: an exception is logged (a warning
  naming the error for the ``expected`` kinds — a database or peer being away — a traceback for
  anything else) and the next run waits a capped exponential back-off with jitter. While backing
  off, :meth:`~PeriodicTask.wake` is ignored: the callers who wake a task (a NOTIFY per commit, a
  full queue) must not turn a back-off into hammering a service that is down. The first success
  after failures is logged once;
* **metrics**: ``background_task_runs_total{task,outcome}`` (``ok`` / ``error``) and
  ``background_task_last_success_timestamp_seconds{task}`` (the oldest among a service's live
  worker processes), so "task X has not succeeded for N intervals" is one alert rule for all tasks.

Time comes from a :class:`~svckit.clock.Clock`, so tests drive the pauses with a fake clock.

Usage::

    relay = PeriodicTask("outbox-relay", 2.0, deliver, initial_delay=0, expected=DB_ERRORS)
    relay.start()          # lifespan start
    ...
    await relay.stop()     # lifespan end
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from prometheus_client import Counter, Gauge

from .clock import SYSTEM_CLOCK, Clock

log = logging.getLogger("svckit.tasks")

runs_total = Counter(
    "background_task_runs_total",
    "Runs of a supervised background task, by task and outcome (ok, error).",
    ["task", "outcome"],
)
last_success = Gauge(
    "background_task_last_success_timestamp_seconds",
    "Unix time of the task's last successful run (the oldest among the service's live workers).",
    ["task"],
    multiprocess_mode="livemin",
)


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Capped exponential back-off with jitter (attempt 1 → up to ``base``, doubling to ``cap``).

    The delay is drawn from the upper half of the ceiling, so it grows for sure while replicas that
    failed together still spread out.
    """
    ceiling = min(cap, base * (2 ** max(0, min(attempt - 1, 30))))
    return random.uniform(ceiling / 2, ceiling)


class PeriodicTask:
    """``func`` every ``interval`` seconds, supervised (see the module docstring)."""

    def __init__(
        self,
        name: str,
        interval: float,
        func: Callable[[], Awaitable[object]],
        *,
        clock: Clock = SYSTEM_CLOCK,
        initial_delay: float | None = None,
        jitter: float = 0.0,
        expected: tuple[type[BaseException], ...] = (),
        backoff_base: float | None = None,
        max_backoff: float = 60.0,
        stop_timeout: float = 5.0,
        logger: logging.Logger | None = None,
    ) -> None:
        """
        ``initial_delay``: seconds before the first run (``None``: one interval, ``0``: at once).
        ``jitter``: each pause is ``interval * uniform(1 - jitter, 1 + jitter)``.
        ``expected``: exceptions that are conditions to wait out (logged without a traceback).
        ``backoff_base`` (default ``interval``) and ``max_backoff``: the pause after failures.
        """
        if interval <= 0:
            raise ValueError("interval must be positive")
        if not 0 <= jitter < 1:
            raise ValueError("jitter must be within [0, 1)")
        self.name = name
        self.interval = interval
        self.func = func
        self.clock = clock
        self.initial_delay = interval if initial_delay is None else initial_delay
        self.jitter = jitter
        self.expected = expected
        self.backoff_base = interval if backoff_base is None else backoff_base
        self.max_backoff = max(max_backoff, self.backoff_base)
        self.stop_timeout = stop_timeout
        self.log = logger or log
        #: consecutive failed runs (0 after a success)
        self.failures = 0
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._ok = runs_total.labels(name, "ok")
        self._error = runs_total.labels(name, "error")

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the loop (idempotent; needs a running event loop)."""
        if self.running:
            return
        self._stop.clear()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"periodic:{self.name}")
        self._task.add_done_callback(self._ended)

    def wake(self) -> None:
        """Run as soon as the current pause allows (not while backing off after a failure)."""
        self._wake.set()

    async def stop(self, timeout: float | None = None) -> None:
        """End the loop: a pause ends at once, a run in flight gets ``timeout`` seconds, then is cancelled."""
        self._stop.set()
        task, self._task = self._task, None
        if task is None:
            return
        await asyncio.wait({task}, timeout=self.stop_timeout if timeout is None else timeout)
        if not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)

    # --- the loop -------------------------------------------------------------------------------

    async def _loop(self) -> None:
        delay, wakeable = self.initial_delay, True
        while not self._stop.is_set():
            await self._pause(delay, wakeable)
            if self._stop.is_set():
                return
            again = await self.run_once()
            if self.failures:
                delay, wakeable = backoff_delay(self.failures, self.backoff_base, self.max_backoff), False
            elif again is True:
                delay, wakeable = 0.0, True
            else:
                delay, wakeable = self._next_interval(), True

    async def run_once(self) -> object:
        """One run with the task's bookkeeping (metrics, logging, failure count); never raises."""
        try:
            result = await self.func()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failures += 1
            self._error.inc()
            # the task and the error in the message too, not only in the JSON fields: a plain-text
            # reader (pytest's captured log, kubectl logs through a formatter) otherwise sees a
            # retry of something unnamed for a reason unsaid
            if isinstance(exc, self.expected):
                error = f"{type(exc).__name__}: {exc}"[:300]
                self.log.warning(
                    "background task %s failed; retrying: %s",
                    self.name,
                    error,
                    extra={"task": self.name, "error": error, "failures": self.failures},
                )
            else:
                self.log.exception(
                    "background task %s failed; retrying",
                    self.name,
                    extra={"task": self.name, "failures": self.failures},
                )
            return None
        if self.failures:
            self.log.info("background task recovered", extra={"task": self.name, "failures": self.failures})
            self.failures = 0
        self._ok.inc()
        last_success.labels(self.name).set(self.clock.time())
        return result

    def _next_interval(self) -> float:
        if not self.jitter:
            return self.interval
        return self.interval * random.uniform(1 - self.jitter, 1 + self.jitter)

    async def _pause(self, seconds: float, wakeable: bool) -> None:
        """Wait ``seconds`` on the clock, or until stopped (or woken, when ``wakeable``)."""
        if seconds <= 0:
            await asyncio.sleep(0)  # a backlog drains without starving the event loop
        else:
            loop = asyncio.get_running_loop()
            waiters = {loop.create_task(self.clock.sleep(seconds)), loop.create_task(self._stop.wait())}
            if wakeable:
                waiters.add(loop.create_task(self._wake.wait()))
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
        self._wake.clear()

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:  # a bug in the loop itself
            self.log.error("background task loop ended", extra={"task": self.name}, exc_info=task.exception())


async def stop_all(tasks: list[PeriodicTask], timeout: float | None = None) -> None:
    """Stop several tasks concurrently (shutdown waits for the slowest, not the sum)."""
    await asyncio.gather(*(task.stop(timeout) for task in tasks))
