"""An asyncpg pool that tolerates Postgres being late or going away.

The process never crashes over the database: the pool is created in the background with capped
exponential backoff, ``/readyz`` reports 503 until it exists and whenever a probe query fails, and
asyncpg replaces broken connections by itself once Postgres is back. Handlers that hit a dead
database answer 503 with ``Retry-After`` (see :data:`UNAVAILABLE_ERRORS`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import weakref
from collections.abc import AsyncIterator, Iterable
from typing import Any, Literal

import asyncpg
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

from .dbtls import DatabaseTls, SslMode, describe_connect_error
from .health import CheckFailed
from .settings import DatabaseSettings

log = logging.getLogger("svckit.db")

UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncio.TimeoutError,
)

# What handlers receive from `connection()` / `transaction()`; annotate with this.
Connection = asyncpg.pool.PoolConnectionProxy
IsolationLevel = Literal["read_committed", "repeatable_read", "serializable"]

_databases: weakref.WeakSet[Database] = weakref.WeakSet()


class DatabaseUnavailable(CheckFailed):
    """Raised when a handler needs the pool before it exists (its message is ``/readyz``-safe)."""


class Database:
    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        application_name: str = "svckit",
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = 5.0,
        max_backoff: float = 10.0,
        tls: DatabaseTls | None = None,
    ) -> None:
        self.dsn = dsn
        self.tls = tls
        # asyncpg's ssl=: the kit's verifying context (svckit.dbtls), or None for the URL's own sslmode
        self.ssl: ssl.SSLContext | SslMode | None = tls.context() if tls is not None else None
        self.last_error = "not connected yet"
        self.schema = schema
        self.application_name = application_name
        self.min_size = min_size
        self.max_size = max_size
        self.connect_timeout = connect_timeout
        self.max_backoff = max_backoff
        self._pool: asyncpg.Pool | None = None
        self._connector: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        _databases.add(self)

    @classmethod
    def from_settings(cls, settings: DatabaseSettings, schema: str) -> Database:
        return cls(
            settings.database_url,
            schema=schema,
            application_name=settings.service_name,
            min_size=settings.db_pool_min,
            max_size=settings.db_pool_max,
            connect_timeout=settings.db_connect_timeout_seconds,
            tls=settings.database_tls,
        )

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise DatabaseUnavailable(self.last_error)
        return self._pool

    @property
    def connected(self) -> bool:
        return self._pool is not None

    async def _create_pool(self) -> asyncpg.Pool:
        settings = {"application_name": self.application_name}
        if self.schema:
            settings["search_path"] = f"{self.schema},public"
        pool = await asyncpg.create_pool(
            self.dsn,
            min_size=self.min_size,
            max_size=self.max_size,
            timeout=self.connect_timeout,
            command_timeout=30,
            server_settings=settings,
            ssl=self.ssl,
        )
        assert pool is not None
        return pool

    async def _connect_forever(self) -> None:
        delay = 0.2
        attempt = 0
        while self._pool is None:
            attempt += 1
            try:
                self._pool = await self._create_pool()
                self._connected.set()
                log.info("database pool ready", extra={"attempt": attempt})
            except UNAVAILABLE_ERRORS as exc:
                self.last_error = describe_connect_error(exc, self.tls)
                log.warning(
                    "database not reachable, retrying",
                    extra={"attempt": attempt, "error": self.last_error, "retry_in": delay},
                )
                await asyncio.sleep(delay * (0.8 + 0.4 * random.random()))
                delay = min(delay * 2, self.max_backoff)

    def start(self) -> None:
        """Begin connecting in the background; returns at once."""
        if self._connector is None:
            self._connector = asyncio.create_task(self._connect_forever(), name="db-connect")

    async def wait_connected(self, timeout: float | None = None) -> None:
        self.start()
        await asyncio.wait_for(self._connected.wait(), timeout)

    async def close(self, timeout: float = 10.0) -> None:
        if self._connector is not None and not self._connector.done():
            self._connector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connector
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), timeout)
            except UNAVAILABLE_ERRORS:
                pool.terminate()

    async def check(self) -> None:
        """Readiness probe: a round trip on a pooled connection, bounded in time."""
        async with self.pool.acquire(timeout=2.0) as conn:
            await conn.fetchval("SELECT 1", timeout=2.0)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        async with self.pool.acquire(timeout=self.connect_timeout) as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def transaction(self, isolation: IsolationLevel = "read_committed") -> AsyncIterator[Connection]:
        async with self.connection() as conn, conn.transaction(isolation=isolation):
            yield conn

    def pool_stats(self) -> dict[str, int]:
        if self._pool is None:
            return {"in_use": 0, "idle": 0, "max": self.max_size}
        size = self._pool.get_size()
        idle = self._pool.get_idle_size()
        return {"in_use": size - idle, "idle": idle, "max": self.max_size}


class _PoolCollector(Collector):
    def collect(self) -> Iterable[Any]:
        family = GaugeMetricFamily(
            "db_pool_connections",
            "Database pool connections by state (in_use, idle, max).",
            labels=["state"],
        )
        totals = {"in_use": 0, "idle": 0, "max": 0}
        for database in list(_databases):
            for state, value in database.pool_stats().items():
                totals[state] += value
        for state, value in totals.items():
            family.add_metric([state], value)
        yield family


REGISTRY.register(_PoolCollector())
