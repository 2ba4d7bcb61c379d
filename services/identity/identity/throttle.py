"""Throttling of failed sign-ins per user name and per client address.

Counters live in Redis (shared by every replica, losable). When Redis is unreachable the limiter
falls back to an in-process fixed-window counter with the same limits, so protection degrades to
per-replica instead of disappearing, and sign-in keeps working.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("identity.throttle")


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: int = 0
    scope: str = ""


class _LocalWindows:
    """Fixed windows in a dict; stale entries are dropped as the dict is touched."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._counts: dict[str, tuple[int, float]] = {}
        self._max_entries = max_entries

    def get(self, key: str) -> tuple[int, int]:
        count, expires = self._counts.get(key, (0, 0.0))
        now = time.monotonic()
        if expires <= now:
            return 0, 0
        return count, int(expires - now) + 1

    def incr(self, key: str, window: int) -> None:
        now = time.monotonic()
        count, expires = self._counts.get(key, (0, 0.0))
        if expires <= now:
            count, expires = 0, now + window
        self._counts[key] = (count + 1, expires)
        if len(self._counts) > self._max_entries:
            self._counts = {k: v for k, v in self._counts.items() if v[1] > now}

    def reset(self, key: str) -> None:
        self._counts.pop(key, None)


class LoginThrottle:
    def __init__(
        self,
        redis: Redis | None,
        prefix: str,
        *,
        max_per_user: int,
        max_per_address: int,
        window_seconds: int,
        name: str = "login-fail",
    ) -> None:
        self.redis = redis
        self.prefix = f"{prefix}identity:{name}:"
        self.max_per_user = max_per_user
        self.max_per_address = max_per_address
        self.window = window_seconds
        self.local = _LocalWindows()

    def _keys(self, username: str, address: str) -> tuple[str, str]:
        # Hash the user name so the Redis key space does not list who tried to sign in.
        user = hashlib.sha256(username.strip().lower().encode()).hexdigest()[:32]
        return (f"{self.prefix}user:{user}", f"{self.prefix}addr:{address}")

    async def check(self, username: str, address: str) -> Verdict:
        user_key, addr_key = self._keys(username, address)
        counts = await self._get(user_key, addr_key)
        (user_count, user_ttl), (addr_count, addr_ttl) = counts
        if addr_count >= self.max_per_address:
            return Verdict(False, max(addr_ttl, 1), "address")
        if user_count >= self.max_per_user:
            return Verdict(False, max(user_ttl, 1), "user")
        return Verdict(True)

    async def failed(self, username: str, address: str) -> None:
        user_key, addr_key = self._keys(username, address)
        if self.redis is not None:
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for key in (user_key, addr_key):
                        pipe.incr(key)
                        pipe.expire(key, self.window, nx=True)
                    await pipe.execute()
                return
            except (RedisError, OSError) as exc:
                log.warning("redis unavailable, throttling in process", extra={"error": str(exc)})
        self.local.incr(user_key, self.window)
        self.local.incr(addr_key, self.window)

    async def succeeded(self, username: str, address: str) -> None:
        user_key, _ = self._keys(username, address)
        self.local.reset(user_key)
        if self.redis is not None:
            with contextlib.suppress(RedisError, OSError):
                await self.redis.delete(user_key)

    async def _get(self, user_key: str, addr_key: str) -> list[tuple[int, int]]:
        local = [self.local.get(user_key), self.local.get(addr_key)]
        if self.redis is None:
            return local
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in (user_key, addr_key):
                    pipe.get(key)
                    pipe.ttl(key)
                values = await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("redis unavailable, throttling in process", extra={"error": str(exc)})
            return local
        remote = [
            (int(values[0] or 0), int(values[1] or 0)),
            (int(values[2] or 0), int(values[3] or 0)),
        ]
        # Failures counted locally while Redis was down still count.
        return [max(r, lc) for r, lc in zip(remote, local, strict=True)]
