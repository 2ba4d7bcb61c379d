"""An asyncpg pool that tolerates Postgres being late or going away.

The process never crashes over the database: the pool is created in the background with capped
exponential backoff, ``/readyz`` reports 503 until it exists and whenever a probe query fails, and
asyncpg replaces broken connections by itself once Postgres is back. Handlers that hit a dead
database answer 503 with ``Retry-After`` (every class in :data:`UNAVAILABLE_ERRORS`, mapped once in
:mod:`svckit.app`, never per handler).

Postgres up but out of connection slots (SQLSTATE 53300: ``max_connections`` or the role's
``CONNECTION LIMIT`` reached) refuses only new connections: a pool that may not grow serves its
requests on the connections it holds, each waiting for one to be released within
``connect_timeout`` (:meth:`Database.acquire_released`); only a pool left with none answers 503,
and no new connection is tried for a second after a refusal (:meth:`Database.out_of_slots`).
Every failed connection is counted by reason (``db_connect_failures_total``, :func:`counted_connect`).

Postgres out of disk where the tables live (SQLSTATE 53100: a statement that needs a new page, or a
sort's temporary file, finds ``ENOSPC``) refuses that statement only: the rest works, reads above all.
Such a refusal (:data:`DISK_FULL_ERRORS`) is answered 503 ``database_disk_full`` (svckit.app), counted
(``db_disk_full_refusals_total``), and, being the server's definite answer, never taken for a lost
connection whose outcome must be resolved (:data:`REFUSED_ERRORS`). Out of disk for its WAL, Postgres
stops (a PANIC, then a crash recovery that cannot write either): an outage like any other.

A lock held too long by another session (an operator's ``LOCK TABLE``, a stuck transaction, a
migration's ``ALTER TABLE`` queued behind a long one) makes a statement wait at most ``lock_timeout``
(set on every connection, below the statement bound): the server then refuses it (SQLSTATE 55P03,
:data:`LOCK_ERRORS`), 503 ``database_busy``, counted in ``db_lock_timeouts_total``; the connection
stays healthy and goes back to the pool. And no session of the service's own stays idle inside a
transaction, holding what it locked, longer than ``idle_in_transaction_timeout``: the server ends it.

A transaction Postgres rolls back for a conflict with another (SQLSTATE 40001 serialization failure,
40P01 deadlock: :data:`CONFLICT_ERRORS`) is the server's definite answer too, and the remedy is to
run it again: :meth:`Database.write_once` and :meth:`Database.run_transaction` do, a few times, before
the 503 ``database_conflict`` (svckit.app); counted in ``db_transaction_conflicts_total`` and
``db_transaction_retries_total``.

Readiness (:meth:`Database.check`) says whether the process can serve, not whether a pooled connection
is free this instant: a pool whose every connection is busy (slow statements, requests waiting on a
held lock) is ready while the server answers — an overload must not take every replica out of the
Service in turn — and a server unreachable, hung, or out of slots with no pooled connection is not.

A write's answer must never contradict its outcome. When the connection dies while ``COMMIT`` is on
its way, the transaction may or may not have committed: :meth:`Database.transaction` then waits
until the old server session is over (so its transaction is decided), asks the caller's
``committed`` check on a fresh connection, and either returns normally (it did commit: the handler
answers as if nothing happened), raises :class:`NotCommitted` (503, nothing was stored) or, when
Postgres stays unreachable, :class:`OutcomeUnknown` (503 that says so). Writes therefore choose their
identifiers before inserting, so there is something to look for.

A failover moves the DSN's name, not the open connections: those on a server that takes no writes
are replaced after its first refusal (:func:`refused_as_read_only`); those on an old primary that
stays up and writable refuse nothing, and are closed by the periodic check of which server the name
leads to (:mod:`svckit.dbserver`, ``server_check_seconds``: ``DB_LEADER_CHECK_SECONDS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import ssl
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, Literal, TypeVar

import asyncpg
from asyncpg.exceptions import _base as asyncpg_base
from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

from .dbserver import ServerIdentity, server_identity, watch_server
from .dbtls import DatabaseTls, SslMode, describe_connect_error
from .health import CheckFailed
from .settings import DatabaseSettings

log = logging.getLogger("svckit.db")


class DatabaseUnavailable(CheckFailed):
    """Raised when a handler needs the pool before it exists (its message is ``/readyz``-safe)."""


class OutOfSlots(DatabaseUnavailable):
    """No connection for a request while Postgres refuses new ones for want of a slot (SQLSTATE 53300),
    and none of the pool's own was released in time (:meth:`Database.acquire_released`)."""


class NotCommitted(DatabaseUnavailable):
    """The connection died around ``COMMIT`` and the check on a fresh connection found nothing stored."""


class OutcomeUnknown(DatabaseUnavailable):
    """The connection died around ``COMMIT`` and whether it committed could not be found out."""


#: SQLSTATE 25006 ("cannot execute INSERT in a read-only transaction"): a write reached a server that
#: takes none — a primary demoted by a failover while the pool still holds connections to it, or a
#: standby the DSN's name points at for a moment. Like an outage, it passes once the new primary is
#: reached (503 + Retry-After, not the 500 it was). Unlike a broken connection it is the server's
#: definite refusal: nothing was applied, so there is no outcome to resolve, and the connection is
#: closed rather than pooled again (the next one is opened anew, to wherever the name points now).
READ_ONLY_ERRORS: tuple[type[BaseException], ...] = (asyncpg.exceptions.ReadOnlySQLTransactionError,)
#: Postgres up but refusing new connections for want of a slot (SQLSTATE 53300), or no connection of
#: the pool's own released in time meanwhile: answered 503 ``database_out_of_slots`` (svckit.app), not
#: "unreachable" — the operator's remedy differs (docs/runbook.md, TimesheetsDatabaseConnectionsRefused)
SLOT_ERRORS: tuple[type[BaseException], ...] = (asyncpg.TooManyConnectionsError, OutOfSlots)
#: SQLSTATE 55P03 (lock_not_available): the statement waited ``lock_timeout`` for a lock another
#: session holds and the server gave up — the table or row is held by someone else (an operator, a
#: stuck session, a migration), the database itself is fine. Answered 503 ``database_busy``
#: (svckit.app); the server refused the statement, its transaction is rolled back, the connection is
#: pooled again as it is. Without the bound the request waited the whole statement bound holding a
#: pooled connection, and the pool ran dry for every route of the service.
LOCK_ERRORS: tuple[type[BaseException], ...] = (asyncpg.exceptions.LockNotAvailableError,)
#: what an operator's command (``python -m <service> ...``) says, in one line, when the server gave up
#: waiting for a lock another session holds (:data:`LOCK_ERRORS`): the database is fine — "unreachable"
#: sent the operator after the wrong cause — and the remedy is to find the holder, then run it again
LOCK_REFUSAL = (
    "a table or row it needs is held by another session (LockNotAvailableError, SQLSTATE 55P03: "
    "waited DB_LOCK_TIMEOUT_SECONDS), its statement was refused and rolled back: find the holder "
    "(pg_locks, pg_stat_activity; docs/runbook.md, TimesheetsDatabaseLocksHeld), end it or let it "
    "finish, then run the command again"
)

#: SQLSTATE 53100 ("could not extend file ...: No space left on device"): the volume of the data
#: directory or of a tablespace is full. The statement is refused and its transaction rolled back —
#: nothing of it stored — while the server goes on answering reads and writes that fit in pages with
#: room. Answered 503 ``database_disk_full`` (svckit.app) rather than "unreachable": the remedy is the
#: operator's (docs/runbook.md, "Postgres out of disk", TimesheetsDatabaseDiskFull); counted in
#: ``db_disk_full_refusals_total``. (A full ``pg_wal`` is no 53100: Postgres PANICs and stops.)
DISK_FULL_ERRORS: tuple[type[BaseException], ...] = (asyncpg.exceptions.DiskFullError,)
#: SQLSTATE 40001 (serialization_failure: a ``repeatable_read``/``serializable`` transaction that
#: would break its isolation, at a statement or at ``COMMIT``) and 40P01 (deadlock_detected: row locks
#: taken in crossed orders, the server rolls one transaction back): the transaction was rolled back
#: whole on a sound session, and running it again is the remedy. :meth:`Database.write_once` and
#: :meth:`Database.run_transaction` do, :data:`CONFLICT_ATTEMPTS` times in all with a short jittered
#: back-off (``db_transaction_retries_total``); what still conflicts is answered 503
#: ``database_conflict`` (svckit.app). Every one is counted (``db_transaction_conflicts_total``).
#: (40002 and 40003 stay mere "unavailable": Postgres does not raise them.)
CONFLICT_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
)
#: the server's own refusal of a statement, answered as an error on a connection that goes on: the
#: statement certainly did not commit, so there is no outcome to resolve (:meth:`Database.write_once`,
#: a ``COMMIT`` refused in :class:`PooledTransaction`) — unlike a connection that broke on the way
REFUSED_ERRORS: tuple[type[BaseException], ...] = (
    *READ_ONLY_ERRORS,
    *DISK_FULL_ERRORS,
    *LOCK_ERRORS,
    *CONFLICT_ERRORS,
)

# Every error class that means "the database is not there right now; retry": the socket (OSError,
# timeouts), SQLSTATE class 08 (connection exception), 57 (operator intervention: admin or crash
# shutdown, "cannot connect now", cancelled), 53 (insufficient resources: too many connections,
# disk full), 40 (transaction rollback: serialization failure, deadlock — retrying is the remedy, and
# the kit retries first: :data:`CONFLICT_ERRORS`),
# and asyncpg's client-side states of a connection that broke mid-operation (``InterfaceError``
# "connection is closed", ``InternalClientError`` "cannot switch to state 15" after a fast shutdown),
# a session the server ended for idling in a transaction (25P03: its transaction rolled back),
# and :data:`READ_ONLY_ERRORS` and :data:`LOCK_ERRORS` (:data:`DISK_FULL_ERRORS` are among class 53).
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    DatabaseUnavailable,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.TransactionRollbackError,
    asyncpg.InterfaceError,
    asyncpg_base.InternalClientError,
    asyncpg.exceptions.IdleInTransactionSessionTimeoutError,
    *READ_ONLY_ERRORS,
    *LOCK_ERRORS,
)

_T = TypeVar("_T")

# What handlers receive from `connection()` / `transaction()`; annotate with this.
Connection = asyncpg.pool.PoolConnectionProxy
IsolationLevel = Literal["read_committed", "repeatable_read", "serializable"]
#: ``committed(conn)``: did the write of this transaction commit? Read on a fresh connection.
CommitCheck = Callable[[Any], Awaitable[bool]]
#: ``reread(conn)``: the row a committed write would have returned, read again (its answer was lost).
Reread = Callable[[Any], Awaitable["asyncpg.Record | None"]]

ambiguous_commits = Counter(
    "db_ambiguous_commits_total",
    "Transactions whose connection died around COMMIT, by what the check on a fresh connection found.",
    ["outcome"],
)
for _outcome in ("committed", "not_committed", "unknown"):
    ambiguous_commits.labels(_outcome)

read_only_refusals = Counter(
    "db_read_only_refusals_total",
    "Statements refused by a server that takes no writes (SQLSTATE 25006: a hot standby, a demoted "
    "primary): writes answered 503 during a failover, or a DATABASE_URL that reaches a standby.",
)
disk_full_refusals = Counter(
    "db_disk_full_refusals_total",
    "Statements Postgres refused for want of disk space where the tables live (SQLSTATE 53100: the "
    "volume of the data directory or of a tablespace is full): writes answered 503 database_disk_full, "
    "background writes (the outbox relay, the audit ingest) retried with back-off.",
)
lock_timeouts = Counter(
    "db_lock_timeouts_total",
    "Statements the server refused after waiting lock_timeout (DB_LOCK_TIMEOUT_SECONDS) for a lock "
    "another session holds (SQLSTATE 55P03): a table or rows held by an operator's session, a stuck "
    "transaction or a migration; requests answered 503 database_busy.",
)

transaction_conflicts = Counter(
    "db_transaction_conflicts_total",
    "Transactions Postgres rolled back for a conflict with another, by reason: serialization "
    "(SQLSTATE 40001, at a statement or at COMMIT) or deadlock (40P01). Those run again are in "
    "db_transaction_retries_total; the rest were answered 503 database_conflict.",
    ["reason"],
)
transaction_retries = Counter(
    "db_transaction_retries_total",
    "Transactions (or single-statement writes) run again after Postgres rolled them back for a "
    "conflict, by reason (serialization, deadlock).",
    ["reason"],
)
for _reason in ("serialization", "deadlock"):
    transaction_conflicts.labels(_reason)
    transaction_retries.labels(_reason)

#: how many times in all a write or transaction the server rolls back for a conflict is run
#: (:data:`CONFLICT_ERRORS`), and the back-off before the second try (doubled for each further one,
#: each jittered between half and one and a half of it: two transactions that collided must not
#: collide again in lock step)
CONFLICT_ATTEMPTS = 3
CONFLICT_BACKOFF_SECONDS = 0.02


def conflict_reason(exc: BaseException) -> str:
    """The ``reason`` label of :data:`transaction_conflicts` for an error of :data:`CONFLICT_ERRORS`."""
    return "deadlock" if isinstance(exc, asyncpg.exceptions.DeadlockDetectedError) else "serialization"


async def conflict_backoff(exc: BaseException, attempt: int) -> None:
    """Before running again a write the server rolled back for a conflict (``attempt``: the one that
    failed, from 1): counted, said at debug level (a conflict now and then is the normal life of
    concurrent transactions; a lasting rate shows in the counters), then a short jittered wait."""
    reason = conflict_reason(exc)
    transaction_retries.labels(reason).inc()
    log.debug(
        "the database rolled a transaction back for a conflict; running it again",
        extra={"reason": reason, "attempt": attempt},
    )
    delay = CONFLICT_BACKOFF_SECONDS * 2 ** (attempt - 1)
    await asyncio.sleep(delay * (0.5 + random.random()))


#: after a probe found the DSN's server still read-only, the next probe waits this long
#: (:func:`refused_as_read_only`)
READ_ONLY_PROBE_SECONDS = 0.5

connect_failures = Counter(
    "db_connect_failures_total",
    "New database connections that failed (the pool's, the outbox's LISTEN connection, an outcome "
    "check), by reason: slots (the server or the role is out of connection slots, SQLSTATE 53300: "
    "max_connections or the role's CONNECTION LIMIT reached), unavailable (unreachable, starting or "
    "shutting down, timed out), refused (login refused, database missing, anything else).",
    ["reason"],
)
for _reason in ("slots", "unavailable", "refused"):
    connect_failures.labels(_reason)


def connect_failure_reason(exc: BaseException) -> str:
    """The ``reason`` label of :data:`connect_failures` for a connection attempt that raised ``exc``."""
    if isinstance(exc, asyncpg.TooManyConnectionsError):
        return "slots"
    if isinstance(exc, UNAVAILABLE_ERRORS):
        return "unavailable"
    return "refused"


async def counted_connect(*args: Any, **kwargs: Any) -> asyncpg.Connection:
    """``asyncpg.connect`` that counts its failures (:data:`connect_failures`): the pools' ``connect``
    hook, and what every other connection of the kit opens with (:meth:`Database.connect`).

    Why: a server that refuses new connections (its slots taken by another tenant or a leak) leaves
    the connections a service holds working; only what connects anew fails — a pool replacing a
    connection, growing under load, a replica starting — so the 503s come and go with the load, and
    ``/readyz`` flaps. The counter says which it is without reading logs (``TimesheetsDatabase
    ConnectionsRefused``, docs/runbook.md)."""
    try:
        conn: asyncpg.Connection = await asyncpg.connect(*args, **kwargs)
    except Exception as exc:
        connect_failures.labels(connect_failure_reason(exc)).inc()
        raise
    return conn


_databases: weakref.WeakSet[Database] = weakref.WeakSet()

#: once Postgres refused a connection for want of a slot, how long no new one is tried
#: (:meth:`Database.out_of_slots`)
SLOT_RETRY_SECONDS = 1.0
#: how long the readiness probe waits for a pooled connection before it takes the pool for busy
#: (:meth:`Database.check`): an idle connection is handed over at once, a new one takes a round trip
#: or two; past this, every connection is in use and requests are queued for one
HEALTH_WAIT_SECONDS = 0.5
#: why a request found no connection: the pool may not grow and none of its own was released in time
#: (``/readyz``-safe: no role or host names)
NO_SLOT = "TooManyConnectionsError: the database has no connection slot free for a new connection"


class OneLineOutage(logging.Filter):
    """asyncpg (0.32) logs a warning *with the whole traceback* each time its pool fails to open the
    connections of its floor again (``min_size``), every 1 to 60 s per service for as long as Postgres
    is away: tracebacks in every service's log for a condition that is expected and answered (503 with
    ``Retry-After``, ``/readyz`` says ``postgres``). An error of :data:`UNAVAILABLE_ERRORS` keeps the
    line with the error named (``error``) and loses the traceback; any other (a login refused) keeps
    it."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, UNAVAILABLE_ERRORS):
            record.error = f"{type(exc).__name__}: {exc}"[:200]
            record.exc_info = None
            record.exc_text = None
        return True


logging.getLogger("asyncpg.pool").addFilter(OneLineOutage())


class Database:
    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        application_name: str = "svckit",
        min_size: int = 1,
        max_size: int = 10,
        pool_idle_seconds: float = 300.0,
        connect_timeout: float = 5.0,
        statement_timeout: float = 30.0,
        lock_timeout: float | None = None,
        idle_in_transaction_timeout: float | None = None,
        max_backoff: float = 10.0,
        outcome_check_seconds: float = 10.0,
        tls: DatabaseTls | None = None,
        server_check_seconds: float = 0.0,
        health_answer_seconds: float = 5.0,
    ) -> None:
        """``server_check_seconds``: how often a fresh connection asks which server the DSN's name
        leads to, closing the pooled connections on another one (:mod:`svckit.dbserver`); 0: never
        (and no question asked of a new connection). ``health_answer_seconds``: how recent an answer
        on a pooled connection proves the server to the readiness probe while every connection is
        busy (:meth:`check`; the chart's readiness period). ``pool_idle_seconds``: how long a pooled
        connection beyond ``min_size`` may stay idle before it is closed (asyncpg's
        ``max_inactive_connection_lifetime``; 0: never), so that a burst's sessions go back to the
        server."""
        self.dsn = dsn
        self.tls = tls
        # asyncpg's ssl=: the kit's verifying context (svckit.dbtls), or None for the URL's own sslmode
        self.ssl: ssl.SSLContext | SslMode | None = tls.context() if tls is not None else None
        self.last_error = "not connected yet"
        self.schema = schema
        self.application_name = application_name
        self.min_size = min_size
        self.max_size = max_size
        self.pool_idle_seconds = pool_idle_seconds
        self.connect_timeout = connect_timeout
        self.statement_timeout = statement_timeout
        self.lock_timeout = lock_timeout
        self.idle_in_transaction_timeout = idle_in_transaction_timeout
        self.max_backoff = max_backoff
        self.outcome_check_seconds = outcome_check_seconds
        self._pool: asyncpg.Pool | None = None
        self._connector: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        # requests waiting for a pooled connection to be released (the pool may not grow: out of
        # slots), and what wakes them (:meth:`acquire_released`)
        self._release_waiters = 0
        self._released = asyncio.Event()
        self._slot_retry_at = 0.0  # until when the pool does not try to grow (out of slots)
        # told when the read-only probe found the DSN's name leading to another, writable server and
        # replaced the pool's connections (:func:`refused_as_read_only`): a connection of its own
        # (the outbox relay's LISTEN) opened before is on the old server
        self._move_callbacks: list[Callable[[], None]] = []
        # which server each open pooled connection reached (svckit.dbserver), and the periodic check
        self.server_check_seconds = server_check_seconds
        # (the server, whether it was a standby when the connection was opened)
        self._servers: weakref.WeakKeyDictionary[asyncpg.Connection, tuple[ServerIdentity, bool]] = (
            weakref.WeakKeyDictionary()
        )
        self._server_check_failed = False
        self._server_unknown_said = False
        self._server_watch: asyncio.Task[None] | None = None
        # when the server last answered a statement on a pooled connection (PooledConnection's end;
        # time.monotonic), for the readiness probe of a busy pool (:meth:`check`)
        self.health_answer_seconds = health_answer_seconds
        self._answered_at = -math.inf
        self._own_check: asyncio.Task[None] | None = None  # the busy pool's probe in flight (check)
        _databases.add(self)

    @classmethod
    def from_settings(cls, settings: DatabaseSettings, schema: str) -> Database:
        return cls(
            settings.database_url,
            schema=schema,
            application_name=settings.service_name,
            min_size=settings.db_pool_min,
            max_size=settings.db_pool_max,
            pool_idle_seconds=settings.db_pool_idle_seconds,
            connect_timeout=settings.db_connect_timeout_seconds,
            statement_timeout=settings.db_statement_timeout_seconds,
            lock_timeout=settings.db_lock_timeout_seconds,
            idle_in_transaction_timeout=settings.db_idle_in_transaction_timeout_seconds,
            tls=settings.database_tls,
            server_check_seconds=settings.db_leader_check_seconds,
        )

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise DatabaseUnavailable(self.last_error)
        return self._pool

    @property
    def connected(self) -> bool:
        return self._pool is not None

    def _connect_options(self) -> dict[str, Any]:
        """What every connection of this database uses, pooled or not (one place to add TLS).

        The lock bounds are server settings sent with the connection's start-up (no round trip, and
        no privilege: ``lock_timeout`` and ``idle_in_transaction_session_timeout`` are any session's
        to set), so they hold for every statement and transaction of the session; a transaction may
        still tighten them with ``SET LOCAL``."""
        settings = {"application_name": self.application_name}
        if self.schema:
            settings["search_path"] = f"{self.schema},public"
        if self.lock_timeout is not None:
            settings["lock_timeout"] = milliseconds(self.lock_timeout)
        if self.idle_in_transaction_timeout is not None:
            settings["idle_in_transaction_session_timeout"] = milliseconds(self.idle_in_transaction_timeout)
        return {
            "timeout": self.connect_timeout,
            "command_timeout": self.statement_timeout,
            "server_settings": settings,
            "ssl": self.ssl,
        }

    async def _create_pool(self) -> asyncpg.Pool:
        pool = await asyncpg.create_pool(
            self.dsn,
            min_size=self.min_size,
            max_size=self.max_size,
            max_inactive_connection_lifetime=self.pool_idle_seconds,
            reset=_keep_session,
            connect=self._counted_connect,
            init=self._record_server if self.server_check_seconds > 0 else None,
            **self._connect_options(),
        )
        assert pool is not None
        return pool

    async def connect(self, application_name: str | None = None) -> asyncpg.Connection:
        """A connection of its own, outside the pool (a LISTEN, an outcome check), opened as the
        pool's are and counted as they are (:func:`counted_connect`); ``application_name`` tells it
        apart in ``pg_stat_activity``."""
        options = self._connect_options()
        if application_name is not None:
            options["server_settings"] = {**options["server_settings"], "application_name": application_name}
        return await self._counted_connect(self.dsn, **options)

    async def _record_server(self, conn: asyncpg.Connection) -> None:
        """The pool's ``init`` hook: note which server the new connection reached (one round trip per
        new connection, none per use), for :func:`svckit.dbserver.check_server`. A role that may not
        call ``pg_postmaster_start_time()`` (revoked from PUBLIC) leaves the connection unnoted:
        never compared, never closed by the check; said once."""
        try:
            identity, standby = await server_identity(conn, timeout=self.connect_timeout)
        except asyncpg.InsufficientPrivilegeError as exc:
            if not self._server_unknown_said:
                self._server_unknown_said = True
                log.warning(
                    "cannot tell which database server a connection reached (no failover check: "
                    "grant EXECUTE on pg_postmaster_start_time() to it)",
                    extra={"error": f"{type(exc).__name__}: {exc}"[:200]},
                )
            return
        self._servers[conn] = (identity, standby)

    def server_of(self, conn: Any) -> ServerIdentity | None:
        """The server a pooled connection (asyncpg's proxy, or the connection itself) reached, as
        noted at its start; None when not noted (the check off, the role not allowed to ask).
        Asked only when a write's outcome must be resolved, never per use."""
        raw = getattr(conn, "_con", conn)  # asyncpg's PoolConnectionProxy holds the connection here
        if raw is None or not self._servers:
            return None
        noted = self._servers.get(raw)
        return None if noted is None else noted[0]

    def on_address_moved(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (no arguments, in the event loop) each time the pool's connections were
        found on a read-only server while the DSN's name leads to a writable one, or on another server
        than the one the DSN's name leads to (:mod:`svckit.dbserver`), and replaced. What
        holds a connection of its own (:meth:`connect`) replaces it then: it would stay on the old
        server as long as that one stays up."""
        self._move_callbacks.append(callback)

    def _address_moved(self) -> None:
        for callback in list(self._move_callbacks):
            callback()

    async def _counted_connect(self, *args: Any, **kwargs: Any) -> asyncpg.Connection:
        """:func:`counted_connect`, and a refusal for want of a slot noted (:meth:`out_of_slots`): every
        connection of this database opens here, the pool's (whoever acquires: :class:`PooledConnection`,
        and asyncpg's floor maintenance) and the others."""
        if self.out_of_slots(asyncio.get_running_loop().time()):
            raise OutOfSlots(NO_SLOT)  # refused a moment ago: not one more backend for nothing
        try:
            return await counted_connect(*args, **kwargs)
        except asyncpg.TooManyConnectionsError:
            self._slot_retry_at = asyncio.get_running_loop().time() + SLOT_RETRY_SECONDS
            raise

    async def _connect_forever(self) -> None:
        delay = 0.2
        attempt = 0
        while self._pool is None:
            attempt += 1
            try:
                self._pool = await self._create_pool()
                self._connected.set()
                log.info("database pool ready", extra={"attempt": attempt})
                if self.server_check_seconds > 0:
                    self._server_watch = asyncio.create_task(
                        watch_server(self, self.server_check_seconds), name="db-server-check"
                    )
                await self._warn_if_owner()
            except UNAVAILABLE_ERRORS as exc:
                self.last_error = describe_connect_error(exc, self.tls)
                log.warning(
                    "database not reachable, retrying",
                    extra={"attempt": attempt, "error": self.last_error, "retry_in": delay},
                )
                await asyncio.sleep(delay * (0.8 + 0.4 * random.random()))
                delay = min(delay * 2, self.max_backoff)
            except Exception as exc:
                # a login refused (SQLSTATE class 28: the role not created yet, a password not set
                # yet), a database not created yet (3D000), a DSN asyncpg cannot read: not a reason
                # to give up for good (nothing would connect until a restart); said, then retried
                self.last_error = describe_connect_error(exc, self.tls)
                sqlstate = getattr(exc, "sqlstate", None)
                log.warning(
                    "database refused the connection, retrying",
                    extra={
                        "attempt": attempt,
                        "error": self.last_error,
                        "sqlstate": sqlstate if isinstance(sqlstate, str) else None,
                        "retry_in": self.max_backoff,
                    },
                )
                await asyncio.sleep(self.max_backoff * (0.8 + 0.4 * random.random()))

    async def _warn_if_owner(self) -> None:
        """Services run as a runtime role that owns nothing (:mod:`svckit.roles`); connected as the
        owner of the schema, the database no longer protects the data from this process. Say so once."""
        if not self.schema or self._pool is None:
            return
        with contextlib.suppress(*UNAVAILABLE_ERRORS, asyncpg.PostgresError):
            role = await self._pool.fetchval(
                "SELECT current_user FROM pg_namespace WHERE nspname = $1 AND nspowner = "
                "(SELECT oid FROM pg_roles WHERE rolname = current_user)",
                self.schema,
                timeout=2.0,
            )
            if role:
                log.warning(
                    "connected as the owner of the schema: run the service as its runtime role "
                    "(DB_RUNTIME_ROLE, see svckit.roles)",
                    extra={"schema": self.schema, "role": role},
                )

    def start(self) -> None:
        """Begin connecting in the background; returns at once."""
        if self._connector is None:
            self._connector = asyncio.create_task(self._connect_forever(), name="db-connect")

    async def wait_connected(self, timeout: float | None = None) -> None:
        self.start()
        await asyncio.wait_for(self._connected.wait(), timeout)

    async def close(self, timeout: float = 10.0) -> None:
        if self._own_check is not None and not self._own_check.done():
            self._own_check.cancel()  # a readiness probe's own connection in flight (check)
        if (probe := _read_only_probes.pop(self, None)) is not None:
            probe.cancel()  # a read-only probe in flight (refused_as_read_only): its pool is going
        if self._server_watch is not None:
            self._server_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._server_watch
            self._server_watch = None
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
        """Readiness probe: can this process serve — is there a pool, and does the server answer?

        A round trip on a pooled connection when one is free within :data:`HEALTH_WAIT_SECONDS`.
        Through :class:`PooledConnection`, as every statement: a probe without an answer (a hung
        server) or cut short by ``/readyz``'s bound abandons its session; asyncpg's own ``acquire()``
        context would release it by waiting, shielded, for the server to confirm the probe's
        cancellation, and fail later in a task nobody awaits.

        Every pooled connection busy (slow statements, requests waiting on a held lock, more
        requests than connections) is an overload, not an outage: the probe used to queue behind
        the requests for a connection and time out, the kubelet took the pod out of the Service, its
        traffic saturated the other replicas the same way, and the Service was left with no ready
        endpoint. So a pool found busy is ready when the server answered one of its statements less
        than ``health_answer_seconds`` ago (:meth:`_busy_but_answering`), else when a connection of
        the probe's own gets an answer (:meth:`_check_own_connection`). A server gone, hung or
        refusing connections still fails: the pool's statements stop being answered, and the
        probe's own connection fails or times out; a pool with no connection while out of slots
        fails at once (:class:`OutOfSlots`)."""
        use = PooledConnection(self)
        try:
            async with asyncio.timeout(HEALTH_WAIT_SECONDS):
                conn = await use.__aenter__()
        except TimeoutError:
            if self._busy_but_answering():
                return
            await self._check_own_connection()
            return
        try:
            await conn.fetchval("SELECT 1", timeout=2.0)
        except BaseException as exc:
            await use.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        await use.__aexit__(None, None, None)

    def _busy_but_answering(self) -> bool:
        """The pool has connections and the server answered a statement on one of them (a result,
        or its own refusal such as a lock timeout) within ``health_answer_seconds``."""
        return (
            self._pool is not None
            and self._pool.get_size() > 0
            and time.monotonic() - self._answered_at < self.health_answer_seconds
        )

    async def _check_own_connection(self) -> None:
        """Every pooled connection busy and no answer on one of them lately (statements slower than
        ``health_answer_seconds``, or a server that stopped answering): a connection of the probe's
        own, opened as the pool's are (counted; none tried while out of slots), one round trip,
        closed. Bounded by ``/readyz``'s check bound.

        One at a time: ``/readyz`` is open to anyone who reaches the pod, and a backend per request
        to a server already busy would make the overload worse; concurrent checks share the one in
        flight, and its answer counts as the server's latest (:meth:`_busy_but_answering`), so at
        most one such connection is opened per ``health_answer_seconds`` while the server answers."""
        if self._own_check is None or self._own_check.done():
            self._own_check = asyncio.create_task(self._own_connection_round_trip(), name="db-readiness")
            self._own_check.add_done_callback(_outcome_seen)
        await asyncio.shield(self._own_check)

    async def _own_connection_round_trip(self) -> None:
        conn = await self.connect(application_name=f"{self.application_name} readiness")
        try:
            await conn.fetchval("SELECT 1", timeout=2.0)
        finally:
            conn.terminate()
        self._answered_at = time.monotonic()

    def out_of_slots(self, now: float) -> bool:
        """Postgres refused a connection of this database for want of a slot (SQLSTATE 53300) less
        than :data:`SLOT_RETRY_SECONDS` ago. Meanwhile no new connection is tried — a request waits
        for one of the pool's own (:meth:`acquire_released`), or is answered 503 at once when it has
        none — for a refused connection still costs the full server a backend (a fork, an
        authentication): tried for each request, the write load made it tens a second per service,
        and a request paid a round trip before waiting."""
        return now < self._slot_retry_at

    async def acquire_released(self, pool: asyncpg.Pool, deadline: float) -> Connection:
        """The pool had no idle connection and may not grow (Postgres out of slots: its
        ``max_connections`` or the role's ``CONNECTION LIMIT``): wait until ``deadline`` for one of
        its own connections to be released and take it. A statement holds one for milliseconds;
        answering 503 at once refused a third of the writes of a service whose role had no slot to
        spare while its own connection served the rest. None released in time (or none left):
        :class:`DatabaseUnavailable` (503 with ``Retry-After``). asyncpg hands out a live idle
        connection before it connects another holder, so a wake-up with one idle connects nothing."""
        self._release_waiters += 1
        try:
            async with asyncio.timeout_at(deadline):
                while True:
                    if pool.get_idle_size():
                        conn: Connection = await pool.acquire()
                        return conn
                    if not pool.get_size():
                        break
                    self._released.clear()
                    await self._released.wait()
        except TimeoutError:
            pass
        finally:
            self._release_waiters -= 1
        raise OutOfSlots(NO_SLOT)

    def connection(self) -> PooledConnection:
        """A pooled connection for the block (``async with``), waited for at most ``connect_timeout``:
        see :class:`PooledConnection`."""
        return PooledConnection(self)

    @property
    def queries(self) -> PooledQueries:
        """The pool's one-statement methods (``fetch``, ``fetchrow``, ``fetchval``, ``execute``,
        ``executemany``) and ``acquire()``, each on a connection of :meth:`connection`: for code
        written against an ``asyncpg.Pool`` (the identity provider's store), which would otherwise
        bypass the wait for a pooled connection while out of slots and the read-only handling."""
        return PooledQueries(self)

    def transaction(
        self, isolation: IsolationLevel = "read_committed", *, committed: CommitCheck | None = None
    ) -> PooledTransaction:
        """A transaction on a pooled connection (``async with``), committed when the block ends
        without an exception.

        If the connection breaks while committing, the outcome is resolved as the module docstring
        says: with ``committed`` the block's end either returns normally (it did commit) or raises
        :class:`NotCommitted`; without it (or when Postgres stays away) :class:`OutcomeUnknown`.

        A transaction the server rolls back for a conflict (:data:`CONFLICT_ERRORS`: a deadlock, a
        serialization failure, at a statement or at ``COMMIT``) raises that error as it is: a block
        cannot be run again from here — :meth:`run_transaction` can.
        """
        return PooledTransaction(self, isolation, committed)

    async def run_transaction(
        self,
        body: Callable[[Connection], Awaitable[_T]],
        isolation: IsolationLevel = "read_committed",
        *,
        committed: CommitCheck | None = None,
        attempts: int = CONFLICT_ATTEMPTS,
    ) -> _T:
        """``body(conn)`` in a :meth:`transaction`, its result returned once committed; run again, in
        a new transaction, when the server rolls it back for a conflict (:data:`CONFLICT_ERRORS`),
        ``attempts`` times in all, after a short jittered back-off (:func:`conflict_backoff`); the
        last conflict is raised (503 ``database_conflict``).

        Why: a deadlock or a serialization failure says nothing about the request — two transactions
        met, one was rolled back whole, and the same work succeeds once the other is done. Answering
        503 handed the retry to the user for what the service can do in milliseconds.

        ``body`` may run more than once: it must do nothing outside the transaction that must not be
        done twice (no HTTP call, no counter of what was stored, no message sent — do those after
        this returns) and must read again what it decides on (a fresh snapshot each run). An
        Idempotency-Key claimed inside it is rolled back with it, so the run again claims it anew."""
        attempt = 0
        while True:
            attempt += 1
            try:
                async with PooledTransaction(self, isolation, committed) as conn:
                    return await body(conn)
            except CONFLICT_ERRORS as exc:
                if attempt >= attempts:
                    raise
                await conflict_backoff(exc, attempt)

    async def _commit_lost(
        self,
        failure: BaseException,
        committed: CommitCheck | None,
        server_pid: int,
        server: ServerIdentity | None = None,
    ) -> None:
        """The end of a transaction whose ``COMMIT`` (perhaps) went out and whose answer was lost:
        returns when ``committed`` finds it did commit, else raises."""
        failed_at = time.monotonic()
        log.warning(
            "the database connection broke while committing; resolving the outcome",
            extra={"error": f"{type(failure).__name__}: {failure}"[:200]},
        )
        outcome = None if committed is None else await self._resolve(committed, server_pid, failed_at, server)
        ambiguous_commits.labels(
            "unknown" if outcome is None else "committed" if outcome else "not_committed"
        ).inc()
        if outcome is None:
            raise OutcomeUnknown("the connection broke while committing") from failure
        if not outcome:
            raise NotCommitted("the connection broke before the transaction committed") from failure

    async def write_once(
        self,
        query: str,
        *args: Any,
        committed: CommitCheck,
        reread: Reread,
        attempts: int = CONFLICT_ATTEMPTS,
    ) -> asyncpg.Record | None:
        """One statement that commits by itself (no ``BEGIN``/``COMMIT``: one round trip instead of
        three), its first row returned (None: it returned none); for writes that are a single
        statement (one that makes the change and queues its audit event, say: atomic by itself).

        If the connection breaks while the statement is on its way or running, the outcome is
        resolved as for :meth:`transaction`: when ``committed`` finds it did commit (only its answer
        was lost) the row is ``reread`` on a fresh connection; :class:`NotCommitted` when it did not,
        :class:`OutcomeUnknown` when Postgres stays away.

        A statement the server rolls back for a conflict (:data:`CONFLICT_ERRORS`: a deadlock) is
        run again, ``attempts`` times in all, as :meth:`run_transaction` does: one statement in
        autocommit is a whole transaction, with no effect outside it.
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self.connection() as conn:
                    server_pid = conn.get_server_pid()
                    try:
                        row: asyncpg.Record | None = await conn.fetchrow(query, *args)
                        return row
                    except REFUSED_ERRORS:
                        raise  # the server refused the statement: certainly not applied, nothing to resolve
                    except UNAVAILABLE_ERRORS as exc:
                        server = self.server_of(conn)
                        if isinstance(exc, TimeoutError):
                            abandon(conn)
                        failure: BaseException = exc
                break
            except CONFLICT_ERRORS as exc:
                if attempt >= attempts:
                    raise
                await conflict_backoff(exc, attempt)
        failed_at = time.monotonic()
        log.warning(
            "the database connection broke during a write; resolving the outcome",
            extra={"error": f"{type(failure).__name__}: {failure}"[:200]},
        )
        outcome = await self._resolve(committed, server_pid, failed_at, server)
        ambiguous_commits.labels(
            "unknown" if outcome is None else "committed" if outcome else "not_committed"
        ).inc()
        if outcome is None:
            raise OutcomeUnknown("the connection broke while writing") from failure
        if not outcome:
            raise NotCommitted("the connection broke before the write committed") from failure
        async with self.connection() as conn:
            return await reread(conn)

    async def _resolve(
        self, committed: CommitCheck, server_pid: int, failed_at: float, server: ServerIdentity | None = None
    ) -> bool | None:
        """Ask ``committed`` on a fresh connection once the old session is gone; None if Postgres
        stays unreachable for ``outcome_check_seconds``.

        ``server``: where the write's connection was (:meth:`server_of`). When the fresh connection
        reaches another server — the write's was closed because the DSN's name leads elsewhere now
        (:mod:`svckit.dbserver`), or a failover — the old session is not there to wait for, and its
        pid may belong to another, innocent session here (pids are per server): ``committed`` is
        asked at once, and the answer is this server's, the one everybody reads."""
        deadline = failed_at + self.outcome_check_seconds
        delay = 0.05
        while time.monotonic() < deadline:
            try:
                conn = await self.connect()
            except UNAVAILABLE_ERRORS:
                await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                delay = min(delay * 2, 1.0)
                continue
            try:
                if not await self._on_another_server(conn, server) and not await self._session_over(
                    conn, server_pid, failed_at, deadline
                ):
                    return None
                return bool(await committed(conn))
            except UNAVAILABLE_ERRORS:
                continue
            finally:
                with contextlib.suppress(*UNAVAILABLE_ERRORS):
                    await conn.close(timeout=1)
        return None

    @staticmethod
    async def _on_another_server(conn: Any, server: ServerIdentity | None) -> bool:
        """``conn`` reached another server than ``server`` (False when that is not known)."""
        if server is None:
            return False
        try:
            here, _ = await server_identity(conn, timeout=2.0)
        except asyncpg.PostgresError:
            return False
        return not here.same_server(server)

    @staticmethod
    async def _session_over(conn: Any, server_pid: int, failed_at: float, deadline: float) -> bool:
        """Wait until the server session that had the transaction has ended, so that its commit is
        decided (it may still be working on a COMMIT whose client is gone); after a second, end it.

        ``backend_start`` before the failure tells the old session from a new one given its pid.
        """
        asked_to_end = False
        while True:
            age = time.monotonic() - failed_at
            alive = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE pid = $1 AND backend_start < now() - make_interval(secs => $2)",
                server_pid,
                age,
            )
            if not alive:
                return True
            if time.monotonic() >= deadline:
                return False
            if age > 1.0 and not asked_to_end:
                asked_to_end = True
                with contextlib.suppress(asyncpg.PostgresError):
                    await conn.fetchval("SELECT pg_terminate_backend($1)", server_pid)
            await asyncio.sleep(0.05)

    def pool_stats(self) -> dict[str, int]:
        if self._pool is None:
            return {"in_use": 0, "idle": 0, "max": self.max_size}
        size = self._pool.get_size()
        idle = self._pool.get_idle_size()
        return {"in_use": size - idle, "idle": idle, "max": self.max_size}


def _outcome_seen(task: asyncio.Task[None]) -> None:
    """A readiness probe's own round trip may end after every check awaiting it gave up (``/readyz``'s
    bound is shorter than a connect's): its failure was that check's answer already, so it is taken
    here rather than reported by the loop as "Task exception was never retrieved" in the log."""
    if not task.cancelled():
        task.exception()


def milliseconds(seconds: float) -> str:
    """A duration setting's value for Postgres (``"1500ms"``; at least 1 ms: 0 would mean no bound)."""
    return f"{max(1, round(seconds * 1000))}ms"


def abandon(conn: Any) -> None:
    """Close a connection whose statement got no answer within the statement bound
    (``DB_STATEMENT_TIMEOUT_SECONDS``, asyncpg's ``command_timeout``) at once, without a word to
    the server. A server that does not answer (hung: a frozen VM, a stalled disk, a partition) would
    not answer the ``ROLLBACK`` or the release's clean-up either: each waited the bound again, so a
    request took twice the bound or more before its 503. What the session held is rolled back by the
    server when it sees the connection gone."""
    conn.terminate()


class PooledConnection:
    """What :meth:`Database.connection` returns: ``async with`` it for a pooled connection.

    A class rather than a ``contextlib.asynccontextmanager`` generator: the services enter one for
    every statement they send (four per approval decision across two services, one per relay batch),
    and the generator's machinery (a generator object, ``asend``/``athrow``, the wrapper's frames)
    and the acquire's timer were about a fifth of the CPU a use costs in process, asyncpg's acquire and
    release included (``bench/connection_use.py``: ~4 µs of ~21). One use only, as a generator's is.

    The wait for a free connection is bounded by ``connect_timeout`` with ``asyncio.timeout`` around
    asyncpg's acquire, not its ``acquire(timeout=)``: that runs every acquire as a task of its own
    (``wait_for``), idle connection or not; when a connection is idle there is no wait to bound. The
    release keeps the same bound. How the block ends decides what happens to the connection: a
    read-only server's session (:data:`READ_ONLY_ERRORS`) is not pooled again; a statement that got
    no answer within the statement bound (``TimeoutError``) is :func:`abandon`-ed, and so is a block
    that was cancelled (a deadline, a task stopped): its statement may still be running, asyncpg has
    asked the server to cancel it, and its release would wait for the server to confirm that — which
    a hung server never does: the cancellation was held up by the bound and ended as a
    ``TimeoutError``, or, cancelled again meanwhile, left the release failing in a task nobody
    awaited ("Task exception was never retrieved"). Otherwise it goes back to the pool as it is.
    """

    __slots__ = ("_conn", "_database", "_pool")

    def __init__(self, database: Database) -> None:
        self._database = database
        self._pool: asyncpg.Pool | None = None
        self._conn: Connection | None = None

    async def __aenter__(self) -> Connection:
        database = self._database
        pool = self._pool = database.pool
        conn: Connection
        if pool.get_idle_size():
            # an idle connection: asyncpg hands it over without waiting (an idle pooled connection
            # is one waiting in its pool's queue; ``test_an_acquire_with_an_idle_connection_never_
            # waits`` holds asyncpg to it), so there is nothing to bound: no timer to arm and cancel
            # (``asyncio.timeout``: ~4 µs, most of what this adds to a use)
            conn = await pool.acquire()
        else:
            now = asyncio.get_running_loop().time()
            deadline = now + database.connect_timeout
            if database.out_of_slots(now):
                # the pool may not grow: one of its own connections, or 503 at once if it has none
                conn = await database.acquire_released(pool, deadline)
            else:
                try:
                    async with asyncio.timeout_at(deadline):
                        conn = await pool.acquire()
                except asyncpg.TooManyConnectionsError:
                    if not pool.get_size():
                        raise
                    conn = await database.acquire_released(pool, deadline)
        self._conn = conn
        return conn

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        conn, pool = self._conn, self._pool
        assert conn is not None, "exited without being entered"
        assert pool is not None
        self._conn = None
        if exc is not None:
            if isinstance(exc, READ_ONLY_ERRORS):
                conn.terminate()  # a read-only server's session: not pooled again (READ_ONLY_ERRORS)
                await refused_as_read_only(self._database, pool)
            elif isinstance(exc, DISK_FULL_ERRORS):
                disk_full_refusals.inc()  # the session is sound: pooled again (DISK_FULL_ERRORS)
            elif isinstance(exc, LOCK_ERRORS):
                lock_timeouts.inc()  # the session is fine: pooled again (its transaction rolled back)
                self._database._answered_at = time.monotonic()  # the server's answer: it works
            elif isinstance(exc, CONFLICT_ERRORS):
                transaction_conflicts.labels(conflict_reason(exc)).inc()  # sound too (CONFLICT_ERRORS)
                self._database._answered_at = time.monotonic()  # the server's answer too
            elif isinstance(exc, (TimeoutError, asyncio.CancelledError)):
                abandon(conn)
        elif (raw := getattr(conn, "_con", None)) is not None and not raw.is_closed():
            # the server answered (Database.check: a busy pool whose statements are answered is
            # ready); not a block that caught its connection's failure (Database.write_once), whose
            # proxy asyncpg may have detached already (no connection behind it: ``_con`` None)
            self._database._answered_at = time.monotonic()
        await self._give_back(conn, pool)

    async def _give_back(self, conn: Connection, pool: asyncpg.Pool) -> None:
        await pool.release(conn, timeout=self._database.connect_timeout)
        if self._database._release_waiters:
            self._database._released.set()

    async def abandoned(self) -> None:
        """Give back a connection already :func:`abandon`-ed (its statement got no answer, or was
        cancelled): nothing more to do with it, and no answer of the server to note."""
        conn, pool = self._conn, self._pool
        assert conn is not None, "exited without being entered"
        assert pool is not None
        self._conn = None
        await self._give_back(conn, pool)


class PooledQueries:
    """What :attr:`Database.queries` returns: an ``asyncpg.Pool``'s statement methods through the
    kit's :class:`PooledConnection` (see there)."""

    __slots__ = ("_database",)

    def __init__(self, database: Database) -> None:
        self._database = database

    def acquire(self) -> PooledConnection:
        return PooledConnection(self._database)

    async def fetch(self, query: str, *args: Any, timeout: float | None = None) -> list[asyncpg.Record]:
        async with PooledConnection(self._database) as conn:
            return list(await conn.fetch(query, *args, timeout=timeout))

    async def fetchrow(self, query: str, *args: Any, timeout: float | None = None) -> asyncpg.Record | None:
        async with PooledConnection(self._database) as conn:
            row: asyncpg.Record | None = await conn.fetchrow(query, *args, timeout=timeout)
            return row

    async def fetchval(self, query: str, *args: Any, column: int = 0, timeout: float | None = None) -> Any:
        async with PooledConnection(self._database) as conn:
            return await conn.fetchval(query, *args, column=column, timeout=timeout)

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        async with PooledConnection(self._database) as conn:
            result: str = await conn.execute(query, *args, timeout=timeout)
            return result

    async def executemany(self, command: str, args: Any, *, timeout: float | None = None) -> None:
        async with PooledConnection(self._database) as conn:
            await conn.executemany(command, args, timeout=timeout)


class PooledTransaction:
    """What :meth:`Database.transaction` returns: ``async with`` it for a transaction on a pooled
    connection (asyncpg's ``Transaction`` inside a :class:`PooledConnection`), a class for the reason
    that one is. A block that ends without an exception commits; one that raises rolls back, except
    that a statement that got no answer within the statement bound (``TimeoutError``) or a cancelled
    block abandons the connection first (no ``ROLLBACK`` to wait for: the session's end rolls back;
    a cancellation stays a cancellation). A ``COMMIT`` whose
    answer was lost (an error of :data:`UNAVAILABLE_ERRORS` once the block is done) is resolved by
    :meth:`Database._commit_lost` after the connection went back."""

    __slots__ = ("_committed", "_database", "_isolation", "_pid", "_use", "_xact")

    def __init__(self, database: Database, isolation: IsolationLevel, committed: CommitCheck | None) -> None:
        self._database = database
        self._isolation = isolation
        self._committed = committed
        self._use: PooledConnection | None = None
        self._xact: Any = None
        self._pid = 0

    async def __aenter__(self) -> Connection:
        use = self._use = PooledConnection(self._database)
        conn = await use.__aenter__()
        try:
            self._pid = conn.get_server_pid()
            xact = self._xact = conn.transaction(isolation=self._isolation)
            await xact.__aenter__()
        except BaseException as exc:
            await use.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return conn

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        use, xact = self._use, self._xact
        assert use is not None, "exited without being entered"
        conn = use._conn
        assert conn is not None
        failure: BaseException | None = None
        server: ServerIdentity | None = None
        abandoned = isinstance(exc, (TimeoutError, asyncio.CancelledError))
        try:
            if abandoned:
                abandon(conn)  # no ROLLBACK to wait for: the session's end rolls back
            try:
                await xact.__aexit__(exc_type, exc, tb)
            except UNAVAILABLE_ERRORS as error:
                if isinstance(exc, asyncio.CancelledError):
                    pass  # the abandoned session's ROLLBACK failed: the cancellation goes on
                elif exc is not None or isinstance(error, REFUSED_ERRORS):
                    raise  # (a COMMIT the server refused: certainly not committed)
                else:
                    failure = error  # COMMIT was (perhaps) sent and its answer lost
                    server = self._database.server_of(conn)
        except BaseException as error:
            if abandoned:  # only given back: terminated once already (its proxy is detached by then)
                await use.abandoned()
            else:
                await use.__aexit__(type(error), error, error.__traceback__)
            raise
        if abandoned:
            await use.abandoned()
        else:
            await use.__aexit__(exc_type, exc, tb)
        if failure is not None:
            await self._database._commit_lost(failure, self._committed, self._pid, server)


async def refused_as_read_only(database: Database, pool: asyncpg.Pool) -> None:
    """A statement was refused as read-only (:data:`READ_ONLY_ERRORS`). The pool's other connections
    were most likely opened to the same server: each would answer one more write with 503 before
    being dropped, and one used only for reads would keep reading from that server — a demoted
    primary, or a standby behind the new one — for as long as it lives (a failover moves a Service
    or DNS name: open TCP connections stay where they were). So a fresh connection asks where the
    DSN's name leads now (:func:`_replace_if_moved`): to a server that takes writes, every pooled
    connection is replaced at its next use. Started here, not awaited (the refusal's 503 does not
    wait for it); one probe at a time per database, and not again within
    :data:`READ_ONLY_PROBE_SECONDS` of one that found the server still read-only (a failover that is
    not over yet: replacing the pool then would only reconnect to the same standby)."""
    read_only_refusals.inc()
    running = _read_only_probes.get(database)
    if running is not None and not running.done():
        return
    if time.monotonic() - _still_read_only.get(database, -READ_ONLY_PROBE_SECONDS) < READ_ONLY_PROBE_SECONDS:
        return
    _read_only_probes[database] = asyncio.create_task(
        _replace_if_moved(database, pool), name="db-read-only-probe"
    )


_PROBE_ERRORS: tuple[type[BaseException], ...] = (*UNAVAILABLE_ERRORS, asyncpg.PostgresError)


async def _replace_if_moved(database: Database, pool: asyncpg.Pool) -> None:
    try:
        conn = await database.connect(application_name="read-only probe")  # counted; not while out of slots
        try:
            read_only = await conn.fetchval("SELECT current_setting('transaction_read_only')", timeout=2.0)
        finally:
            conn.terminate()
    except _PROBE_ERRORS as exc:
        # unknown (the server away, or out of connection slots): the pool keeps what it has — its
        # connections may still serve reads, and one closed now might not be replaced — and the next
        # refusal asks again
        log.info("read-only probe failed", extra={"error": f"{type(exc).__name__}: {exc}"[:200]})
        return
    if read_only == "on":
        _still_read_only[database] = time.monotonic()
        return
    log.warning(
        "a pooled connection was refused as read-only and the database's address now leads to a "
        "writable server: replacing the pool's connections",
        extra={"schema": database.schema},
    )
    await pool.expire_connections()
    database._address_moved()


#: the probe of each database in flight (:func:`refused_as_read_only`), and when one last found it read-only
_read_only_probes: weakref.WeakKeyDictionary[Database, asyncio.Task[None]] = weakref.WeakKeyDictionary()
_still_read_only: weakref.WeakKeyDictionary[Database, float] = weakref.WeakKeyDictionary()


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset hook: no reset query when a connection goes back to the pool.

    asyncpg's default sends ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` on every
    release: one more round trip per request, a fifth of a simple write's and half of a read's. What
    it clears never exists on the kit's pooled connections: nothing here sets session state (``SET``
    without ``LOCAL``, session advisory locks, ``LISTEN``, cursors ``WITH HOLD``) on them — what
    needs it takes a connection of its own (the migration runner's lock, the outbox relay's LISTEN).
    asyncpg still rolls back a transaction left open and drops listeners before calling this hook,
    and terminates the connection if that fails.
    """


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
