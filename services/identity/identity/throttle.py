"""Throttling of sign-ins (per user name and per client address), of failed client authentication,
of failed token and revocation requests (per client address), and of the codes a signed-in user has
``/authorize`` issue.

Counters are fixed windows in Redis (shared by every replica, losable), through the kit's
:class:`~svckit.redisguard.RedisGuard`: bounded calls, no library retries, skipped while Redis is
down. Without Redis each replica falls back to in-process windows with the same limits, so protection
degrades to per-replica instead of disappearing, and sign-in keeps working.

Sign-in counts an attempt *before* the password is checked, in one atomic step (a Lua script in
Redis; a synchronous check-and-increment in process): concurrent guesses each take a slot or are
refused, so no burst can exceed the limits while the slow password check runs. A successful sign-in
gives its own slot back, so only failures stay counted; earlier failures are not forgiven by a success
(else a guess that happened to be right would reopen the window to more guesses). The right password
is refused too while a limit holds, until its window ends.

A client address is :func:`svckit.proxies.throttle_key`'s: an IPv6 address counts as its /64 (a host
picks any address of it at will; counted one by one, each was a fresh budget and a fresh Redis key).

Failures against one user name are limited per (user name, address), not per user name alone: a user
name is no secret, so a per-name lockout let anyone lock a person out of their own sign-in from a
single address, with a handful of wrong passwords a window. The name's failures from all addresses
together still have a limit of their own, higher, that bounds guessing spread over many addresses; to
lock someone out that way takes that many failures from at least ``all / per-user`` addresses.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis
from svckit.clock import SYSTEM_CLOCK, Clock
from svckit.proxies import throttle_key
from svckit.redisguard import RedisGuard

log = logging.getLogger("identity.throttle")

# KEYS: the counters; ARGV: window seconds, then (limit, locally counted) per key. Refuses with the
# first counter at its limit (and that counter's remaining milliseconds), else increments them all.
_ACQUIRE = """
local window = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local count = tonumber(redis.call('GET', key) or '0')
  local limit = tonumber(ARGV[2 * i])
  local local_count = tonumber(ARGV[2 * i + 1])
  if math.max(count, local_count) >= limit then
    local ttl = redis.call('PTTL', key)
    if ttl < 0 then ttl = window * 1000 end
    return {0, i, ttl}
  end
end
for _, key in ipairs(KEYS) do
  if redis.call('INCR', key) == 1 or redis.call('PTTL', key) < 0 then
    redis.call('EXPIRE', key, window)
  end
end
return {1, 0, 0}
"""

_RELEASE = """
for _, key in ipairs(KEYS) do
  if tonumber(redis.call('GET', key) or '0') > 0 then redis.call('DECR', key) end
end
return 1
"""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: int = 0
    scope: str = ""
    #: refused only for attempts still being checked in this process (none had failed): "busy, retry
    #: shortly", never "too many failed attempts" (LoginThrottle.attempt)
    in_flight: bool = False


@dataclass(frozen=True)
class Counter:
    """One counter to check: its scope name (``user``, ``address``), Redis key and limit."""

    scope: str
    key: str
    limit: int


class LocalWindows:
    """Fixed windows in a dict; stale entries are dropped as the dict grows."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK, max_entries: int = 100_000) -> None:
        self._counts: dict[str, tuple[int, float]] = {}
        self._clock = clock.monotonic
        self._max_entries = max_entries

    def get(self, key: str) -> tuple[int, int]:
        """(count, seconds left in the window)."""
        count, expires = self._counts.get(key, (0, 0.0))
        now = self._clock()
        if expires <= now:
            return 0, 0
        return count, int(expires - now) + 1

    def incr(self, key: str, window: int) -> None:
        now = self._clock()
        count, expires = self._counts.get(key, (0, 0.0))
        if expires <= now:
            count, expires = 0, now + window
        self._counts[key] = (count + 1, expires)
        if len(self._counts) > self._max_entries:
            self._sweep(now)

    def __len__(self) -> int:
        return len(self._counts)

    def _sweep(self, now: float) -> None:
        """Drop the stale entries and, when that is not enough to get back to half the cap, the
        oldest of the fresh ones. Why half: a flood of distinct keys (every attempt is counted here
        too, the mirror of Redis's count) fills the table with entries still in their window; dropping
        only stale ones would free nothing and walk the whole table again on every following count."""
        keep = self._max_entries // 2
        fresh = [(k, v) for k, v in self._counts.items() if v[1] > now]
        self._counts = dict(fresh[-keep:] if len(fresh) > keep else fresh)

    def decr(self, key: str) -> None:
        count, expires = self._counts.get(key, (0, 0.0))
        if count > 1:
            self._counts[key] = (count - 1, expires)
        else:
            self._counts.pop(key, None)

    def reset(self, key: str) -> None:
        self._counts.pop(key, None)

    def acquire(self, counters: Sequence[Counter], window: int) -> Verdict:
        """Check and count in one synchronous step (no await in between: atomic in this process)."""
        for counter in counters:
            count, left = self.get(counter.key)
            if count >= counter.limit:
                return Verdict(False, max(left, 1), counter.scope)
        for counter in counters:
            self.incr(counter.key, window)
        return Verdict(True)

    def check(self, counters: Sequence[Counter]) -> Verdict:
        for counter in counters:
            count, left = self.get(counter.key)
            if count >= counter.limit:
                return Verdict(False, max(left, 1), counter.scope)
        return Verdict(True)


class WindowCounters:
    """Fixed-window counters in Redis with the in-process fallback; the building block of both
    throttles below."""

    def __init__(self, redis: RedisGuard | None, window_seconds: int, clock: Clock = SYSTEM_CLOCK) -> None:
        self.redis = redis
        self.window = window_seconds
        self.local = LocalWindows(clock)

    async def acquire(self, counters: Sequence[Counter]) -> Verdict:
        """Refuse if any counter is at its limit, else count one on each, atomically."""
        if self.redis is not None:
            args: list[int] = [self.window]
            for counter in counters:
                args += [counter.limit, self.local.get(counter.key)[0]]
            keys = [counter.key for counter in counters]

            async def run(client: Redis) -> list[int]:
                result: list[int] = await client.eval(_ACQUIRE, len(keys), *keys, *args)
                return result

            result = await self.redis.call(run)
            if result is not None:
                allowed, index, ttl_ms = (int(value) for value in result)
                if allowed:
                    self._mirror(counters)
                    return Verdict(True)
                return Verdict(False, max(1, -(-ttl_ms // 1000)), counters[index - 1].scope)
        return self.local.acquire(counters, self.window)

    async def check(self, counters: Sequence[Counter]) -> Verdict:
        """Refuse if any counter is at its limit (counted here or, while Redis was down, locally)."""
        local = self.local.check(counters)
        if self.redis is None or not local.allowed:
            return local

        async def run(client: Redis) -> list[object]:
            async with client.pipeline(transaction=False) as pipe:
                for counter in counters:
                    pipe.get(counter.key)
                    pipe.pttl(counter.key)
                values: list[object] = await pipe.execute()
                return values

        values = await self.redis.call(run)
        if values is None:
            return local
        for i, counter in enumerate(counters):
            count, ttl_ms = int(values[2 * i] or 0), int(values[2 * i + 1] or 0)  # type: ignore[call-overload]
            if count >= counter.limit:
                return Verdict(False, max(1, -(-ttl_ms // 1000)), counter.scope)
        return Verdict(True)

    async def add(self, counters: Sequence[Counter]) -> None:
        """Count one on each counter (an attempt that already failed)."""
        if self.redis is not None:

            async def run(client: Redis) -> None:
                async with client.pipeline(transaction=False) as pipe:
                    for counter in counters:
                        pipe.incr(counter.key)
                        pipe.expire(counter.key, self.window, nx=True)
                    await pipe.execute()

            await self.redis.call(run)
        # in process whatever Redis answered: the fallback's count, or the mirror of Redis's (_mirror)
        self._mirror(counters)

    def _mirror(self, counters: Sequence[Counter]) -> None:
        """Count in process what was just counted in Redis. Why: should Redis be unavailable for the
        next attempt (a timeout on a busy node, a failover), the fallback counts on from what this
        replica took, not from zero (which let a burst have the whole limit twice). While Redis is up
        nothing changes: it compares ``max(its count, ours)`` with the limit."""
        for counter in counters:
            self.local.incr(counter.key, self.window)

    async def give_back(self, counters: Sequence[Counter]) -> None:
        """Undo one count on each counter (an attempt that turned out well)."""
        for counter in counters:
            self.local.decr(counter.key)
        if self.redis is not None:
            keys = [counter.key for counter in counters]
            await self.redis.call(lambda client: client.eval(_RELEASE, len(keys), *keys))


def _user_part(username: str) -> str:
    # Hashed, so that the Redis key space does not list who tried to sign in.
    return hashlib.sha256(username.strip().lower().encode()).hexdigest()[:32]


#: what an attempt refused for the others still being checked is told to wait (seconds)
IN_FLIGHT_RETRY_SECONDS = 2


class LoginThrottle:
    """Sign-in attempts per client address, per (user name, address) and per user name from all
    addresses, counted before the password check.

    ``max_per_user`` limits one address's failures against one user name (scope ``user``);
    ``max_per_user_all_addresses`` (default ``10 * max_per_user``) the name's failures from everywhere
    (scope ``user_all``), so that one address cannot lock a person out from every other."""

    def __init__(
        self,
        redis: RedisGuard | None,
        *,
        max_per_user: int,
        max_per_address: int,
        window_seconds: int,
        max_per_user_all_addresses: int | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.counters = WindowCounters(redis, window_seconds, clock)
        self.prefix = redis.key("identity", "login", "") if redis else "identity:login:"
        self.max_per_user = max_per_user
        self.max_per_address = max_per_address
        self.max_per_user_all_addresses = max_per_user_all_addresses or 10 * max_per_user
        self._pending: dict[str, int] = {}  # counter key → this process's attempts in flight
        self._waiters: dict[str, deque[asyncio.Future[None]]] = {}  # counter key → attempts waiting

    def _counters(self, username: str, address: str) -> tuple[Counter, Counter, Counter]:
        address = throttle_key(address)  # an IPv6 host's /64: one client, one counter
        user = _user_part(username)
        pair = hashlib.sha256(f"{user}\n{address}".encode()).hexdigest()[:32]
        return (
            Counter("address", f"{self.prefix}addr:{address}", self.max_per_address),
            Counter("user", f"{self.prefix}user-addr:{pair}", self.max_per_user),
            Counter("user_all", f"{self.prefix}user:{user}", self.max_per_user_all_addresses),
        )

    async def attempt(self, username: str, address: str, *, wait_until: float | None = None) -> Verdict:
        """Take a slot for one sign-in attempt, or refuse (429) when a limit is reached.

        With ``wait_until`` (``time.monotonic()``), a refusal by the address's counter while it holds
        attempts of this process still being checked waits for one of them to end (:meth:`settle`)
        and tries again, until then. Why: the slots an attempt takes before its check are held while
        it waits its turn for the hashing threads, so 60 right passwords at once from one address
        (an office's NAT) found the address's 20 slots taken by the others' checks and were told
        "Too many failed attempts" for the window, no attempt having failed. Refused at
        ``wait_until`` with such attempts still in flight: ``in_flight`` (busy, not failed).

        No guess gets past a limit by waiting: every try is the same atomic check-and-count. Only
        the address's counter waits: many people behind one address is an office, many attempts at
        once on one user name is no person (the name's counters refuse at once, as before).
        Attempts in flight at another replica are not seen here: their slots refuse as before."""
        counters = self._counters(username, address)
        while True:
            verdict = await self.counters.acquire(counters)
            if verdict.allowed:
                for counter in counters:
                    self._pending[counter.key] = self._pending.get(counter.key, 0) + 1
                return verdict
            key = next(c.key for c in counters if c.scope == verdict.scope)
            if wait_until is None or verdict.scope != "address" or not self._pending.get(key):
                self._wake(key, every=True)  # the slots are failures: the other waiters learn it too
                return verdict
            left = wait_until - time.monotonic()
            if left <= 0:
                return Verdict(False, IN_FLIGHT_RETRY_SECONDS, verdict.scope, in_flight=True)
            waiter = asyncio.get_running_loop().create_future()
            queue = self._waiters.setdefault(key, deque())
            queue.append(waiter)
            try:
                await asyncio.wait_for(waiter, left)
            except TimeoutError:
                return Verdict(False, IN_FLIGHT_RETRY_SECONDS, verdict.scope, in_flight=True)
            finally:
                if waiter in queue:
                    queue.remove(waiter)
                if not queue:
                    self._waiters.pop(key, None)

    async def succeeded(self, username: str, address: str) -> None:
        """The password was right (or was never checked): give this attempt's slots back (earlier
        failures stay counted)."""
        await self.counters.give_back(self._counters(username, address))

    def settle(self, username: str, address: str) -> None:
        """An allowed attempt has ended, whatever its outcome (after :meth:`succeeded` when it gave its
        slots back): no longer in flight; one attempt waiting for each of its counters tries again."""
        for counter in self._counters(username, address):
            left = self._pending.get(counter.key, 0) - 1
            if left > 0:
                self._pending[counter.key] = left
            else:
                self._pending.pop(counter.key, None)
            self._wake(counter.key, every=False)

    def _wake(self, key: str, *, every: bool) -> None:
        queue = self._waiters.get(key)
        while queue:
            waiter = queue.popleft()
            if not waiter.done():
                waiter.set_result(None)
                if not every:
                    return


class FailureThrottle:
    """Failures per client address only: failed client authentication at the token and revocation
    endpoints (``client-auth-fail``), and failed token and revocation requests whatever failed
    (``token-fail``: :meth:`take` before a DPoP proof is remembered, :meth:`give_back` when the
    request did not fail; :mod:`identity.endpoints`).

    A client id is no secret, so counting per client would let anyone lock a client out. Successful
    requests are not counted. A request that presents a client secret takes a slot *before* the
    secret is checked (:meth:`begin`, atomically, as sign-in does) and gives it back when it did not
    fail (:meth:`end`): a wrong secret costs an Argon2 verification while the request holds its
    database transaction, and a burst of concurrent guesses all passed a check made before any of
    them had failed. A request without a secret costs no such work: its address is only checked
    before, and a failure counted after.
    """

    def __init__(
        self,
        redis: RedisGuard | None,
        name: str,
        *,
        max_per_address: int,
        window_seconds: int,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.counters = WindowCounters(redis, window_seconds, clock)
        self.prefix = redis.key("identity", name, "") if redis else f"identity:{name}:"
        self.max_per_address = max_per_address

    def _counter(self, address: str) -> Counter:
        # an IPv6 host's /64 is one client: else each of its addresses a new budget and a new key
        return Counter("address", f"{self.prefix}addr:{throttle_key(address)}", self.max_per_address)

    async def check(self, address: str) -> Verdict:
        return await self.counters.check([self._counter(address)])

    async def failed(self, address: str) -> None:
        await self.counters.add([self._counter(address)])

    async def take(self, address: str) -> Verdict:
        """Count this attempt now, atomically, or refuse (429) an address at its limit; an attempt
        that turns out well gives its slot back (:meth:`give_back`), so only failures stay counted
        and a burst of concurrent attempts gets no more than the limit."""
        return await self.counters.acquire([self._counter(address)])

    async def give_back(self, address: str) -> None:
        await self.counters.give_back([self._counter(address)])

    async def begin(self, address: str, *, presents_secret: bool) -> Verdict:
        """Before a client authenticates: refuse (429) an address at its limit; with a secret, count
        this attempt now."""
        if presents_secret:
            return await self.take(address)
        return await self.check(address)

    async def end(self, address: str, *, presents_secret: bool, failed: bool) -> None:
        """After it: an attempt with a secret that did not fail gives its slot back; one without a
        secret that failed is counted."""
        if presents_secret and not failed:
            await self.give_back(address)
        elif failed and not presents_secret:
            await self.failed(address)


class IssueLimit:
    """Authorization responses ``/authorize`` issues per signed-in user and window: codes (each a row
    kept until a day after it expired, to recognise a replay) and implicit answers (each access token
    a row of the ledger). A signed-in user (or a script holding a session cookie) could otherwise
    have them issued at request rate. Counted per (issuer, subject), hashed, atomically as sign-ins
    are; a refused request is not counted.

    Requests a browser marks ``Sec-Fetch-Site: cross-site`` have a budget of their own: any page the
    person visits can navigate their browser to ``/authorize`` (a popup it keeps re-navigating; the
    SameSite=Lax cookie goes along), and with one budget it could spend theirs in seconds and have the
    provider refuse their own app's sign-ins and silent renewals (served from the provider's site) for
    the rest of the window. Such pages can now spend only the cross-site budget; apps on other sites
    (third parties) share it with them."""

    def __init__(
        self,
        redis: RedisGuard | None,
        issuer: str,
        *,
        max_per_user: int,
        window_seconds: int,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.counters = WindowCounters(redis, window_seconds, clock)
        self.prefix = redis.key("identity", "authorize", "") if redis else "identity:authorize:"
        self.issuer = issuer
        self.max_per_user = max_per_user

    async def take(self, subject: str, *, cross_site: bool = False) -> Verdict:
        """One issue for ``subject``, or a refusal (with ``retry_after``) when its budget (the
        cross-site one for a cross-site request) is spent."""
        digest = hashlib.sha256(f"{self.issuer}\n{subject}".encode()).hexdigest()[:32]
        key = f"{self.prefix}{'cross-site-user' if cross_site else 'user'}:{digest}"
        return await self.counters.acquire([Counter("user", key, self.max_per_user)])
