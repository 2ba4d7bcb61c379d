"""Password and client-secret hashing with Argon2id.

Parameters follow OWASP's Password Storage Cheat Sheet (m=19 MiB, t=2, p=1): about 0.1 s per
verification on the 2-core machines this runs on, against 0.75 s for argon2-cffi's RFC 9106 default,
which would make sign-in itself a denial-of-service lever. Hashes record their parameters, so
stronger settings later only need ``needs_rehash`` (checked at every successful sign-in).

Every hashing and verification runs on a pool of :data:`HASHES_AT_ONCE` threads of its own, whichever
thread asks (the sign-in form's, the token endpoint's, Authlib's workers), which waits for it. Each
takes its 19 MiB in the thread that runs it, and glibc keeps what a thread's arena held: run on the 40
threads of anyio's default pool, 40 wrong passwords sent at once left the provider ~800 MiB larger for
good — past the chart's memory limit, for a form's CSRF token and a few addresses (the throttle counts
attempts; it does not bound how many are checked at once). A semaphore alone bounded the peak, not
that: ~420 MiB stayed, spread over the arenas of every thread that had taken a turn. More at once
would not be faster anyway: the work is CPU.

The hashing threads run at the lowest priority (nice 19, :data:`HASHING_NICENESS`): the CPU they
share with the event loop goes to the loop first. Held to its CPU request (100m), the provider gave
four hashing threads and the loop equal shares: the loop had a fifth of the quota, and under a burst
of wrong client secrets ``/readyz`` took up to 1.9 s of its 3 s timeout (2.8 s on a busier host),
the kubelet's two failures in a row away from taking the provider out of its Service in the middle of
a sign-in burst. Now p99 0.5-0.8 s (p50 0.08-0.15 s, was 0.5-0.6 s); as many verifications a
second (the loop needs little). Nice is
per thread on Linux, raising it needs no privilege, and it orders the threads of one container's
cgroup only (another pod's share is the cgroup's, as before).

**Admission** (:class:`HashingQueue`, the sign-in form's checks and rehashes). Correct passwords are
not throttled, so a burst of them — a shift change, 200 people at once — was a queue nothing bounded:
each sign-in waited its turn however long the queue had grown (~14 verifications a second on a 2-core
host, ~3.5 at the chart's CPU request: 200 took a minute there, past every client's patience), held a
worker thread of anyio's 40 meanwhile (so the token endpoint's Authlib calls, refreshes that cost no
Argon2 among them, waited behind the sign-ins for a thread), and a client that had given up still had
its verification, its session and its sign-in done. Now a check waits on the event loop, not on a
thread; it is admitted only while fewer than ``PASSWORD_HASH_MAX_WAITING`` are admitted, may wait
``PASSWORD_HASH_MAX_WAIT_SECONDS`` for its turn (less than a client waits for its answer: the refusal
reaches it), and is dropped from the queue as soon as its client disconnects. What is refused is
answered 503 with ``Retry-After`` (the sign-in page, its message saying so) and counted in
``identity_password_hash_refusals_total{reason}``: ``queue_full``, ``queue_timeout``, ``client_gone``.
Client-secret checks (Authlib's worker threads, throttled per address) go to the same threads without
admission: anyio's 40 worker threads bound them, and the waiting deadline counts the time they take.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import ContextVar
from typing import Any, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from prometheus_client import Counter, Gauge

_HASHER = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)

#: the threads that run Argon2 in a process (see the module docstring): 4 times 19 MiB at most
HASHES_AT_ONCE = 4
#: the hashing threads' nice value (see the module docstring): the loop's CPU first
HASHING_NICENESS = 19
_pool: tuple[int, ThreadPoolExecutor] | None = None  # (the process id it was made in, the pool)
_pool_lock = threading.Lock()

T = TypeVar("T")


def _submit(function: Callable[..., T], *args: str) -> Future[T]:
    """``function(*args)`` queued for the hashing pool. Made on first use in each process: a pool made
    before a fork has no threads in the child."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid():
            _pool = (
                os.getpid(),
                ThreadPoolExecutor(HASHES_AT_ONCE, thread_name_prefix="argon2", initializer=_yielding),
            )
        pool = _pool[1]
    return pool.submit(function, *args)


def _on_hashing_threads(function: Callable[..., T], *args: str) -> T:
    """``function(*args)`` on the hashing pool, the calling thread waiting (never the event loop's:
    these callers run in worker threads)."""
    return _submit(function, *args).result()


def _yielding() -> None:
    """Run by each hashing thread as it starts: the lowest priority (nice is per thread on Linux)."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASHING_NICENESS)


# A hash (of "no-such-user-dummy-password"), verified against when the user does not exist, so that an
# unknown user name costs the same time as a wrong password and does not reveal which names exist.
# Written out, not hashed at import: that took ~45 ms of CPU of every start. Its parameters
# (m, t, p) must be _HASHER's, or the two costs would differ (test_identity_logic checks them).
_DUMMY_HASH = (
    "$argon2id$v=19$m=19456,t=2,p=1$AksjjCZ8M7nKhrxZLj/xXA$D2u1plV2X+FI5wsCWAPHG33jGdAVW3igjxXGoaGsJFM"
)


def hash_secret(secret: str) -> str:
    return _on_hashing_threads(_HASHER.hash, secret)


def verify_secret(stored_hash: str | None, secret: str) -> bool:
    """True when ``secret`` matches; a missing hash still spends one verification's time."""
    return _on_hashing_threads(_verified, stored_hash or "", secret)


def needs_rehash(stored_hash: str) -> bool:
    return _HASHER.check_needs_rehash(stored_hash)


def _verified(stored_hash: str, secret: str) -> bool:
    """:func:`verify_secret`'s work, in the hashing thread that runs it (``""``: no hash, the dummy's
    time spent, never a match)."""
    try:
        return _HASHER.verify(stored_hash or _DUMMY_HASH, secret) and bool(stored_hash)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


hash_refusals = Counter(
    "identity_password_hash_refusals_total",
    "Password checks and hashes of the sign-in form not done, by reason (queue_full: "
    "PASSWORD_HASH_MAX_WAITING admitted already; queue_timeout: not begun within "
    "PASSWORD_HASH_MAX_WAIT_SECONDS; client_gone: the client disconnected before its turn; in_flight: "
    "its address's throttle slots held by checks in flight all that time).",
    ["reason"],
)
QUEUE_FULL, QUEUE_TIMEOUT, CLIENT_GONE = "queue_full", "queue_timeout", "client_gone"
#: (counted by the sign-in form) the address's throttle slots were all held by checks in flight until
#: the wait ended (identity.throttle.LoginThrottle.attempt)
IN_FLIGHT = "in_flight"
for _reason in (QUEUE_FULL, QUEUE_TIMEOUT, CLIENT_GONE, IN_FLIGHT):
    hash_refusals.labels(_reason)
hash_jobs = Gauge(
    "identity_password_hash_jobs",
    "Password checks and hashes of the sign-in form admitted and not finished (waiting or running).",
    multiprocess_mode="livesum",
)


class HashingBusy(Exception):
    """Not done: the queue was full, or the turn did not come in time (503 with ``retry_after``)."""

    def __init__(self, reason: str, retry_after: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class ClientGone(Exception):
    """Not done: the client disconnected before the job's turn came (nobody reads an answer)."""


class HashingQueue:
    """Admission to the hashing threads for requests waiting on the event loop (module docstring):
    at most ``max_waiting`` admitted at once, each begun within ``max_wait_seconds`` or dropped,
    and dropped as soon as ``gone`` (an awaitable that ends when the client disconnects) ends.
    A job that has begun runs to its end (one hash: ~0.1 s)."""

    def __init__(self, max_waiting: int, max_wait_seconds: float) -> None:
        self.max_waiting = max_waiting
        self.max_wait_seconds = max_wait_seconds
        self.admitted = 0

    def retry_after(self) -> int:
        """Seconds to tell a refused client: the longest a full queue takes to drain, to twice that
        (spread: 200 people told the same second would come back as the same burst)."""
        base = max(1, math.ceil(self.max_wait_seconds))
        return base + secrets.randbelow(base + 1)

    def _refuse(self, reason: str) -> HashingBusy:
        hash_refusals.labels(reason).inc()
        return HashingBusy(reason, self.retry_after())

    async def run(
        self,
        function: Callable[..., T],
        *args: str,
        gone: Callable[[], Awaitable[object]] | None = None,
        since: float | None = None,
    ) -> T:
        """``function(*args)`` on the hashing threads, its turn awaited until ``max_wait_seconds``
        after ``since`` (``time.monotonic()``: when the request's handling began; default now)."""
        wait = self.max_wait_seconds - (0.0 if since is None else time.monotonic() - since)
        if self.admitted >= self.max_waiting:
            raise self._refuse(QUEUE_FULL)
        self.admitted += 1
        hash_jobs.inc()
        job = _submit(function, *args)
        result = asyncio.wrap_future(job)  # cancelling it cancels the job if it has not begun
        watcher = asyncio.ensure_future(gone()) if gone is not None else None
        try:
            waits: set[asyncio.Future[Any]] = {result} if watcher is None else {result, watcher}
            done, _ = await asyncio.wait(waits, timeout=max(0.0, wait), return_when=asyncio.FIRST_COMPLETED)
            if result not in done and job.cancel():  # not begun: it never will
                if watcher is not None and watcher in done:
                    hash_refusals.labels(CLIENT_GONE).inc()
                    raise ClientGone
                raise self._refuse(QUEUE_TIMEOUT)
            return await result  # done, or begun: one hash's time at most
        finally:
            job.cancel()  # this task cancelled (a shutdown) while the job waited: it is not begun either
            self.admitted -= 1
            hash_jobs.dec()
            if watcher is not None:
                if watcher.done() and not watcher.cancelled():
                    watcher.exception()  # retrieved: a receive that failed means gone as well
                watcher.cancel()

    async def verify(
        self,
        stored_hash: str | None,
        secret: str,
        gone: Callable[[], Awaitable[object]] | None = None,
        since: float | None = None,
    ) -> bool:
        """:func:`verify_secret`, admitted."""
        return await self.run(_verified, stored_hash or "", secret, gone=gone, since=since)

    async def hash(
        self, secret: str, gone: Callable[[], Awaitable[object]] | None = None, since: float | None = None
    ) -> str:
        """:func:`hash_secret`, admitted."""
        return await self.run(_HASHER.hash, secret, gone=gone, since=since)


class VerifiedSecrets:
    """Remembers successful client-secret verifications for a few minutes.

    A machine client presents the same secret on every token request; paying Argon2 each time would
    cap the token endpoint at a few requests per second per core. Only successes are cached, keyed by
    SHA-256 over the stored hash and the secret, so a rotated secret (new stored hash) or a wrong one
    still goes through Argon2. Used from Authlib's worker threads, hence the lock.
    """

    def __init__(self, ttl_seconds: float = 300.0, max_entries: int = 1024) -> None:
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    def verify(self, stored_hash: str, secret: str) -> bool:
        return self.verify_any((stored_hash,), secret)

    def verify_any(self, stored_hashes: Sequence[str], secret: str) -> bool:
        """True when ``secret`` matches one of the client's live secrets (two during a rotation's
        overlap). Each is verified, a match or not, so the time does not tell which one matched; the
        verdict is remembered for the set of hashes, so a cached success costs no Argon2 whichever it
        was, and a retired or added secret (another set) is verified again. A wrong secret costs one
        verification per live secret."""
        key = hashlib.sha256(b"\0".join(h.encode() for h in stored_hashes) + b"\0" + secret.encode()).digest()
        now = time.monotonic()
        with self._lock:
            expires = self._entries.get(key)
            if expires is not None and expires > now:
                return True
        settled = _settled.get()
        if settled is not None and key in settled:
            return settled[key]
        matches = [verify_secret(stored_hash, secret) for stored_hash in stored_hashes]  # no short cut
        ok = any(matches)
        if settled is not None:
            settled[key] = ok
        if not ok:
            return False
        with self._lock:
            self._entries[key] = now + self.ttl
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return True


#: the verdicts on the secrets this request checked already (:func:`settled_in_request`)
_settled: ContextVar[dict[bytes, bool] | None] = ContextVar("identity_settled_secrets", default=None)


@contextlib.contextmanager
def settled_in_request() -> Iterator[None]:
    """Within the block, a secret checked once (right or wrong) is not checked again: the endpoints
    check a presented client secret before they open the request's transaction, and Authlib's check
    inside it (a worker thread, with a copy of this context: the same dict) finds the verdict — so the
    Argon2 verification never runs while a pooled connection waits for it."""
    token = _settled.set({})
    try:
        yield
    finally:
        _settled.reset(token)


client_secrets = VerifiedSecrets()
