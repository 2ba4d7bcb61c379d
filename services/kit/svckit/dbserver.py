"""Which Postgres server a connection reached, and a periodic check that the pool's connections are
all on the server the database's address leads to now.

Why: a failover moves a Service or DNS name; open TCP connections stay with the server they reached.
When the old primary goes down (fenced) those connections break and the pool replaces them. When it
stays up and *writable* — a network partition a failover manager took for its death, an operator
promoting the standby by hand — nothing breaks: the pool's connections go on writing to the old
server while the connections opened after the move write to the new one. Acknowledged writes land
on a server nobody reads any more (lost when it is rebuilt as a standby), and two requests read
different databases (tests/faults/test_split_brain.py: every write of a 7 s run after the move went
to the old primary, and approvals answered 500 when a decision written on one server was looked for
on the other).

So every pooled connection records at its start which server it reached (:func:`server_identity`:
the cluster's ``system_identifier`` and the postmaster's start time — a standby made by
``pg_basebackup`` shares the first, never the second; a promoted standby keeps both, and its
sessions rightly stay), and every ``DB_LEADER_CHECK_SECONDS`` one fresh connection asks where the
address leads (:func:`check_server`). Connections on any other server are closed at once — in use or
not: a statement running on one fails as a broken connection does, and a write's outcome is then
looked for on the server the address leads to (:meth:`svckit.db.Database._resolve`), so what the
client hears agrees with the database everybody reads — and the pool's older connections are
expired; the outbox relay's LISTEN connection moves too (:meth:`svckit.db.Database.on_address_moved`).

What this cannot do: writes acknowledged by the old server between the move and the next check stay
there (at most one interval plus a connection). Fencing the old primary is the remedy
(docs/runbook.md, "Split brain"). Cost: one connection per interval per process, nothing per
request. When the check cannot connect (Postgres away, out of connection slots), nothing is replaced:
the pool keeps what it has.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
from typing import TYPE_CHECKING, Any, NamedTuple

import asyncpg
from prometheus_client import Counter

from . import db  # svckit.db imports this module: its names are read at call time only

if TYPE_CHECKING:
    from .db import Database

log = logging.getLogger("svckit.db")

#: one round trip; every function executable by PUBLIC by default (Postgres 15)
IDENTITY_SQL = (
    "SELECT (SELECT system_identifier FROM pg_control_system()) AS system_identifier,"
    " pg_postmaster_start_time() AS started, host(inet_server_addr()) AS address,"
    " inet_server_port() AS port, pg_is_in_recovery() AS standby"
)
#: where ``pg_control_system()`` was revoked from PUBLIC (some managed offerings): the postmaster's
#: start time alone (to the microsecond) still tells two running servers apart
IDENTITY_SQL_WITHOUT_SYSTEM = IDENTITY_SQL.replace(
    "(SELECT system_identifier FROM pg_control_system())", "0::bigint"
)

server_moves = Counter(
    "db_server_moved_total",
    "Times the database's address was found leading to another Postgres server than some of the "
    "pool's open connections were on (which were then closed), by what those connections had "
    "reached: old=primary, a server that took writes when they connected (a failover whose old "
    "primary stayed up: writes acknowledged there are on a server nobody reads), old=standby.",
    ["old"],
)
for _old in ("primary", "standby"):
    server_moves.labels(_old)
server_checks_failed = Counter(
    "db_server_check_failures_total",
    "Periodic checks of where the database's address leads that could not connect or ask "
    "(nothing is replaced then).",
)


class ServerIdentity(NamedTuple):
    """What tells one running Postgres server from another: its cluster and when its postmaster
    started. ``where`` is for the log only (one server may be reached at several addresses)."""

    system_identifier: int
    started: dt.datetime
    where: str = ""

    def same_server(self, other: ServerIdentity) -> bool:
        return self.system_identifier == other.system_identifier and self.started == other.started

    def describe(self) -> str:
        where = self.where or "socket"
        return f"{where} (system {self.system_identifier}, up since {self.started.isoformat()})"


async def server_identity(conn: Any, timeout: float | None = None) -> tuple[ServerIdentity, bool]:
    """The server ``conn`` reached, and whether it is a standby (in recovery). Raises
    ``asyncpg.InsufficientPrivilegeError`` only if ``pg_postmaster_start_time()`` is not allowed."""
    try:
        row = await conn.fetchrow(IDENTITY_SQL, timeout=timeout)
    except asyncpg.InsufficientPrivilegeError:
        row = await conn.fetchrow(IDENTITY_SQL_WITHOUT_SYSTEM, timeout=timeout)
    where = f"{row['address']}:{row['port']}" if row["address"] is not None else ""
    return ServerIdentity(int(row["system_identifier"]), row["started"], where), bool(row["standby"])


async def check_server(database: Database) -> bool:
    """Ask on a fresh connection where ``database``'s address leads; close the pooled connections
    that are on another server. True when some were (counted in :data:`server_moves`, one warning)."""
    pool = database._pool
    held = database._servers
    if pool is None or not held:
        return False
    try:
        conn = await database.connect(application_name=f"{database.application_name}-server-check")
        try:
            current, standby = await server_identity(conn, timeout=2.0)
        finally:
            conn.terminate()
    except _check_errors() as exc:
        server_checks_failed.inc()
        if not database._server_check_failed:  # once per streak, not once per interval
            log.info(
                "could not check which database server the address leads to; keeping the pool",
                extra={"error": f"{type(exc).__name__}: {exc}"[:200]},
            )
        database._server_check_failed = True
        return False
    database._server_check_failed = False
    # a connection already closed (its server went down) is replaced at its next use anyway
    stale = [
        conn
        for conn, (identity, _) in list(held.items())
        if not conn.is_closed() and not identity.same_server(current)
    ]
    if not stale:
        return False
    old = {held[conn][0].describe() for conn in stale if conn in held}
    wrote_there = any(not held[conn][1] for conn in stale if conn in held)
    await pool.expire_connections()  # a connection still opening to the old server is not reused
    for conn in stale:
        # a statement running on it fails as on a broken connection; its note stays (a write's
        # outcome is then resolved knowing it was on another server: Database._resolve), and a
        # closed connection is not compared again
        conn.terminate()
    server_moves.labels("primary" if wrote_there else "standby").inc()
    log.warning(
        "the database's address leads to another server than some pooled connections were on: "
        "closed them (a failover whose old primary is still up? fence it)",
        extra={
            "schema": database.schema,
            "closed": len(stale),
            "old_server": sorted(old)[:3],
            "old_server_took_writes": wrote_there,
            "new_server": current.describe(),
            "new_server_standby": standby,
        },
    )
    database._address_moved()
    return True


async def watch_server(database: Database, interval: float) -> None:
    """:func:`check_server` every ``interval`` seconds (±10 %, so that replicas do not connect in
    step), until cancelled; an unexpected error is logged and the watch goes on."""
    while True:
        await asyncio.sleep(interval * (0.9 + 0.2 * random.random()))
        try:
            await check_server(database)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("database server check failed")


def _check_errors() -> tuple[type[BaseException], ...]:
    """What a failed check raises: :data:`svckit.db.UNAVAILABLE_ERRORS` (read at call time: that
    module imports this one) and any refusal by the server."""
    return (*db.UNAVAILABLE_ERRORS, asyncpg.PostgresError)
