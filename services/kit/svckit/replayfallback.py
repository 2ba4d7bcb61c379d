"""The replay memory's fallback in Postgres, for while Redis is unavailable.

Why: with Redis down a replica cannot know which nonces the others accepted, and refusing every unsafe
request (503 ``replay_store_unavailable``) stopped all writes for as long as Redis was away — against
the design's "with Redis down the platform keeps working, just colder". Every service that checks
signed requests already has Postgres, shared by all its replicas, so while Redis is unavailable an
unsafe request's nonce is recorded there instead: ``INSERT … ON CONFLICT (nonce) DO NOTHING`` into
``identity_replay`` of the service's own schema (kit migration set ``replay``), one autocommit round
trip, with the same expiry as in Redis. Inserted: accept; there already: 401 ``replay``; the database
unavailable too: 503 ``replay_store_unavailable`` as before — now only when both are down.

When it is used (:class:`svckit.replay.ReplayMemory` decides), and what that leaves open:

* **Redis up: nothing goes to Postgres.** The hot path stays one batched Redis round trip (~15 us of
  the service's CPU per nonce on the replay memory's own wire). Recording every unsafe nonce in
  Postgres as well would close gap 1 below, but costs a database round trip per write on every
  replica all the time, to cover an outage: measured here (asyncpg pool, the shared 2-core machine,
  3,000 records), ~155 us of the service's CPU and ~370 us of latency per lone write, ~115 us and
  ~230 us at 16 concurrent, plus the database's own work and WAL; not taken.
* **Redis unavailable** (this replica's Redis round trip failed, or its circuit is open): unsafe
  nonces go to Postgres; safe methods go on with the replica's own memory, as before.
* **Redis refusing writes but serving reads** (full under ``noeviction``: ``OOM``; read-only;
  :func:`svckit.redisguard.refuses_writes_only`): as unavailable, but each nonce whose ``SET NX``
  was refused (or not sent: the circuit is open for such a refusal) is first looked up there
  (``EXISTS``, one round trip per batch): one recorded before is a replay, whatever the method; one
  that is not goes on as above.
* **For one window after the replica last found Redis unavailable**, unsafe nonces recorded in Redis
  are also recorded in Postgres, and a conflict there is a replay. A nonce another replica accepted
  through Postgres during the outage (it cannot be in Redis) is so refused here once Redis is back,
  and while the replicas' circuits close at different moments (each its ``REDIS_RETRY_SECONDS``).
  Should the database be unavailable then, Redis's verdict stands (Redis is back: writes are not
  refused for want of the fallback).

Residual, stated honestly (the window is ``2 * IDENTITY_MAX_SKEW_SECONDS + 2`` s, 122 s by default):

1. A nonce accepted through Redis by replica A in the window before the outage can be replayed, once,
   to another replica B during the outage: B's fallback table never saw it (it is in A's own memory
   and in the Redis that is down). The replay must have been captured on the internal network, and be
   sent within the window of the original; a replay to A itself is refused (A's own memory). Once
   Redis is back, A writes its whole window into it again (:class:`svckit.replay.ReplayMemory`), so
   this ends with the outage, also when Redis came back empty (a restart closes A's connection,
   which A takes as a sign of it even when its next request finds Redis back) — unless A was
   restarted itself. Not so while Redis is only full (or read-only): the nonce is still readable
   there, and B refuses it (the lookup above); before, B took ``OOM`` for an outage and accepted it.
2. A replica that never found Redis unavailable (no request reached it during the outage) does not
   look at Postgres after it: a nonce accepted through Postgres elsewhere in the outage's last window
   can be replayed to it, once, right after Redis comes back — until the replica that accepted it
   has written its window back into Redis (within ``REDIS_RETRY_SECONDS`` of Redis answering).
3. A partition in which some replicas reach Redis and others do not splits the memory in two for its
   duration (each half refuses its own replays, not the other's).

Closing 1 without a round trip per write would mean refusing writes for the first window of every
outage (what was accepted before it expires by then): a minute of 503s for each blip, which is what
this fallback exists to avoid.

Expired rows are deleted by :meth:`FallbackMemory.purge` (a :class:`~svckit.tasks.PeriodicTask` the
app runs), at most ``PURGE_BATCH`` rows per run and again at once while more are due. A conflict with
an expired row not yet purged is a replay: its timestamp is stale, so the request was refused before
it got here, unless a sender reused a nonce, which is refused too.
"""

from __future__ import annotations

import logging
from typing import Literal

import asyncpg
from prometheus_client import Counter

from .db import UNAVAILABLE_ERRORS, Database

log = logging.getLogger("svckit.replay")

FallbackVerdict = Literal["fresh", "replay", "unavailable"]

#: rows the purge deletes at most per run (it runs again at once while it deleted that many)
PURGE_BATCH = 5000
#: seconds between purges (and the task's name, for background_task_runs_total)
PURGE_INTERVAL = 60.0
PURGE_TASK = "identity-replay-purge"

fallback_total = Counter(
    "identity_replay_fallback_total",
    "Nonces of unsafe signed requests checked in the replay memory's Postgres fallback (Redis "
    "unavailable, or within a window after it was), by outcome: accepted, replay (refused 401), "
    "unavailable (the database too: refused 503 replay_store_unavailable).",
    ["outcome"],
)
for _outcome in ("accepted", "replay", "unavailable"):
    fallback_total.labels(_outcome)

_RECORD = (
    "INSERT INTO identity_replay (nonce, expires_at) VALUES ($1, now() + make_interval(secs => $2)) "
    "ON CONFLICT (nonce) DO NOTHING RETURNING true"
)
_PURGE = (
    "DELETE FROM identity_replay WHERE nonce IN (SELECT nonce FROM identity_replay "
    "WHERE expires_at < now() ORDER BY expires_at LIMIT $1)"
)


class FallbackMemory:
    """The nonces recorded in ``identity_replay`` of the service's schema (see the module docstring)."""

    def __init__(self, database: Database, ttl_seconds: int, *, timeout: float = 2.0) -> None:
        self.database = database
        self.ttl = float(ttl_seconds)
        # a hung database must not hold the request for the pool's command timeout (30 s)
        self.timeout = timeout
        self._misconfigured = False  # a refusal other than unavailability was logged (said once)

    async def record(self, nonce: str) -> FallbackVerdict:
        """``fresh`` (recorded now), ``replay`` (there already) or ``unavailable`` (the database is
        not there, or refused: the table missing, the role without INSERT — logged once)."""
        try:
            async with self.database.connection() as conn:
                inserted = await conn.fetchval(_RECORD, nonce, self.ttl, timeout=self.timeout)
        except UNAVAILABLE_ERRORS:
            fallback_total.labels("unavailable").inc()
            return "unavailable"
        except asyncpg.PostgresError as exc:
            if not self._misconfigured:
                self._misconfigured = True
                log.warning(
                    "the replay memory's fallback table cannot be written (is the kit migration set "
                    "'replay' in migrations/kit.txt, and migrated?)",
                    extra={"error": type(exc).__name__},
                )
            fallback_total.labels("unavailable").inc()
            return "unavailable"
        verdict: FallbackVerdict = "fresh" if inserted else "replay"
        fallback_total.labels("accepted" if inserted else "replay").inc()
        return verdict

    async def purge(self) -> bool:
        """Delete up to :data:`PURGE_BATCH` expired nonces; True when there may be more (run again)."""
        async with self.database.connection() as conn:
            status = await conn.execute(_PURGE, PURGE_BATCH, timeout=30.0)
        deleted = int(status.rsplit(" ", 1)[-1]) if status.startswith("DELETE") else 0
        return deleted >= PURGE_BATCH
