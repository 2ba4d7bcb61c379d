"""Rate limits: fixed windows in Redis, counted locally between syncs.

Three limits, each a fixed window of ``RATE_LIMIT_WINDOW_SECONDS``:

* ``subject`` and ``client`` — requests per verified (issuer, subject) and (issuer, client id),
  checked after the token verified (:meth:`RateLimiter.check`);
* ``address`` — *anonymous denials* per client address (the address resolved through the trusted
  proxies): requests without a token, or whose token did not verify. Once an address has used up
  ``RATE_LIMIT_ANONYMOUS_PER_ADDRESS`` of them in a window, its further requests that are not
  carrying an already-verified token are answered 429 before any verification work is done
  (:meth:`RateLimiter.anonymous_refused`). A flood of junk tokens therefore costs one dictionary
  look-up per request instead of a signature check, and what it leaves on the audit trail is a
  count (:mod:`gateway.denials`), not a record per request.

A Redis round trip per request would cost more than the rest of the gateway's work on a cache hit,
so each worker counts locally and a supervised background task (:class:`svckit.tasks.PeriodicTask`)
pushes the deltas to Redis (one pipelined ``INCRBY`` + ``EXPIRE`` per active key every
``RATE_LIMIT_SYNC_SECONDS``), reading back the global totals. A request is refused when *global total
known at the last sync + local requests since* would exceed the limit. Within one worker the limit
is exact; across W workers/replicas a burst can overshoot by at most what the others admit before
their next sync (one interval, or sooner: the first sight of a key in a window wakes the sync at
once) — the usual trade for keeping Redis off the hot path.

When Redis is unreachable the subject and client limits fail open (requests pass) and every such
request is counted in ``gateway_ratelimit_failopen_total``; counting resumes when Redis answers
again. The address limit does not fail open: it keeps counting in the worker, so protection
degrades to per-worker instead of disappearing. The number of addresses tracked per window is
bounded (:data:`MAX_ADDRESSES`); beyond it, new addresses share one counter, which under a flood
from that many addresses soon refuses all of them — the safe side for anonymous traffic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from redis.asyncio import Redis
from svckit.clock import SYSTEM_CLOCK, Clock
from svckit.redisguard import RedisGuard
from svckit.tasks import PeriodicTask

from . import metrics
from .tokens import principal_key

MAX_ADDRESSES = 100_000
OVERFLOW_ADDRESS = "overflow"


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
        anonymous_per_address: int = 300,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.redis = redis
        self.window_seconds = window_seconds
        self.limits = {"subject": per_subject, "client": per_client, "address": anonymous_per_address}
        self.sync_seconds = sync_seconds
        self.clock = clock
        self._now = clock.time
        self._counters: dict[tuple[str, str], Counter] = {}
        self._addresses: dict[str, str] = {}  # address → its key, for the current window
        self._addresses_window = -1
        self._synced_ok = True
        self._failopen = metrics.ratelimit_failopen
        self._limited = {name: metrics.rate_limited.labels(name) for name in self.limits}
        self.task = PeriodicTask(
            "gateway-ratelimit-sync", sync_seconds, self.sync, clock=clock, max_backoff=5.0
        )

    # --- per verified principal (after authentication) -----------------------------------------

    def check(self, subject_key: str, client_key: str) -> Decision:
        """Admit or refuse one request of a verified caller (no I/O)."""
        if not self._synced_ok or not self.redis.available:
            self._failopen.inc()
            return ALLOW
        now = self._now()
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

    # --- per address, for callers without a verified token ---------------------------------------

    def anonymous_refused(self, address: str) -> Decision:
        """Has this address used up its anonymous denials for the window? (No I/O, counts nothing.)"""
        now = self._now()
        window = int(now // self.window_seconds)
        counter = self._counters.get(("address", self._address_key(address, window)))
        if counter is None or counter.window != window:
            return ALLOW
        if counter.known + counter.pending >= self.limits["address"]:
            return self._refuse("address", window, now)
        return ALLOW

    def count_anonymous(self, address: str) -> None:
        """One more anonymous denial for this address (a request without a usable token)."""
        window = int(self._now() // self.window_seconds)
        self._counter("address", self._address_key(address, window), window).pending += 1

    def _address_key(self, address: str, window: int) -> str:
        if window != self._addresses_window:
            self._addresses.clear()
            self._addresses_window = window
        key = self._addresses.get(address)
        if key is None:
            if len(self._addresses) >= MAX_ADDRESSES:
                return principal_key("address", OVERFLOW_ADDRESS)
            key = self._addresses[address] = principal_key("address", address)
        return key

    # --- shared ------------------------------------------------------------------------------------

    def _counter(self, limit_name: str, key: str, window: int) -> Counter:
        counter = self._counters.get((limit_name, key))
        if counter is None or counter.window != window:
            counter = self._counters[(limit_name, key)] = Counter(window)
            self.task.wake()  # learn the global count for this key soon, not a full interval later
        return counter

    def _refuse(self, limit_name: str, window: int, now: float) -> Decision:
        self._limited[limit_name].inc()
        retry = math.ceil((window + 1) * self.window_seconds - now)
        return Decision(False, limit_name, max(1, retry))

    async def sync(self) -> None:
        """Push local counts, learn global ones, forget finished windows."""
        window = int(self._now() // self.window_seconds)
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
            self._synced_ok = False  # local counts stay pending and are pushed at the next success
            return
        self._synced_ok = True
        for index, ((_, _), counter) in enumerate(active):
            total = results[index * 2]
            counter.pending -= pushed[index]
            if isinstance(total, int):
                counter.known = total

    async def _probe(self) -> bool:
        return await self.redis.call(lambda client: client.ping()) is not None

    def start(self) -> None:
        self.task.start()

    async def stop(self) -> None:
        """End the sync task and push what is left (bounded: Redis calls are)."""
        await self.task.stop(timeout=2.0)
        await self.task.run_once()
