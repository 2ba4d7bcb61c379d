"""What a read of the trail on request may hold: a turn among a few, and a time limit.

The audit service's pool is shared by ingestion (every service's audited writes wait on it), the
background verifier, the checkpoint signer and the readers of ``GET /audit/*``. A reader can make a
read cost what it likes — a listing window of years, a verification of a trail of millions of
records — so each kind of read on request takes a :class:`ReadBound`:

* a **turn** among ``turns`` (:class:`Turns`), waited for at most ``wait`` seconds; without one the
  read is refused (:class:`Busy`, 503 with ``Retry-After``) before it takes a connection. A bound
  ``within`` another takes a turn of that one too: verifications are listings' share of the pool as
  well, so ``AUDIT_READ_CONCURRENCY`` (held below ``DB_POOL_MAX``) bounds every read on request;
* a **time limit**: each statement runs under ``SET LOCAL statement_timeout`` (:attr:`ReadBound.setting`,
  which the read sends itself, with whatever else it sets); with ``whole`` the read as a whole too
  (a verification is one statement per batch of a cursor: its statements are short, the walk is not).
  A read stopped by its limit is :class:`TooLong`.

Both refusals are counted in the bound's ``refused`` counter by reason (``busy``, ``too_long``): a
refusal is a reader's, never a failure of the database, and the operator sees which bound said no.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator

import asyncpg
from prometheus_client import Counter

#: Retry-After of a refusal for want of a turn, at least (a turn may end any moment)
MIN_RETRY_AFTER = 2


class Refused(Exception):
    """A read on request not served (see the subclasses)."""


class TooLong(Refused):
    """The read ran into its time limit and was stopped: the same read would be stopped again."""

    def __init__(self, what: str, seconds: float) -> None:
        super().__init__(f"the {what} took longer than {seconds:g} s")
        self.seconds = seconds


class Busy(Refused):
    """Every turn stayed taken for as long as the read may wait: retry after ``retry_after`` s.
    ``holders``: what holds the turns ("listing", or "verification" for a verification's own)."""

    def __init__(self, what: str, holders: str, turns: int, retry_after: int) -> None:
        super().__init__(f"the {what} was not started: every {holders} turn ({turns}) is taken")
        self.what = what
        self.holders = holders
        self.turns = turns
        self.retry_after = retry_after


class Turns:
    """At most ``size`` holders at once, each for at most ``seconds`` (their reads' limit): what a
    refused caller is told to wait (:meth:`retry_after`) follows from when the running ones began."""

    def __init__(self, size: int, seconds: float) -> None:
        self.size = size
        self.seconds = seconds
        self._free = asyncio.Semaphore(size)
        self._started: list[float] = []  # monotonic start of each turn held

    def retry_after(self) -> int:
        """Seconds until the oldest running read must have ended (at least :data:`MIN_RETRY_AFTER`)."""
        if not self._started:
            return MIN_RETRY_AFTER
        left = min(self._started) + self.seconds - time.monotonic()
        return max(MIN_RETRY_AFTER, math.ceil(left))

    @contextlib.asynccontextmanager
    async def take(self, wait: float) -> AsyncIterator[bool]:
        """Hold a turn for the block (yields True), or yield False when none came within ``wait``
        seconds (0: only a free one)."""
        try:
            if wait > 0:
                async with asyncio.timeout(wait):
                    await self._free.acquire()
            elif self._free.locked():
                raise TimeoutError
            else:
                await self._free.acquire()  # free: returns at once
        except TimeoutError:
            yield False
            return
        started = time.monotonic()
        self._started.append(started)
        try:
            yield True
        finally:
            self._started.remove(started)
            self._free.release()


class ReadBound:
    """One kind of read on request (``what``: "listing", "verification"), bounded as the module says."""

    def __init__(
        self,
        what: str,
        turns: Turns,
        *,
        wait: float,
        refused: Counter,
        within: ReadBound | None = None,
        whole: bool = False,
    ) -> None:
        self.what = what
        self.turns = turns
        self.seconds = turns.seconds
        self.wait = wait
        self.refused = refused
        self.within = within
        self.whole = whole

    @property
    def setting(self) -> str:
        """The read's ``statement_timeout`` (for ``set_config('statement_timeout', $n, true)``)."""
        return f"{max(1, round(self.seconds * 1000))}ms"

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[None]:
        """The block as one read: its turns taken (else :class:`Busy`), its time limited (else
        :class:`TooLong`). A statement cancelled sooner than the limit was cancelled by someone else
        (an operator): that propagates as the database's failure it is. A whole read's limit counts
        from the request's arrival, the wait for its turns included: a verification that waited for
        a listing turn (up to the read timeout) and then walked for its whole limit reached the
        gateway's upstream timeout (a 504 instead of the 422 it was promised)."""
        arrived = time.monotonic()
        async with self._turns():
            started = time.monotonic()
            left = self.seconds - (started - arrived)
            try:
                async with asyncio.timeout(max(left, 0.001) if self.whole else None) as limit:
                    yield
            except asyncpg.QueryCanceledError:
                if time.monotonic() - started < self.seconds:
                    raise
                self.refused.labels("too_long").inc()
                raise TooLong(self.what, self.seconds) from None
            except TimeoutError:
                if not limit.expired():
                    raise
                self.refused.labels("too_long").inc()
                raise TooLong(self.what, self.seconds) from None

    @contextlib.asynccontextmanager
    async def _turns(self) -> AsyncIterator[None]:
        """This bound's turn, then (if it is ``within`` another) one of the other's: always in that
        order, so two kinds of reads never wait for each other's second turn."""
        async with self.turns.take(self.wait) as mine:
            if not mine:
                self._busy(self)
            if self.within is None:
                yield
                return
            async with self.within.turns.take(self.within.wait) as shared:
                if not shared:
                    self._busy(self.within)
                yield

    def _busy(self, holder: ReadBound) -> None:
        self.refused.labels("busy").inc()
        turns = holder.turns
        raise Busy(self.what, holder.what, turns.size, turns.retry_after())
