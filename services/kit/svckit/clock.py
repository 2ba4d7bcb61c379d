"""Time as a dependency: code that reads clocks or waits takes a :class:`Clock`, tests pass a fake one.

Why: caches, rate limits, throttles and back-offs are rules about time. With ``time.time()`` called
inline, a test of "keys go stale after their max-age" has to really wait for the max-age, and a test
of a 15-minute throttle window cannot be written at all. With the clock injected, the same test moves
a :class:`testkit.clock.FakeClock` forward and runs in microseconds, in process.

Conventions:

* ``time()`` is wall-clock seconds since the epoch — for anything compared with a timestamp from
  outside the process (a token's ``exp``, a key set's ``fetched_at`` stored in Redis, a rate-limit
  window shared with other replicas);
* ``monotonic()`` is for durations measured inside the process (cool-downs, back-offs, deadlines);
* ``sleep()`` waits on the clock (a fake clock's sleepers wake when the test advances it).

Classes take ``clock: Clock = SYSTEM_CLOCK``. On a hot path, bind ``clock.time`` once in
``__init__`` (``self._now = clock.time``): with the system clock that is the builtin itself, so the
indirection costs nothing per call.
"""

from __future__ import annotations

import asyncio
import time as _time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock seconds since the epoch."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (only differences mean anything)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` on this clock."""
        ...


class SystemClock:
    """The real clocks: :func:`time.time`, :func:`time.monotonic`, :func:`asyncio.sleep`."""

    __slots__ = ()

    time = staticmethod(_time.time)
    monotonic = staticmethod(_time.monotonic)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK: Clock = SystemClock()
