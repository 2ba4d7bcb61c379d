"""A process's replay window written back into Redis once Redis answers again.

Both replay checks — DPoP proofs (:class:`svckit.dpop.ReplayGuard`) and signed requests
(:class:`svckit.replay.ReplayMemory`) — keep a local window beside Redis's ``SET NX``. What a process
accepted while Redis was away was never in Redis, and what it accepted through Redis is gone when
Redis comes back empty (a restart without persistence, as the chart's Redis runs). Without a rewrite
an outage lasted a window longer than itself: a captured proof or request could be replayed once to
every *other* replica for the rest of its window after Redis was back (the chaos hunt of the fault
stack saw both).

So a check that finds Redis unavailable (or whose connection Redis closed) calls
:meth:`WindowRewrite.schedule`; a task then waits until the guard's circuit lets calls through
again and writes every live entry back — ``SET NX`` with the entry's remaining time, pipelined
:attr:`WindowRewrite.BATCH` at a time (round trips that let requests run in between: ~43 µs of CPU an
entry, once per outage) — and goes round once more when Redis was away again meanwhile. One class for
both checks, so that what they promise after an outage cannot drift apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import redis.asyncio as aioredis

from .redisguard import RedisGuard

log = logging.getLogger("svckit.windowrewrite")


class WindowRewrite:
    """Writes ``window()`` — (Redis key, until) pairs, ``until`` by ``clock`` — back into Redis
    after an outage; :meth:`schedule` when a call found Redis unavailable."""

    #: entries per pipelined round trip
    BATCH = 1000

    def __init__(
        self,
        redis: RedisGuard,
        window: Callable[[], Iterable[tuple[str, float]]],
        clock: Callable[[], float],
        *,
        name: str,
        message: str,
    ) -> None:
        self.redis = redis
        self.window = window
        self.clock = clock
        self.name = name
        self.message = message  # the log line once the window is back in Redis
        self.due = False  # Redis was found unavailable since the window was last written back
        self.task: asyncio.Task[None] | None = None
        self.written = 0  # entries written back after outages (for tests and the log)

    def schedule(self) -> None:
        """Redis is unavailable: write the window back once it is not."""
        self.due = True
        if self.task is None or self.task.done():
            # a context of its own: not the request's that found Redis away (its id in the log line)
            self.task = asyncio.get_running_loop().create_task(
                self._run(), name=self.name, context=contextvars.Context()
            )

    async def _run(self) -> None:
        redis = self.redis
        while self.due:
            await asyncio.sleep(max(redis.retry_seconds, 0.05))
            if not redis.available:
                continue
            self.due = False
            now = self.clock()
            live = [(key, max(1, math.ceil(until - now))) for key, until in self.window() if until > now]
            written = 0
            for start in range(0, len(live), self.BATCH):
                if await redis.call(_set_once(live[start : start + self.BATCH])) is None:
                    self.due = True  # away again: the next round writes the whole window
                    break
                written += min(self.BATCH, len(live) - start)
            self.written += written
            if not self.due:
                log.info(self.message, extra={"rewrite": self.name, "entries": written})

    def cancel(self) -> None:
        """Stop a rewrite still waiting for Redis (the process is stopping: its window goes with it)."""
        task, self.task = self.task, None
        if task is not None and not task.done():
            task.cancel()

    async def close(self) -> None:
        """:meth:`cancel`, and wait for the task to end."""
        task = self.task
        self.cancel()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _set_once(keys: list[tuple[str, int]]) -> Callable[[aioredis.Redis], Awaitable[Any]]:
    async def write(client: aioredis.Redis) -> Any:
        pipe = client.pipeline(transaction=False)
        for key, ttl in keys:
            pipe.set(key, b"1", nx=True, ex=ttl)
        return await pipe.execute()

    return write
