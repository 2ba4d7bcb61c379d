"""Redis access that never holds a request hostage.

Redis only holds losable state (JWKS copies, rate-limit counters). Every call is bounded by a short
socket timeout, and after a failure the guard skips Redis for ``retry_seconds`` instead of paying a
timeout per request while it is down ("circuit open"). Callers get ``None`` / ``False`` and carry on.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

log = logging.getLogger("gateway.redis")

T = TypeVar("T")


class RedisGuard:
    def __init__(self, url: str, prefix: str, *, timeout: float, retry_seconds: float) -> None:
        self.prefix = prefix
        self.retry_seconds = retry_seconds
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry_on_timeout=False,
            # no client-side retries: redis-py retries connection errors with exponential backoff by
            # default, which turns an outage into seconds of waiting per call; the guard's circuit is
            # the retry policy here
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            max_connections=64,
        )
        self._down_until = 0.0

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def call(self, operation: Callable[[aioredis.Redis], Awaitable[T]]) -> T | None:
        """Run ``operation`` unless Redis is known to be down; ``None`` when it fails."""
        if not self.available:
            return None
        try:
            result = await operation(self.client)
        except (RedisError, OSError, TimeoutError) as exc:
            if self.available:
                log.warning("redis unavailable, continuing without it", extra={"error": type(exc).__name__})
            self._down_until = time.monotonic() + self.retry_seconds
            return None
        return result

    async def close(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self.client.aclose()
