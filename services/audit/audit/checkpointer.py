"""The checkpoint signer: a supervised periodic task that signs the chain's head when it grew.

Each run, on one replica at a time (a table lock, ``checkpoint_lock``; the others find the fresh
checkpoint and do nothing): read the newest checkpoint and verify its signature; verify the records
appended since — the checkpoint's head must still be in place and every later record must link to it —
and only then sign the new head as checkpoint ``n + 1`` chained to it, store it, and write it as one
JSON log line (a copy outside the database, wherever the logs are shipped). A checkpoint therefore
never vouches for a history that does not extend the one signed before.

The signer refuses, signs nothing and logs an error (``audit_checkpoints_total{outcome="refused"}``)
when the newest checkpoint does not verify, when the chain no longer extends it, or when checkpoints
this process signed have disappeared from the database (a replica that stays up notices what a
restarted one cannot: see the README, "What checkpoints detect").

Before anything else each run checks the trail's watermark in Redis (:mod:`audit.watermark`): when
it says the database was put back to an earlier point (a restore of the schema), checkpoint numbers
up to the watermark's were signed for heads the database no longer has, and signing the next number
after the database's newest would sign one of them again for another head. The signer then signs
nothing (``audit_checkpoints_total{outcome="rolled_back"}``, an error log) until the operator accepted
the loss (``python -m audit accept-restore``); from then on it signs the number after the
watermark's, chained to the database's newest checkpoint. It writes each checkpoint it signed as the
new watermark once its transaction committed. Without an answer from Redis it signs as before (the
platform works without Redis); a rollback meanwhile is found when Redis answers again.

A new head is signed at most every ``interval`` seconds; an unchanged head is signed again only under
a new signing key, so that after a rotation the newest checkpoint verifies with the current key and the
previous one can be retired.

Replicas of two configurations run side by side while the Deployment rolls (RollingUpdate,
``maxUnavailable: 0``): a new pod signs under a key an old pod has never been given. A newest
checkpoint signed by a key this replica does not know is therefore not, at first, a refusal: the
replica stands aside (``audit_checkpoints_total{outcome="unknown_key"}``, a warning) and leaves the
signing to the replicas that know the key. A rollout ends within minutes; a key still unknown
``UNKNOWN_KEY_GRACE_SECONDS`` after this replica first met it (a replica left on an old Secret, or
a row with a made-up ``kid`` written by someone with database rights) is refused as before
(:mod:`audit.keygrace`; the background verifier gives them the same grace). The runbook's rotation
gives every pod the new key before any pod signs with it (docs/runbook.md, "Audit checkpoint keys"),
so that no old pod meets a key it does not know.
"""

from __future__ import annotations

import logging
import random
from datetime import UTC, datetime

from svckit.clock import SYSTEM_CLOCK, Clock
from svckit.contracts.audit import Anchor
from svckit.db import Connection
from svckit.tasks import PeriodicTask

from . import metrics
from .checkpoints import GENESIS_DIGEST, Checkpoint, CheckpointKeys, InvalidCheckpoint, parse
from .keygrace import UnknownKeyGrace
from .store import AuditStore
from .verifier import UNREACHABLE
from .watermark import Finding, TrailWatermark, Watermark

log = logging.getLogger("audit.checkpoints")


class _StandAside(Exception):
    """The newest checkpoint's key is unknown here, within the grace: sign nothing, refuse nothing."""


class Checkpointer:
    def __init__(
        self,
        store: AuditStore,
        keys: CheckpointKeys,
        interval: float,
        clock: Clock = SYSTEM_CLOCK,
        watermark: TrailWatermark | None = None,
    ) -> None:
        self.store = store
        self.keys = keys
        self.interval = interval
        self.clock = clock
        self.watermark = watermark  # None: no check against the trail's watermark (tests of the rest)
        self._unwatched = False  # whether the last run signed without an answer from Redis (logged once)
        self.last_signed: Checkpoint | None = None  # by this process: survives what the database loses
        # keys of newer replicas (audit.keygrace), and since when one has been in sight
        self.grace = UnknownKeyGrace(clock, since=metrics.unknown_key_since.labels("audit-checkpoint"))

    def _refuse(self, reason: str, **context: object) -> None:
        metrics.checkpoints.labels("refused").inc()
        log.error("audit checkpoint refused: " + reason, extra={"reason": reason, **context})

    def _known(self, checkpoint: Checkpoint, number: int) -> Checkpoint:
        """``checkpoint`` when its key is one of this replica's (or has stayed unknown past the grace:
        then :meth:`~audit.checkpoints.PublicKeys.check` refuses it); :class:`_StandAside` while a key
        this replica has not been given may still be a newer replica's (see the module docstring)."""
        kid = checkpoint.key_id
        if self.keys.known(kid):
            self.grace.forget()
            return checkpoint
        if not self.grace.tolerates([kid]):
            return checkpoint
        metrics.checkpoints.labels("unknown_key").inc()
        log.warning(
            "audit checkpoint not signed: the newest checkpoint is signed by a key this replica does not "
            "know (a newer replica's, while the audit Deployment rolls?); standing aside",
            extra={"number": number, "key_id": kid, "seconds_left": round(self.grace.seconds_left(kid))},
        )
        raise _StandAside

    async def _watermark(self, conn: Connection) -> Finding | None:
        """The watermark's finding (None without a watermark, or while Redis does not answer)."""
        if self.watermark is None:
            return None
        finding = await self.watermark.check(conn)
        unwatched = finding.state == "unknown"
        if unwatched and not self._unwatched:
            log.warning(
                "audit checkpoints are signed without checking the trail's watermark: Redis does not "
                "answer (a rollback meanwhile is found once it does)"
            )
        self._unwatched = unwatched
        return None if unwatched else finding

    async def run_once(self) -> Checkpoint | None:
        """One attempt; the checkpoint signed, or None (nothing new, another replica did, refused)."""
        checkpoints = self.store.checkpoints
        async with self.store.database.transaction() as conn:
            # a table of the schema's own (0012), not an advisory lock another role could take
            await conn.execute(f"LOCK TABLE {checkpoints.schema}.checkpoint_lock IN EXCLUSIVE MODE")
            finding = await self._watermark(conn)
            if finding is not None and finding.state == "rolled_back":
                metrics.checkpoints.labels("rolled_back").inc()
                log.error(
                    "audit checkpoint not signed: the audit trail was rolled back; run `python -m audit "
                    "accept-restore` once the loss is recorded (docs/runbook.md, Backup and restore)",
                    extra={"finding": finding.report()},
                )
                return None
            stored = await checkpoints.latest(conn)
            last: Checkpoint | None = None
            if stored is not None:
                try:
                    last = self.keys.check(self._known(parse(stored.jws), stored.number))
                except _StandAside:
                    return None
                except InvalidCheckpoint as exc:
                    self._refuse(f"the newest checkpoint {stored.number} does not verify ({exc})")
                    return None
            mine = self.last_signed
            accepted = finding.watermark if finding is not None and finding.state == "accepted" else None
            if accepted is not None and mine is not None and mine.number <= accepted.number:
                mine = self.last_signed = None  # among the checkpoints the operator accepted lost
            if mine is not None and (
                last is None
                or last.number < mine.number
                or (last.number == mine.number and last.jws != mine.jws)
            ):
                self._refuse(
                    f"checkpoint {mine.number}, signed by this process, is no longer in the database",
                    newest=stored.number if stored else None,
                )
                return None
            now = datetime.fromtimestamp(self.clock.time(), UTC)
            if last is not None:
                metrics.checkpoint_latest.set(last.signed_at.timestamp())
                fresh = (now - last.signed_at).total_seconds() < self.interval / 2
                if fresh and last.key_id == self.keys.signing_kid:
                    metrics.checkpoints.labels("unchanged").inc()
                    return None
            since = Anchor(seq=last.seq, hash=last.head) if last is not None and last.seq > 0 else None
            verification = await self.store.verify(since=since, observe=False)
            if not verification.ok:
                self._refuse(
                    "the chain does not extend the newest checkpoint",
                    first_bad=verification.first_bad,
                    detail=verification.reason,
                )
                return None
            head = verification.head
            if head is None or (
                last is not None and head.seq == last.seq and last.key_id == self.keys.signing_kid
            ):
                metrics.checkpoints.labels("unchanged").inc()
                return None
            number = last.number + 1 if last is not None else 1
            if finding is not None:  # past every number signed before, after an accepted rollback too
                number = max(number, finding.next_number)
            checkpoint = self.keys.sign(
                number=number,
                seq=head.seq,
                head=head.hash,
                signed_at=now,
                prev=last.digest if last is not None else GENESIS_DIGEST,
            )
            await checkpoints.insert(conn, checkpoint)
            key = await self.watermark.key(conn) if self.watermark is not None else None
        if self.watermark is not None and key is not None:  # committed: the watermark may name it now
            await self.watermark.write(key, Watermark.of(checkpoint))
        self.last_signed = checkpoint
        metrics.checkpoints.labels("signed").inc()
        metrics.checkpoint_latest.set(checkpoint.signed_at.timestamp())
        log.info("audit checkpoint signed", extra={"checkpoint": checkpoint.log_fields()})
        return checkpoint

    def task(self) -> PeriodicTask:
        """Every ``interval`` ± 10 %, the first run soon after start (replicas spread out)."""
        return PeriodicTask(
            "audit-checkpoint",
            self.interval,
            self.run_once,
            clock=self.clock,
            initial_delay=min(self.interval, 5.0) * random.uniform(0.5, 1.0),
            jitter=0.1,
            expected=UNREACHABLE,
            stop_timeout=2.0,
            logger=log,
        )
