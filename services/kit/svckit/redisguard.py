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

A Redis that refuses writes but still serves reads — full under ``noeviction`` (``OOM``), a replica
(``READONLY``), a failed background save (``MISCONF``), too few replicas for ``min-replicas-to-write``
(``NOREPLICAS``) — opens the circuit like any failure (every caller goes on without it, as before), but
the guard remembers that reads are still served (:attr:`RedisGuard.readable`, :meth:`RedisGuard.read`):
the replay checks then still ask Redis whether a proof or request was recorded there before, so one
accepted just before Redis filled up is not accepted again by another replica
(:mod:`svckit.replay`, :mod:`svckit.dpop`). Nothing else is a write refusal: ``LOADING``, ``BUSY`` and
``MASTERDOWN`` refuse reads too, ``NOPERM``/``NOAUTH`` are the user's, timeouts and connection errors
the server's absence.

Every key goes through :meth:`RedisGuard.key`, so ``REDIS_KEY_PREFIX`` separates deployments (and
test runs) sharing one server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import OutOfMemoryError, ReadOnlyError, RedisError, ResponseError

from .redistls import RedisTls
from .redistls import resolve as resolve_tls
from .settings import RedisSettings

log = logging.getLogger("svckit.redis")

T = TypeVar("T")

#: What a failed Redis call raises: protocol and connection errors, socket errors, timeouts.
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
#: connections a guard's client opens at most, unless told otherwise (svckit.fdlimit counts them)
MAX_CONNECTIONS = 64
#: error replies (by code) with which Redis refuses a write while it serves reads (module docstring)
_WRITE_REFUSALS = ("MISCONF ", "NOREPLICAS ")


def describe_redis_error(exc: BaseException) -> str:
    """``exc`` for a log line: its class and its text, one line, bounded."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__


def refuses_writes_only(exc: BaseException) -> bool:
    """``exc`` is Redis refusing a write while it still answers reads (full, read-only, ...)."""
    if isinstance(exc, OutOfMemoryError | ReadOnlyError):
        return True
    # redis-py has no class of its own for these: a ResponseError whose message keeps the code
    return type(exc) is ResponseError and str(exc).startswith(_WRITE_REFUSALS)


def bounded_client(
    url: str,
    *,
    timeout: float,
    connect_timeout: float | None = None,
    max_connections: int = MAX_CONNECTIONS,
    tls: RedisTls | None = None,
) -> aioredis.Redis:
    """A client whose every call fails after ``timeout`` seconds, with no library retries; over TLS
    verified as ``tls`` says (:mod:`svckit.redistls`; for a ``rediss://`` URL without it: the
    system store, the host name checked)."""
    options: dict[str, Any] = {}
    if url.startswith("rediss://"):
        tls = tls or resolve_tls(url)
        assert tls is not None  # resolve gives None only for a plain URL
        # the URL's scheme would name redis-py's own TLS connection, and a URL's options win over
        # keyword ones: the kit's connection class goes in with the plain scheme
        url = "redis://" + url.removeprefix("rediss://")
        options = tls.client_options()
    return aioredis.Redis.from_url(
        url,
        **options,
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
        tls: RedisTls | None = None,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.timeout = timeout
        self.retry_seconds = retry_seconds
        self.tls = tls
        self.client: aioredis.Redis = bounded_client(
            url, timeout=timeout, max_connections=max_connections, tls=tls
        )
        self._down_until = 0.0
        # until when reads are still served while the circuit is open: it was a write refusal
        self._reads_until = 0.0

    @classmethod
    def from_settings(cls, settings: RedisSettings, *, max_connections: int = MAX_CONNECTIONS) -> RedisGuard:
        return cls(
            settings.redis_url,
            settings.redis_key_prefix,
            timeout=settings.redis_timeout_seconds,
            retry_seconds=settings.redis_retry_seconds,
            max_connections=max_connections,
            tls=settings.redis_tls,
        )

    @property
    def available(self) -> bool:
        """False while the circuit is open (a call failed less than ``retry_seconds`` ago)."""
        return time.monotonic() >= self._down_until

    @property
    def readable(self) -> bool:
        """True while a read is worth sending: the circuit is closed, or the failure that opened it
        was Redis refusing a write while it serves reads (:func:`refuses_writes_only`)."""
        now = time.monotonic()
        return now >= self._down_until or now < self._reads_until

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def mark_down(self, exc: BaseException) -> None:
        """Open the circuit after a failure seen outside :meth:`call` (a dedicated connection, say)."""
        if self.available or (self.readable and not refuses_writes_only(exc)):  # reads stop too: said
            # the error's text too: "max number of clients reached" (Redis at maxclients: up, refusing
            # new connections) and "Connection refused" (down) call for different remedies
            log.warning(
                "redis unavailable, continuing without it", extra={"error": describe_redis_error(exc)}
            )
        self._down_until = time.monotonic() + self.retry_seconds
        self._reads_until = self._down_until if refuses_writes_only(exc) else 0.0

    async def call(self, operation: Callable[[aioredis.Redis], Awaitable[T]]) -> T | None:
        """Run ``operation`` unless Redis is known to be down; ``None`` when it fails."""
        if not self.available:
            return None
        return await self._run(operation)

    async def read(self, operation: Callable[[aioredis.Redis], Awaitable[T]]) -> T | None:
        """Run a read while :attr:`readable` (also while the circuit is open for a write refusal);
        ``None`` when it fails, which opens the circuit for reads too."""
        if not self.readable:
            return None
        return await self._run(operation)

    async def _run(self, operation: Callable[[aioredis.Redis], Awaitable[T]]) -> T | None:
        try:
            return await operation(self.client)
        except REDIS_ERRORS as exc:
            self.mark_down(exc)
            if not isinstance(exc, ResponseError):
                # The server went away (or hangs): every idle connection of the pool is as dead as
                # this one. Kept, each failed once at its first use after Redis was back — under
                # concurrency seconds later — and opened the circuit again each time (the chaos hunt:
                # DPoP proofs checked in process only, rate limits open, 2-3 s after a restart).
                await self._close_idle()
            return None

    async def _close_idle(self) -> None:
        """Close the pool's idle connections, best effort. redis-py raises the first failure among the
        closes as its own, a ``CancelledError`` too — a close cancelled by its own timeout (CPython
        3.11's ``asyncio.timeout`` can leave that cancellation pending past its block): it reached the
        caller as if the caller were cancelled, and a sign-in answered 500 (the identity provider at
        its CPU request in a storm). Only a cancellation of the calling task itself is passed on."""
        try:
            await self.client.connection_pool.disconnect(inuse_connections=False)
        except REDIS_ERRORS:
            pass
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise

    def dedicated(self, read_timeout: float) -> aioredis.Redis:
        """A separate single-connection client for blocking reads (``XREAD BLOCK``), so that a long
        wait never occupies a connection of the shared pool; ``read_timeout`` must exceed the block."""
        return bounded_client(
            self.url, timeout=read_timeout, connect_timeout=self.timeout, max_connections=1, tls=self.tls
        )

    async def close(self) -> None:
        with contextlib.suppress(*REDIS_ERRORS):
            await self.client.aclose()
