"""``python -m audit accept-restore --reason TEXT``: the operator accepts that a restore lost records.

When the audit schema was put back to an earlier point than its watermark (:mod:`audit.watermark`),
the records signed after the backup are gone for good, the service reports it
(``audit_trail_rolled_back`` 1, alert TimesheetsAuditTrailRolledBack) and its signer signs nothing:
every number after the database's newest checkpoint up to the watermark's was signed for a head the
database no longer has. Nothing the service can do brings them back; what remains is to record the
loss and go on. This command does both, with the audit Deployment's environment (its database role,
Redis user and ``AUDIT_CHECKPOINT_KEYS``):

1. it checks the watermark against the database as the service does, and does nothing when they
   agree (exit 0, ``"state": "consistent"`` or ``"accepted"``);
2. it refuses (exit 1) when the database's newest checkpoint does not verify with the service's keys:
   that is tampering to investigate (TimesheetsAuditChainBroken), not a restore to accept;
3. it appends ``audit.restore_accepted`` (source and actor the audit service, the reason given, the
   restored and the lost checkpoints) to the trail — its id derived from the two checkpoints, so
   that running the command again stores it once;
4. it marks the watermark accepted for the database's newest checkpoint (replacing only the value it
   read): the signal clears at the next check, and the signer goes on with the number after the
   watermark's, chained to the database's newest checkpoint — the lost numbers are never signed again.

It prints a JSON report (the watermark, the restored checkpoint, the lost checkpoint numbers and
signed records, the next number) and exits 0 (accepted, or nothing to accept), 1 (refused, or the
watermark changed meanwhile: run it again), 2 (bad arguments or settings), 3 (the database or Redis
unreachable).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import uuid
from typing import Any

from svckit.contracts.audit import AuditEvent
from svckit.db import LOCK_ERRORS, LOCK_REFUSAL, Database
from svckit.identity import Identity
from svckit.redisguard import RedisGuard

from .checkpoints import GENESIS_DIGEST, InvalidCheckpoint
from .offline import DATABASE_FAILURES
from .settings import AuditSettings
from .store import AuditStore
from .watermark import Base, Finding, TrailWatermark, Watermark

SCHEMA = "audit"
REFUSED, USAGE, UNREACHABLE = 1, 2, 3
#: the namespace of the acceptance record's id (uuid5 of the watermark's and the restored digests)
ACCEPTANCE_NAMESPACE = uuid.UUID("8c0f3a52-5f1e-4d8e-9a39-3d4b0f6c2a71")
ACTION = "audit.restore_accepted"


class _Unreachable(Exception):
    pass


UNREACHABLE_ERRORS: tuple[type[BaseException], ...] = (_Unreachable, *DATABASE_FAILURES)


def _lost(finding: Finding) -> dict[str, Any]:
    """Which checkpoints (numbers, first and last) and which records as they were signed (``seq``,
    first and last) the restore lost. When the database holds the watermark's number signed again
    for another head, only that checkpoint is known lost, and records up to its ``seq``: the retained
    copies say where the two trails part (``python -m audit verify --checkpoints``)."""
    mark = finding.watermark
    assert mark is not None
    newest = finding.newest
    number, seq = (newest.number, newest.seq) if newest is not None else (0, 0)
    if number >= mark.number:
        return {
            "checkpoints": [mark.number, mark.number],
            "signed_records": [None, mark.seq],
            "signed_again": True,
        }
    return {"checkpoints": [number + 1, mark.number], "signed_records": [seq + 1, mark.seq]}


async def _accept(settings: AuditSettings, reason: str) -> tuple[int, dict[str, Any]]:
    keys = settings.checkpoint_keys
    assert keys is not None
    database = Database.from_settings(settings, SCHEMA)
    redis = RedisGuard.from_settings(settings, max_connections=1)
    try:
        database.start()
        await database.wait_connected(settings.db_connect_timeout_seconds)
        store = AuditStore(database, SCHEMA)
        watermark = TrailWatermark(redis, keys, store.checkpoints)
        async with database.connection() as conn:
            finding = await watermark.check(conn, catch_up=False)
            key = await watermark.key(conn)
        if finding.state == "unknown":
            raise _Unreachable("Redis does not answer")
        report = finding.report()
        if finding.state != "rolled_back":
            return 0, report
        mark = finding.watermark
        assert mark is not None
        newest, stored = finding.newest, finding.stored
        if stored is not None:
            try:
                keys.verify(stored.jws)
            except InvalidCheckpoint as exc:
                report["refused"] = (
                    f"the database's newest checkpoint {stored.number} does not verify ({exc}): "
                    "tampering to investigate, not a restore to accept"
                )
                return REFUSED, report
        base = Base(newest.number, newest.digest) if newest is not None else Base(0, GENESIS_DIGEST)
        lost = _lost(finding)
        details = {
            "reason": reason,
            "watermark": mark.summary(),
            "restored": report["restored"],
            "lost": lost,
            "next_number": finding.next_number,
        }
        event = AuditEvent.create(
            action=ACTION,
            resource_type="audit.trail",
            resource_id=key.rsplit(":", 1)[-1],
            outcome="success",
            actor=Identity.service("audit"),
            source="audit",
            details=details,
            event_id=uuid.uuid5(ACCEPTANCE_NAMESPACE, f"{mark.digest}:{base.digest}:{base.number}"),
        )
        await store.append([event])
        accepted = Watermark(mark.number, mark.seq, mark.head, mark.digest, base)
        if not await watermark.write(key, accepted, replacing=mark.raw):
            report["refused"] = "the watermark changed meanwhile (or Redis stopped answering): run again"
            return REFUSED, report
        return 0, {**report, "state": "accepted", "lost": lost, "next_number": finding.next_number}
    finally:
        await redis.close()
        await database.close()


def accept_restore(settings: AuditSettings, args: list[str]) -> int:
    """Accept that a restore of the audit schema lost the records signed after its backup: record it
    on the trail and let the checkpoint signer go on past the lost checkpoint numbers."""
    parser = argparse.ArgumentParser(
        prog="python -m audit accept-restore", description=accept_restore.__doc__
    )
    parser.add_argument(
        "--reason",
        required=True,
        help="what is accepted and why, e.g. the incident's id (recorded on the trail)",
    )
    parsed = parser.parse_args(args)
    for handler in logging.getLogger().handlers:  # stdout is the report's alone
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
            handler.setStream(sys.stderr)
    reason = parsed.reason.strip()
    if not reason or len(reason) > 1000:
        parser.error("--reason must say something, in at most 1000 characters")
    if settings.checkpoint_keys is None:
        print(
            "audit accept-restore: AUDIT_CHECKPOINT_KEYS is not set: no checkpoints, no watermark",
            file=sys.stderr,
        )
        return USAGE
    try:
        status, report = asyncio.run(_accept(settings, reason))
    except LOCK_ERRORS:  # the database is fine: another session holds the table (not "unreachable")
        print(f"audit accept-restore failed: {LOCK_REFUSAL}", file=sys.stderr)
        return UNREACHABLE
    except UNREACHABLE_ERRORS as exc:
        print(f"audit accept-restore: unreachable ({type(exc).__name__}: {exc})", file=sys.stderr)
        return UNREACHABLE
    print(json.dumps(report, indent=2, sort_keys=True))
    if status == 0 and report["state"] == "accepted" and "lost" in report:
        lost = report["lost"]
        first, last = lost["signed_records"]
        records = f"records {first} to {last}" if first is not None else f"records up to {last}"
        print(
            f"accepted: checkpoints {lost['checkpoints'][0]} to {lost['checkpoints'][1]} ({records} as "
            f"signed) are lost; the next checkpoint is number {report['next_number']}",
            file=sys.stderr,
        )
    elif status == 0:
        print(f"nothing to accept: the watermark is {report['state']}", file=sys.stderr)
    else:
        print(f"audit accept-restore: refused: {report.get('refused')}", file=sys.stderr)
    return status
