"""A clock that moves only when the test says so (:class:`svckit.clock.Clock` for tests).

``advance(seconds)`` moves wall and monotonic time together and wakes every ``sleep()`` whose
deadline has come, in deadline order. The woken coroutines run at the event loop's next turns;
:meth:`FakeClock.tick` advances and then lets them run, which is what most async tests want::

    clock = FakeClock()
    cache = JwksCache(..., clock=clock)
    await clock.tick(601)        # the keys' max-age has passed: no real waiting
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time

#: 2023-11-14T22:13:20Z: a fixed, obviously artificial wall-clock start (tokens made for tests use it)
DEFAULT_START = 1_700_000_000.0


class FakeClock:
    def __init__(self, start: float = DEFAULT_START, monotonic: float = 10_000.0) -> None:
        self._wall = float(start)
        self._mono = float(monotonic)
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    def set_time(self, wall: float) -> None:
        """Jump the wall clock (as NTP may) without moving the monotonic clock."""
        self._wall = float(wall)

    def advance(self, seconds: float) -> None:
        """Move both clocks forward and wake the sleepers whose time has come."""
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        self._wall += seconds
        self._mono += seconds
        while self._sleepers and self._sleepers[0][0] <= self._mono:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)

    async def tick(self, seconds: float = 0.0, *, turns: int = 20) -> None:
        """Let running tasks reach their next ``sleep()``, ``advance(seconds)``, let the woken ones run.

        (``turns`` event-loop turns on either side: enough for code that awaits only the clock and
        in-process futures; code waiting for real I/O needs a real wait as well.)
        """
        for _ in range(turns):
            await asyncio.sleep(0)
        self.advance(seconds)
        for _ in range(turns):
            await asyncio.sleep(0)

    @property
    def sleepers(self) -> int:
        """How many ``sleep()`` calls are waiting (cancelled ones excluded)."""
        return sum(1 for _, _, future in self._sleepers if not future.done())

    def sleeping(self, at_most: float) -> int:
        """How many ``sleep()`` calls are waiting with at most ``at_most`` seconds left: one task's short
        pause (a back-off) told apart from another task's long one on the same clock (its interval),
        where :attr:`sleepers` > 0 holds as soon as either sleeps."""
        return sum(
            1
            for deadline, _, future in self._sleepers
            if not future.done() and deadline - self._mono <= at_most
        )

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._mono + seconds, next(self._order), future))
        await future


class SkewedClock:
    """The real clocks, with the wall clock ``offset`` seconds off: one replica among others whose
    NTP left them a little apart. Real time passes (Redis expiries, database ``now()``), so the
    parts of a test that run against real servers see each replica's view of the same moment."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def time(self) -> float:
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
