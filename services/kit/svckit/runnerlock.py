"""The advisory locks that serialise migration runs, taken so that no other role can hold them up.

Migrations (:mod:`svckit.migrations`, :mod:`svckit.roles`) run as the owner and serialise on
advisory locks: a run per schema, and the grants on the database. An advisory lock needs no
privilege, so any role that may connect — a service's runtime role, stolen from its pod — could take
the same key and keep it, and the pre-upgrade Job would wait behind it for ever. Only a migration run,
connected as the owner, has a reason to hold these keys: a session of another role holding one is
ended (``pg_terminate_backend``: the owner must be a superuser or hold ``pg_signal_backend``) with a
warning naming its role, and the run goes on. Where the owner may not end it, the run says so, in the
log, every half minute while it waits. Another run of the owner's own is waited for, as before.
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg

log = logging.getLogger("svckit.migrations")

#: granted holders of advisory key $1 (one bigint key: classid the high, objid the low 32 bits) in
#: this database whose role is not this session's
STRANGERS = """
SELECT a.pid, a.usename, a.application_name
FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid = ($1::bigint >> 32)::oid AND l.objid = ($1::bigint & 4294967295)::oid
  AND a.usename IS DISTINCT FROM current_user
"""
SAY_EVERY_SECONDS = 30.0


async def take(
    conn: asyncpg.Connection, key: int, what: str, *, transaction: bool, poll_seconds: float = 0.5
) -> None:
    """Take advisory lock ``key`` (``what`` names it in the log): for the session, or for the
    transaction ``conn`` is in (``transaction``), ending sessions of other roles that hold it."""
    attempt = "SELECT pg_try_advisory_xact_lock($1)" if transaction else "SELECT pg_try_advisory_lock($1)"
    said = float("-inf")
    while not await conn.fetchval(attempt, key):
        for holder in await conn.fetch(STRANGERS, key):
            context = {"lock": what, "holder_role": holder["usename"], "holder_pid": holder["pid"]}
            try:
                ended = await conn.fetchval("SELECT pg_terminate_backend($1)", holder["pid"])
            except asyncpg.InsufficientPrivilegeError:
                ended = False
            if ended:
                log.warning("ended a session of another role holding a migration lock", extra=context)
            elif time.monotonic() - said >= SAY_EVERY_SECONDS:
                said = time.monotonic()
                log.error(
                    "a session of another role holds a migration lock, and this role may not end it "
                    "(grant it pg_signal_backend, or end that session by hand)",
                    extra=context,
                )
        await asyncio.sleep(poll_seconds)


__all__ = ["take"]
