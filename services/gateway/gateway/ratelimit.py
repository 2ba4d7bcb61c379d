"""Per-subject and per-client rate limits: fixed windows in Redis, counted locally between syncs.

A Redis round trip per request would cost more than the rest of the gateway's work on a cache hit,
so each worker counts locally and a background task pushes the deltas to Redis (one pipelined
``INCRBY`` + ``EXPIRE`` per active key every ``RATE_LIMIT_SYNC_SECONDS``), reading back the global
totals. A request is refused when *global total known at the last sync + local requests since* would
exceed the limit. Within one worker the limit is exact; across W workers/replicas a burst can
overshoot by at most what the others admit before their next sync (one interval, or sooner: the first
sight of a key in a window wakes the sync at once) — the usual trade for keeping Redis off the hot path.

When Redis is unreachable the limiter fails open (requests pass) and every such request is counted
in ``gateway_ratelimit_failopen_total``; counting resumes when Redis answers again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass

from redis.asyncio import Redis
from svckit.redisguard import RedisGuard

from . import metrics

log = logging.getLogger("gateway.ratelimit")


@dataclass(slots=True)
class Counter:
    window: int
    pending: int = 0  # admitted here, not yet pushed to Redis
    known: int = 0  # global total at the last sync (includes what we pushed)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: str = ""
    retry_after: int = 0


ALLOW = Decision(True)


class RateLimiter:
    def __init__(
        self,
        redis: RedisGuard,
        *,
        window_seconds: int,
        per_subject: int,
        per_client: int,
        sync_seconds: float,
    ) -> None:
        self.redis = redis
        self.window_seconds = window_seconds
        self.limits = {"subject": per_subject, "client": per_client}
        self.sync_seconds = sync_seconds
        self._counters: dict[tuple[str, str], Counter] = {}
        self._synced_ok = True
        self._task: asyncio.Task[None] | None = None
        self._new_key = asyncio.Event()
        self._stopping = False
        self._failopen = metrics.ratelimit_failopen
        self._limited = {name: metrics.rate_limited.labels(name) for name in self.limits}

    def check(self, subject_key: str, client_key: str) -> Decision:
        """Admit or refuse one request (no I/O)."""
        if not self._synced_ok or not self.redis.available:
            self._failopen.inc()
            return ALLOW
        now = time.time()
        window = int(now // self.window_seconds)
        subject = self._counter("subject", subject_key, window)
        if subject.known + subject.pending >= self.limits["subject"]:
            return self._refuse("subject", window, now)
        if client_key:
            client = self._counter("client", client_key, window)
            if client.known + client.pending >= self.limits["client"]:
                return self._refuse("client", window, now)
            client.pending += 1
        subject.pending += 1
        return ALLOW

    def _counter(self, limit_name: str, key: str, window: int) -> Counter:
        counter = self._counters.get((limit_name, key))
        if counter is None or counter.window != window:
            counter = self._counters[(limit_name, key)] = Counter(window)
            self._new_key.set()  # learn the global count for this key soon, not a full interval later
        return counter

    def _refuse(self, limit_name: str, window: int, now: float) -> Decision:
        self._limited[limit_name].inc()
        retry = math.ceil((window + 1) * self.window_seconds - now)
        return Decision(False, limit_name, max(1, retry))

    async def sync(self) -> None:
        """Push local counts, learn global ones, forget finished windows."""
        window = int(time.time() // self.window_seconds)
        stale = [key for key, counter in self._counters.items() if counter.window != window]
        for key in stale:
            del self._counters[key]
        active = list(self._counters.items())
        if not active:
            self._synced_ok = self.redis.available or await self._probe()
            return
        pushed = [counter.pending for _, counter in active]
        ttl = self.window_seconds * 2

        async def run(client: Redis) -> list[object]:
            pipe = client.pipeline(transaction=False)
            for (limit_name, key), counter in active:
                redis_key = self.redis.key("gateway", "rl", limit_name, key, str(counter.window))
                pipe.incrby(redis_key, counter.pending)
                pipe.expire(redis_key, ttl)
            return list(await pipe.execute())

        results = await self.redis.call(run)
        if results is None:
            self._synced_ok = False
            return
        self._synced_ok = True
        for index, ((_, _), counter) in enumerate(active):
            total = results[index * 2]
            counter.pending -= pushed[index]
            if isinstance(total, int):
                counter.known = total

    async def _probe(self) -> bool:
        return await self.redis.call(lambda client: client.ping()) is not None

    async def _loop(self) -> None:
        while not self._stopping:
            # wait_for is not used for the pause: in Python 3.11 it can swallow a cancellation that
            # races with its timeout, which would make stop() wait forever
            waiter = asyncio.ensure_future(self._new_key.wait())
            await asyncio.wait({waiter}, timeout=self.sync_seconds)
            waiter.cancel()
            self._new_key.clear()
            if self._stopping:
                return
            try:
                await self.sync()
            except Exception:  # never let the sync loop die
                log.exception("rate-limit sync failed")

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.ensure_future(self._loop())

    async def stop(self) -> None:
        """End the sync loop (by flag, then by cancellation if it is stuck) and push what is left."""
        self._stopping = True
        self._new_key.set()
        if self._task is not None:
            await asyncio.wait({self._task}, timeout=2.0)
            if not self._task.done():
                self._task.cancel()
                await asyncio.wait({self._task}, timeout=1.0)
        try:
            await self.sync()
        except Exception:
            log.debug("final rate-limit sync failed", exc_info=True)
