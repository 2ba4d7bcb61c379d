"""Which signed requests a service has already accepted: each one is accepted once.

A signed identity carries a nonce (``X-Identity-Nonce``, fresh for every signed request) and is valid
for ±``IDENTITY_MAX_SKEW_SECONDS``. A captured header set replayed inside that window, to the replica
that saw it or to any other, must be refused, so every replica records the nonces it accepts in Redis
(``SET NX`` with the window as expiry: the first replica to record a nonce wins) and, always, in a
window of its own memory (a replay to the same replica is refused even while Redis is away).

Redis unreachable (svckit.redisguard: down, hung, or its circuit open): a replica cannot know what the
others accepted. Unsafe methods (POST, PUT, PATCH, DELETE) are then refused — 503 with
``Retry-After``, counted as ``replay_store_unavailable`` — because a replay of one could change data
twice; safe methods (GET, HEAD) go on with this replica's own memory only, so reads keep working
through a Redis outage (a replayed read within the window discloses no more than the original did).

Batched: the nonces of requests that reach the check in the same turn of the event loop, or while a
round trip is under way, are recorded together, one pipelined round trip for all of them (no timer: a
lone request waits one turn of the loop, for the task that sends it). redis-py spends ~100 µs of CPU
per command on its own (pool, packing, parsing with timeouts); under load most of it is then shared.
Requests answered together come back together: at 8 concurrent senders to the audit service, sending
even the first of a turn at once (as before) made one round trip per request or nearly; waiting for
the turn cut the service's CPU per request by ~10% (bench/audit.py, single events).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Literal

import redis.asyncio as aioredis

from .identity import SAFE_METHODS
from .redisguard import RedisGuard

Verdict = Literal["fresh", "replay", "unavailable"]


class ReplayMemory:
    """The nonces accepted within the window: this process's own, and (with ``redis``) every replica's.

    The local window keeps at most ``max_local`` nonces (~20 MB; ~200 bytes each), the oldest dropped
    first: under more than ``max_local / window`` signed requests per second it covers less than the
    whole window, which only matters while Redis — the memory every replica shares — is away.
    """

    def __init__(
        self,
        redis: RedisGuard | None,
        service: str,
        window_seconds: float,
        *,
        max_local: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        self.service = service
        # a timestamp is accepted up to the skew either way, so a nonce can come back for twice that
        self.window = 2 * window_seconds + 1
        self.max_local = max_local
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()  # nonce → forget after (insertion order)
        self._ttl = int(self.window) + 1
        self._waiting: list[tuple[str, asyncio.Future[bool | None]]] = []  # (key, recorded?) to send
        self._sender: asyncio.Task[None] | None = None
        self._busy = False  # the sender task is queued or its round trip under way
        self.round_trips = 0  # pipelined round trips made (for tests and figures)

    def _remember_locally(self, nonce: str) -> bool:
        """False when this process accepted ``nonce`` within the window; otherwise records it."""
        now = self._clock()
        seen = self._seen
        while seen:
            oldest, until = next(iter(seen.items()))
            if until > now and len(seen) < self.max_local:
                break
            del seen[oldest]
        if nonce in seen:
            return False
        seen[nonce] = now + self.window
        return True

    async def first_use(self, nonce: str, method: str) -> Verdict:
        """``fresh`` (accept it), ``replay`` (accepted before) or ``unavailable`` (no shared memory
        for an unsafe method)."""
        if not self._remember_locally(nonce):
            return "replay"
        if self.redis is None:
            return "fresh"
        key = self.redis.key("identity-replay", self.service, nonce)
        # recorded by the sender task, with every nonce queued before it runs: the requests of one
        # turn of the loop (those answered together, say) and those that arrive during a round trip
        future: asyncio.Future[bool | None] = asyncio.get_running_loop().create_future()
        self._waiting.append((key, future))
        self._send_waiting()
        recorded = await future
        if recorded is None:
            return "fresh" if method in SAFE_METHODS else "unavailable"
        return "fresh" if recorded else "replay"

    def _send_waiting(self) -> None:
        """Those who queued behind a round trip get the next one, in a task of its own: a request that
        is cancelled must not cancel the others' round trip."""
        if self._waiting and not self._busy:
            self._busy = True
            self._sender = asyncio.create_task(self._send(), name="identity-replay")

    async def _send(self) -> None:
        """Record everything waiting in one pipelined round trip, again while more arrived meanwhile."""
        assert self.redis is not None
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    answers = await self.redis.call(self._recorder([key for key, _ in batch]))
                except BaseException:
                    for _, future in batch:  # nobody may wait forever (cancelled, or a bug)
                        if not future.done():
                            future.set_result(None)
                    raise
                self.round_trips += 1
                for index, (_, future) in enumerate(batch):
                    if not future.done():  # done: that request was cancelled meanwhile
                        future.set_result(None if answers is None else bool(answers[index]))
        finally:
            self._sender = None
            self._busy = False
            for _, future in self._waiting:  # left behind by a cancelled sender
                if not future.done():
                    future.set_result(None)
            self._waiting = []

    def _recorder(self, keys: list[str]) -> Callable[[aioredis.Redis], Awaitable[list[object]]]:
        ttl = self._ttl

        async def record(client: aioredis.Redis) -> list[object]:
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.set(key, b"1", nx=True, ex=ttl)
            answers: list[object] = await pipe.execute()
            return answers

        return record
