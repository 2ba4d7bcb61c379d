"""Redis access that never holds a request hostage.

Redis only holds losable state (JWKS copies, rate-limit and sign-in counters, replay windows, the
fan-out of revocations). Every call is bounded by a short socket timeout, and after a failure the
guard skips Redis for ``retry_seconds`` instead of paying a timeout per request while it is down
("circuit open"). Callers get ``None`` and carry on with what they do without Redis.

redis-py's own retries are switched off: by default it retries connection errors with exponential
back-off, which turns an outage into seconds of waiting per call. The guard's circuit is the retry
policy. A hung server (accepting connections, never answering) costs one ``timeout`` per
``retry_seconds``, not one per call. A call that failed for want of the server (not a refusal such as
``NOPERM``) also drops the pool's idle connections: they lead to the same server, and kept, each
failed once at its first use after Redis was back, reopening the circuit for ``retry_seconds`` each.

Every key goes through :meth:`RedisGuard.key`, so ``REDIS_KEY_PREFIX`` separates deployments (and
test runs) sharing one server.
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
from redis.exceptions import RedisError, ResponseError

from .settings import RedisSettings

log = logging.getLogger("svckit.redis")

T = TypeVar("T")

#: What a failed Redis call raises: protocol and connection errors, socket errors, timeouts.
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
#: connections a guard's client opens at most, unless told otherwise (svckit.fdlimit counts them)
MAX_CONNECTIONS = 64


def bounded_client(
    url: str, *, timeout: float, connect_timeout: float | None = None, max_connections: int = MAX_CONNECTIONS
) -> aioredis.Redis:
    """A client whose every call fails after ``timeout`` seconds, with no library retries."""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=connect_timeout or timeout,
        retry_on_timeout=False,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
        max_connections=max_connections,
        # no CLIENT SETINFO on connect: a round trip per connection, and a command the services'
        # Redis users are not granted (svckit.redisacl)
        driver_info=None,
    )


class RedisGuard:
    """A bounded Redis client plus a circuit: ``call`` returns ``None`` while Redis is down."""

    def __init__(
        self,
        url: str,
        prefix: str,
        *,
        timeout: float,
        retry_seconds: float,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.timeout = timeout
        self.retry_seconds = retry_seconds
        self.client: aioredis.Redis = bounded_client(url, timeout=timeout, max_connections=max_connections)
        self._down_until = 0.0

    @classmethod
    def from_settings(cls, settings: RedisSettings, *, max_connections: int = MAX_CONNECTIONS) -> RedisGuard:
        return cls(
            settings.redis_url,
            settings.redis_key_prefix,
            timeout=settings.redis_timeout_seconds,
            retry_seconds=settings.redis_retry_seconds,
            max_connections=max_connections,
        )

    @property
    def available(self) -> bool:
        """False while the circuit is open (a call failed less than ``retry_seconds`` ago)."""
        return time.monotonic() >= self._down_until

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def mark_down(self, exc: BaseException) -> None:
        """Open the circuit after a failure seen outside :meth:`call` (a dedicated connection, say)."""
        if self.available:
            log.warning("redis unavailable, continuing without it", extra={"error": type(exc).__name__})
        self._down_until = time.monotonic() + self.retry_seconds

    async def call(self, operation: Callable[[aioredis.Redis], Awaitable[T]]) -> T | None:
        """Run ``operation`` unless Redis is known to be down; ``None`` when it fails."""
        if not self.available:
            return None
        try:
            return await operation(self.client)
        except REDIS_ERRORS as exc:
            self.mark_down(exc)
            if not isinstance(exc, ResponseError):
                # The server went away (or hangs): every idle connection of the pool is as dead as
                # this one. Kept, each failed once at its first use after Redis was back — under
                # concurrency seconds later — and opened the circuit again each time (the chaos hunt:
                # DPoP proofs checked in process only, rate limits open, 2-3 s after a restart).
                with contextlib.suppress(*REDIS_ERRORS):
                    await self.client.connection_pool.disconnect(inuse_connections=False)
            return None

    def dedicated(self, read_timeout: float) -> aioredis.Redis:
        """A separate single-connection client for blocking reads (``XREAD BLOCK``), so that a long
        wait never occupies a connection of the shared pool; ``read_timeout`` must exceed the block."""
        return bounded_client(self.url, timeout=read_timeout, connect_timeout=self.timeout, max_connections=1)

    async def close(self) -> None:
        with contextlib.suppress(*REDIS_ERRORS):
            await self.client.aclose()
