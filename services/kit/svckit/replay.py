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
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
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
        ttl = int(self.window) + 1

        async def record(client: aioredis.Redis) -> bool:
            return bool(await client.set(key, b"1", nx=True, ex=ttl))

        recorded = await self.redis.call(record)
        if recorded is None:
            return "fresh" if method in SAFE_METHODS else "unavailable"
        return "fresh" if recorded else "replay"
