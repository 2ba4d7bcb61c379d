"""Revocation events: the provider publishes every revoked access token to the gateways.

The provider's database is the source of truth (``issued_tokens.revoked_at``); Redis only fans it out
(docs/CONTRACTS.md, "Revocation events"):

* the stream ``<REDIS_KEY_PREFIX>revocations`` holds one entry per revoked access token,
  ``{iss, jti, exp, reason}`` (``exp`` = the token's own expiry, unix seconds); gateways ``XREAD`` it
  and refuse those tokens until ``exp``;
* a revocation is published right after the transaction that made it commits, and the row is marked
  ``published_at``; a publish that failed (Redis down) is retried by :meth:`RevocationPublisher.reconcile`,
  a periodic task, which picks up every unpublished revocation;
* Redis may lose everything (a restart without persistence): the marker key
  ``<REDIS_KEY_PREFIX>revocations:complete`` is set after a full publication, so when the periodic task
  finds it missing it re-publishes every unexpired revocation from the database and sets it again;
* Redis may also lose the stream alone: one that evicts keys under memory pressure (``maxmemory`` with
  an ``allkeys-*`` policy, a managed Redis's default) drops whichever of the two keys it samples, and
  the marker is read with ``EXISTS``, which does not refresh its LRU clock, while every ``XREAD`` and
  ``XADD`` does the stream's. Found missing with its marker kept, the stream was re-published never,
  and the next revocation's ``XADD`` made a new stream holding only itself: a gateway that started
  (or read from ``0``) afterwards accepted every token revoked before. So only the full publication
  creates the stream: every other ``XADD`` is ``NOMKSTREAM``, and one that finds it gone re-publishes
  everything at once; the periodic check takes a missing stream for a missing marker (with nothing
  to publish the stream stays absent, and each check sets the marker again: one ``SET``). The chart
  runs its Redis with ``noeviction`` (docs/runbook.md, "Redis memory"); this is for a Redis that evicts;
* what is published and re-published is every revoked token a gateway may still accept: not expired
  by more than the largest gateway leeway (:data:`GATEWAY_LEEWAY_SECONDS`; a gateway accepts a token
  until ``exp`` plus its leeway, so one that started after Redis lost the stream accepted a revoked
  token that had expired a moment ago, had the provider stopped at ``exp``);
* entries older than the longest access-token lifetime plus the largest gateway leeway (300 s) are
  trimmed by the periodic check: the tokens they name have expired, so no gateway needs them. An
  entry's id is the time *Redis* added it (milliseconds), so its age is measured on Redis's clock
  (``TIME``), never this replica's: a provider whose clock ran ahead of Redis's by more than the
  leeway trimmed revocations of tokens a gateway still accepts, and a gateway that started (or lost
  its place in the stream) then never learnt of them.

* a *revocation cutoff* (``python -m identity after-restore``: the restored ledger does not know the
  access tokens issued after the backup, so revoking its rows cannot reach them) is an entry of
  another shape, ``{iss, issued_before, until, reason}`` (unix seconds, no ``jti``): gateways refuse
  every token of ``iss`` whose ``iat`` is before ``issued_before`` (or that has none) until
  ``until``. The cutoff lives in the database (``revocation_cutoffs``); the periodic check publishes
  it when it is not published yet (after-restore runs while the provider is stopped: the first check
  after the start does it) and re-publishes it with the rest when the marker is missing, and does
  not trim the stream while a cutoff is held (its entry must outlive any trim until ``until``, whatever
  the retention is by then: a shorter ``ACCESS_TOKEN_TTL_SECONDS`` set after the restore, say).
  ``issued_before`` is Postgres's clock and ``iat`` the provider replica's, both provider-side: no
  gateway clock enters the comparison, and the two meet only across the stop-restore-start of the
  runbook's procedure, so a replica clock behind Postgres's by less than that gap issues no refused
  token (a replica that finds its clock behind a held cutoff says so in its log).

Duplicates are harmless (a deny set is idempotent); the order of entries does not matter.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, Literal

from prometheus_client import Counter
from redis.asyncio import Redis
from svckit.db import Database
from svckit.redisguard import RedisGuard

from . import store
from .store import Cutoff, RevokedToken

log = logging.getLogger("identity.revocation")

STREAM = "revocations"
COMPLETE_MARKER = "revocations:complete"
#: The largest leeway past ``exp`` a gateway may grant (``JWT_LEEWAY_SECONDS`` ≤ 300): revocations are
#: published that long past their token's expiry, and kept in the stream that much longer than an
#: access token lives, so a gateway starting late still learns them
GATEWAY_LEEWAY_SECONDS = 300
#: A revocation not published within this many seconds of its commit is picked up by ``reconcile``
#: (the request that made it publishes it itself; this only avoids publishing twice in the meantime).
SETTLE_SECONDS = 1.0
#: What an ``XADD`` round trip did: ``missing`` (``NOMKSTREAM``: the stream is gone, nothing added)
Appended = Literal["added", "missing", "unavailable"]

revocations = Counter(
    "identity_revocations_total",
    "Access tokens revoked, by reason (revoked, refresh_family, consent_withdrawn, logout, "
    "code_replay, refresh_reuse).",
    ["reason"],
)
published = Counter(
    "identity_revocations_published_total",
    "Revocation events written to the Redis stream, by how (inline, retried, republished, cutoff: a "
    "restore's cutoff published) or failed.",
    ["outcome"],
)
# every outcome exported at 0 from the start: TimesheetsRevocationsNotPublished rates the "failed"
# series, and rate()/increase() miss a counter's first value when the series appears with it
for _outcome in ("inline", "retried", "republished", "cutoff", "failed"):
    published.labels(_outcome)


class RevocationPublisher:
    """Writes revocation events to the stream and keeps it complete (see the module docstring)."""

    def __init__(
        self,
        redis: RedisGuard,
        database: Database,
        issuer: str,
        *,
        retention_seconds: int,
    ) -> None:
        self.redis = redis
        self.database = database
        self.issuer = issuer
        self.retention_seconds = retention_seconds
        self.stream = redis.key(STREAM)
        self.marker = redis.key(COMPLETE_MARKER)

    async def _xadd(self, entries: Sequence[dict[Any, Any]], *, create: bool) -> Appended:
        """``XADD`` each entry in one round trip. ``create`` False (``NOMKSTREAM``): where the stream is
        gone, nothing is added and the answer is ``missing`` (the module docstring: only a full
        publication may make a new stream)."""
        stream = self.stream

        async def run(client: Redis) -> Appended:
            async with client.pipeline(transaction=False) as pipe:
                for fields in entries:
                    pipe.xadd(stream, fields, nomkstream=not create)
                ids = await pipe.execute()
            return "missing" if any(entry_id is None for entry_id in ids) else "added"

        return await self.redis.call(run) or "unavailable"

    async def _append(self, revoked: Sequence[RevokedToken], *, create: bool = False) -> Appended:
        return await self._xadd(
            [
                {"iss": self.issuer, "jti": t.jti, "exp": int(t.expires_at.timestamp()), "reason": t.reason}
                for t in revoked
            ],
            create=create,
        )

    async def _append_cutoffs(self, cutoffs: Sequence[Cutoff], *, create: bool = False) -> Appended:
        return await self._xadd(
            [
                {
                    "iss": self.issuer,
                    "issued_before": int(c.issued_before.timestamp()),
                    "until": int(c.keep_until.timestamp()),
                    "reason": c.reason,
                }
                for c in cutoffs
            ],
            create=create,
        )

    async def publish_cutoffs(self, cutoffs: Sequence[Cutoff], outcome: str) -> bool:
        """Publish revocation cutoffs; False (tried again by the next check) when Redis is unavailable."""
        if not cutoffs:
            return True
        appended = await self._append_cutoffs(cutoffs, create=outcome == "republished")
        if appended == "missing":  # the stream is gone: the next check re-publishes everything
            published.labels("failed").inc(len(cutoffs))
            log.warning(
                "revocation cutoffs not published yet (the stream is gone)", extra={"count": len(cutoffs)}
            )
            return False
        if appended == "unavailable":
            published.labels("failed").inc(len(cutoffs))
            log.warning(
                "revocation cutoffs not published yet (Redis unavailable)", extra={"count": len(cutoffs)}
            )
            return False
        published.labels(outcome).inc(len(cutoffs))
        await store.mark_cutoffs_published(self.database.queries, cutoffs)
        for cutoff in cutoffs:
            log.info(
                "revocation cutoff published: the gateways refuse tokens issued before it",
                extra={
                    "issued_before": cutoff.issued_before.isoformat(),
                    "until": cutoff.keep_until.isoformat(),
                    "reason": cutoff.reason,
                },
            )
        return True

    @staticmethod
    def check_clock(cutoffs: Sequence[Cutoff]) -> None:
        """Say so when this replica's clock is behind a held cutoff (Postgres's clock): the ``iat`` of
        the tokens it issues now is before the cutoff, and the gateways refuse them until its clock
        passes it. Checked by every replica at every periodic check (the condition lasts seconds)."""
        now = time.time()
        for cutoff in cutoffs:
            if now < cutoff.issued_before.timestamp():
                log.error(
                    "this replica's clock is behind the database's revocation cutoff: the tokens it "
                    "issues until its clock passes the cutoff are refused by the gateways",
                    extra={
                        "issued_before": cutoff.issued_before.isoformat(),
                        "behind_seconds": round(cutoff.issued_before.timestamp() - now, 3),
                    },
                )

    async def publish(self, revoked: Sequence[RevokedToken], outcome: str = "inline") -> bool:
        """Publish revocations that just committed; False (retried later) when Redis is unavailable."""
        if not revoked:
            return True
        for token in revoked:
            if outcome == "inline":
                revocations.labels(token.reason).inc()
        appended = await self._append(revoked)
        if appended == "missing":
            # committed already: the full publication includes these
            return await self.republish(reason="the stream is gone, its marker is not (evicted?)")
        if appended == "unavailable":
            published.labels("failed").inc(len(revoked))
            log.warning("revocations not published yet (Redis unavailable)", extra={"count": len(revoked)})
            return False
        published.labels(outcome).inc(len(revoked))
        await store.mark_published(self.database.queries, [token.jti for token in revoked])
        return True

    async def reconcile(self) -> None:
        """The periodic check: re-publish everything when Redis lost the stream, else publish what a
        failed attempt left behind, and trim expired entries."""
        marker, stream = self.marker, self.stream
        present = await self.redis.call(lambda client: client.exists(marker, stream))
        if present is None:
            return  # Redis unavailable: the next run tries again
        pool = self.database.queries
        cutoffs = await store.active_cutoffs(pool)
        self.check_clock(cutoffs)
        if present < 2:  # the marker or the stream is gone (a restart, an eviction)
            await self.republish(cutoffs, reason="" if present == 0 else "the stream or its marker is gone")
            return
        pending = await store.unexpired_revocations(
            pool, unpublished_only=True, settle_seconds=SETTLE_SECONDS, leeway_seconds=GATEWAY_LEEWAY_SECONDS
        )
        await self.publish(pending, outcome="retried")
        if not await self.publish_cutoffs([c for c in cutoffs if not c.published], outcome="cutoff"):
            return
        if not cutoffs:  # a held cutoff's entry stays until its ``until`` (the module docstring)
            await self.trim()

    async def republish(self, cutoffs: Sequence[Cutoff] | None = None, *, reason: str = "") -> bool:
        """Publish every revocation a gateway may still accept and every held cutoff, creating the
        stream, then set the marker; False (the next check tries again) when Redis fails meanwhile."""
        pool = self.database.queries
        if cutoffs is None:
            cutoffs = await store.active_cutoffs(pool)
        everything = await store.unexpired_revocations(
            pool, unpublished_only=False, leeway_seconds=GATEWAY_LEEWAY_SECONDS
        )
        if everything and await self._append(everything, create=True) != "added":
            published.labels("failed").inc(len(everything))
            return False
        if not await self.publish_cutoffs(cutoffs, outcome="republished"):
            return False
        marker = self.marker
        if await self.redis.call(lambda client: client.set(marker, "1")) is None:
            return False
        if everything:
            published.labels("republished").inc(len(everything))
            await store.mark_published(pool, [token.jti for token in everything])
            if reason:
                log.warning(
                    "re-published every unexpired revocation: " + reason, extra={"count": len(everything)}
                )
            else:
                log.info("re-published every unexpired revocation", extra={"count": len(everything)})
        return True

    async def trim(self) -> None:
        """Drop entries older than the retention by Redis's clock (exactly: revocations are few, and a
        test can see it)."""
        stream, retention_ms = self.stream, self.retention_seconds * 1000

        async def run(client: Redis) -> None:
            seconds, microseconds = await client.time()
            min_id = seconds * 1000 + microseconds // 1000 - retention_ms
            await client.xtrim(stream, minid=str(max(min_id, 0)), approximate=False)

        await self.redis.call(run)


class Revoker:
    """Revocations made outside the token endpoint (logout, consent withdrawal): the state change and
    the revocation commit in one transaction, then the revocations are published."""

    def __init__(self, database: Database, publisher: RevocationPublisher) -> None:
        self.database = database
        self.publisher = publisher

    async def end_session(self, session_id: str) -> list[RevokedToken]:
        """Sign-out: the session ends and every token issued through it is revoked."""
        async with self.database.transaction() as conn:
            session_hash = await store.delete_session(conn, session_id)
            revoked = await store.revoke_session(conn, session_hash, "logout")
        await self.publisher.publish(revoked)
        return revoked

    async def replace_session(self, session_id: str) -> None:
        """A new sign-in in the same browser: the old session ends and can renew nothing any more
        (its refresh tokens go); the access tokens it issued live out their short lives."""
        async with self.database.transaction() as conn:
            session_hash = await store.delete_session(conn, session_id)
            await store.revoke_session_refresh_tokens(conn, session_hash)

    async def withdraw_consent(self, subject: str, client_id: str) -> list[RevokedToken]:
        """The user removes a third-party app: its consent and every token it holds for the user go."""
        async with self.database.transaction() as conn:
            if not await store.revoke_consent(conn, subject, client_id):
                return []
            revoked = await store.revoke_client_grants(conn, subject, client_id, "consent_withdrawn")
        await self.publisher.publish(revoked)
        return revoked
