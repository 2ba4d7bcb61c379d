"""Rate limits: sliding windows estimated from two fixed windows in Redis, counted locally between syncs.

Three limits, each over a sliding window of ``RATE_LIMIT_WINDOW_SECONDS``:

* ``subject`` and ``client`` — requests per verified (issuer, subject) and (issuer, client id),
  checked after the token verified (:meth:`RateLimiter.check`);
* ``address`` — *anonymous denials* per client address (the address resolved through the trusted
  proxies): requests without a token, or whose token did not verify. Once an address has used up
  ``RATE_LIMIT_ANONYMOUS_PER_ADDRESS`` of them within one window's length, its further requests that
  are not carrying an already-verified token are answered 429 before any verification work is done
  (:meth:`RateLimiter.anonymous_refused`). A flood of junk tokens therefore costs one dictionary
  look-up per request instead of a signature check, and what it leaves on the audit trail is a
  count (:mod:`gateway.denials`), not a record per request.

Counts are kept per fixed window (``time // RATE_LIMIT_WINDOW_SECONDS``), but a request is judged on
the usual two-window estimate of the last window's length: *previous window's total * (1 - part of the
current window elapsed) + current window's count*, refused when that reaches the limit. Fixed windows
alone let a caller spend its limit at the end of one window and again at the start of the next — twice
the limit within one window's length, on every replica together; the estimate holds such a burst to
the limit (it assumes the previous window's requests were spread evenly, so it is an approximation, not
a log of every request). ``Retry-After`` says when the estimate falls below the limit again
(:meth:`RateLimiter.retry_after`).

A Redis round trip per request would cost more than the rest of the gateway's work on a cache hit,
so each worker counts locally and a supervised background task (:class:`svckit.tasks.PeriodicTask`)
pushes the deltas to Redis (one pipelined ``INCRBY`` + ``EXPIRE`` per key with something to push, a
``GET`` per key without, every ``RATE_LIMIT_SYNC_SECONDS``), reading back the global totals of the
current window and, until every replica has pushed its share of it, of the previous one. A request is
refused when the estimate from *global totals known at the last sync + local requests since* would
reach the limit. Within one worker the limit is exact; across W workers/replicas a burst can overshoot
by at most what the others admit before their next sync (one interval, or sooner: the first sight of
a key, or of a new window, wakes the sync at once) — the usual trade for keeping Redis off the hot path.

When Redis is unreachable the subject and client limits fail open (requests pass) and every such
request is counted in ``gateway_ratelimit_failopen_total``; counting resumes when Redis answers
again. The address limit does not fail open: it keeps counting in the worker, so protection
degrades to per-worker instead of disappearing. An IPv6 address counts as its /64
(:func:`svckit.proxies.throttle_key`: a host sends from any address of it at will). The number of
addresses tracked per window is bounded (:data:`MAX_ADDRESSES`); beyond it, new addresses share one
counter, which under a flood from that many addresses soon refuses all of them — the safe side for
anonymous traffic. A worker keeps the counters of the keys it counted in the current and the
previous window (the previous one weighs in the estimate), so at most twice that many address
counters.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis
from svckit.clock import SYSTEM_CLOCK, Clock
from svckit.proxies import throttle_key
from svckit.redisguard import RedisGuard
from svckit.tasks import PeriodicTask

from . import metrics
from .tokens import principal_key

MAX_ADDRESSES = 100_000
OVERFLOW_ADDRESS = "overflow"
#: Seconds a window's Redis key outlives the two windows it is read in (the replicas' clocks differ a
#: little: a replica ahead writes a window's key early, one behind reads it as the previous one late).
TTL_MARGIN = 5


@dataclass(slots=True)
class Counter:
    """One key's counts for ``window`` and for the window before it (the estimate's two terms)."""

    window: int
    pending: int = 0  # admitted here in ``window``, not yet pushed to Redis
    known: int = 0  # global total of ``window`` at the last sync (includes what we pushed)
    before: int = 0  # global total of ``window - 1``: as known at the last sync, plus before_pending
    before_pending: int = 0  # admitted here in ``window - 1``, not yet pushed to Redis
    before_settled: bool = False  # ``before`` read once every replica had pushed its share
    counted_here: bool = False  # this worker admitted something in ``window`` (seen at a sync)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: str = ""
    retry_after: int = 0


ALLOW = Decision(True)


def roll(counter: Counter, window: int) -> None:
    """Move ``counter`` on to ``window`` in place (a sync under way still finds the object it pushed
    for): its current window becomes the previous one when adjacent, or is forgotten."""
    if counter.window == window - 1:
        counter.before = counter.known + counter.pending
        counter.before_pending = counter.pending
    else:  # more than a window ago: nothing of it is within one window's length any more
        counter.before = counter.before_pending = 0
    counter.window = window
    counter.known = counter.pending = 0
    counter.before_settled = counter.counted_here = False


def count_of(value: object) -> int:
    """A counter's value as Redis answered it: ``INCRBY``'s integer, ``GET``'s bytes, or nothing."""
    if isinstance(value, int):
        return value
    if isinstance(value, bytes | str):
        try:
            return int(value)
        except ValueError:
            return 0
    return 0


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
        # the current window, found again only when the clock leaves it (no division per request)
        self._window = -1
        self._window_start = self._window_end = 0.0
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
        return self._judge(subject_key, client_key, count=True)

    def refused(self, subject_key: str, client_key: str) -> Decision:
        """Is this verified caller already over a limit? (No I/O, counts nothing: :meth:`check`
        counts the request later.) Why: the gateway remembers each DPoP proof it accepts in Redis, a
        key per request, before the rate limit's stage; asked first, a caller over its limit makes no
        more keys than its limit admits requests (else one token filled Redis at the gateway's rate)."""
        if not self._synced_ok or not self.redis.available:
            return ALLOW  # failing open: counted once, by :meth:`check`
        return self._judge(subject_key, client_key, count=False)

    def _judge(self, subject_key: str, client_key: str, *, count: bool) -> Decision:
        now = self._now()
        if now >= self._window_end or now < self._window_start:
            self._enter_window(now)
        window = self._window
        # the previous window's share still within one window's length: 1 - part of this one elapsed
        weight = (self._window_end - now) / self.window_seconds
        subject = self._counters.get(("subject", subject_key))
        if subject is None or subject.window != window:
            subject = self._counter("subject", subject_key, window)
        if subject.before * weight + subject.known + subject.pending >= self.limits["subject"]:
            return self._refuse("subject", subject, now)
        if client_key:
            client = self._counters.get(("client", client_key))
            if client is None or client.window != window:
                client = self._counter("client", client_key, window)
            if client.before * weight + client.known + client.pending >= self.limits["client"]:
                return self._refuse("client", client, now)
            if count:
                client.pending += 1
        if count:
            subject.pending += 1
        return ALLOW

    def _enter_window(self, now: float) -> None:
        size = self.window_seconds
        self._window = window = int(now // size)
        self._window_start = float(window * size)
        self._window_end = float((window + 1) * size)

    # --- per address, for callers without a verified token ---------------------------------------

    def anonymous_refused(self, address: str) -> Decision:
        """Has this address used up its anonymous denials within one window's length? (No I/O,
        counts nothing.)"""
        now = self._now()
        if now >= self._window_end or now < self._window_start:
            self._enter_window(now)
        window = self._window
        counter = self._counters.get(("address", self._address_key(address, window)))
        if counter is None:
            return ALLOW
        if counter.window != window:
            roll(counter, window)
        weight = (self._window_end - now) / self.window_seconds
        if counter.before * weight + counter.known + counter.pending >= self.limits["address"]:
            return self._refuse("address", counter, now)
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
            # an IPv6 host's /64 is one client: else each of its addresses a fresh budget and key
            key = self._addresses[address] = principal_key("address", throttle_key(address))
        return key

    # --- shared ------------------------------------------------------------------------------------

    def _counter(self, limit_name: str, key: str, window: int) -> Counter:
        counter = self._counters.get((limit_name, key))
        if counter is None:
            counter = self._counters[(limit_name, key)] = Counter(window)
            self.task.wake()  # learn the global counts for this key soon, not a full interval later
        elif counter.window != window:
            roll(counter, window)
            self.task.wake()  # the other replicas' last pushes to the window that just ended
        return counter

    def _refuse(self, limit_name: str, counter: Counter, now: float) -> Decision:
        self._limited[limit_name].inc()
        return Decision(False, limit_name, self.retry_after(limit_name, counter, now))

    def retry_after(self, limit_name: str, counter: Counter, now: float) -> int:
        """Whole seconds until the estimate of a refused key falls below its limit, if it admits
        nothing more meanwhile (refusals are not counted): at least 1, at most two windows.

        With ``f`` the part of the current window elapsed, the estimate is
        ``before * (1 - f) + current``. While ``current`` is below the limit it gets there within this
        window, once ``f > 1 - (limit - current) / before``; otherwise only in the next window, where
        ``current`` is the previous one: ``f > 1 - limit / current``. So a count far over the limit
        (the other replicas' share, learnt at a sync) is told up to two windows, not "the window": a
        client that honours the answer is not refused again for retrying too early.
        """
        size = self.window_seconds
        limit = self.limits[limit_name]
        current = counter.known + counter.pending
        if current < limit:  # refused, so before * (1 - f) >= limit - current > 0
            below_at = size - (limit - current) * size / counter.before
        else:
            below_at = 2 * size - limit * size / current
        # strictly after: at ``below_at`` itself the estimate is the limit, still refused
        wait = int(below_at - (now - counter.window * size)) + 1
        return max(1, min(wait, 2 * size))

    async def sync(self) -> None:
        """Push local counts of both windows, learn global ones, forget what is out of sight.

        Per key: ``INCRBY`` + ``EXPIRE`` for what was admitted here since the last sync, or a ``GET``
        when nothing was; the previous window's key likewise until it has settled (read at least two
        intervals into the window: every replica's first sync of the window pushed its last share of
        the one before). Each window's key lives two windows (plus :data:`TTL_MARGIN`) from its last
        write: it is read as the current window, then as the previous one.
        """
        size = self.window_seconds
        now = self._now()
        window = int(now // size)
        settling = now - window * size >= 2 * self.sync_seconds
        for entry, counter in list(self._counters.items()):
            if counter.window == window:
                continue
            if counter.window == window - 1 and (counter.counted_here or counter.pending):
                roll(counter, window)  # still weighs in this window; learn this window's total too
            else:
                # out of sight, or only the other replicas' business: the keys kept are those this
                # worker counted in the last two windows (a request brings one back, learnt at once)
                del self._counters[entry]
        active = list(self._counters.items())
        if not active:
            self._synced_ok = self.redis.available or await self._probe()
            return
        ttl = size * 2 + TTL_MARGIN
        # per counter: its pushes, and where its answers are in the pipeline's results (-1: not asked)
        plan: list[tuple[Counter, int, int, int, int, int]] = []
        commands: list[tuple[str, int]] = []  # (Redis key, count to add: 0 → GET)
        position = 0
        for (limit_name, key), counter in active:
            current = self.redis.key("gateway", "rl", limit_name, key, str(counter.window))
            pushed = counter.pending
            if pushed:
                counter.counted_here = True
            commands.append((current, pushed))
            current_at = position
            position += 2 if pushed else 1
            before_pushed, before_at = counter.before_pending, -1
            if before_pushed or not counter.before_settled:
                previous = self.redis.key("gateway", "rl", limit_name, key, str(counter.window - 1))
                commands.append((previous, before_pushed))
                before_at = position
                position += 2 if before_pushed else 1
            plan.append((counter, counter.window, pushed, current_at, before_pushed, before_at))

        async def run(client: Redis) -> list[object]:
            pipe = client.pipeline(transaction=False)
            for redis_key, count in commands:
                if count:
                    pipe.incrby(redis_key, count)
                    pipe.expire(redis_key, ttl)
                else:
                    pipe.get(redis_key)  # nothing to add: no write, no key made for nothing
            return list(await pipe.execute())

        results = await self.redis.call(run)
        if results is None:
            self._synced_ok = False  # local counts stay pending and are pushed at the next success
            return
        self._synced_ok = True
        for counter, pushed_window, pushed, current_at, before_pushed, before_at in plan:
            total = count_of(results[current_at])
            if counter.window == pushed_window:
                counter.pending -= pushed
                counter.known = total
                if before_at >= 0:
                    counter.before_pending -= before_pushed
                    counter.before = count_of(results[before_at]) + counter.before_pending
                    counter.before_settled = settling
            elif counter.window == pushed_window + 1:  # a request rolled it on while we waited
                counter.before_pending -= pushed
                counter.before = total + counter.before_pending

    async def _probe(self) -> bool:
        return await self.redis.call(lambda client: client.ping()) is not None

    def start(self) -> None:
        self.task.start()

    async def stop(self) -> None:
        """End the sync task and push what is left (bounded: Redis calls are)."""
        await self.task.stop(timeout=2.0)
        await self.task.run_once()
