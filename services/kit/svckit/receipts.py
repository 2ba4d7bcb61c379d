"""Delivery receipts: a producer holds the audit trail to what the audit service said it stored.

The outbox relay (:mod:`svckit.outbox`) deletes an event once the audit service acknowledged it, so
a trail put back to an earlier point (a restore, PITR, or the audit database owner deleting the
newest records) loses those events for good. The audit service notices that itself only with its
watermark in Redis (``audit.watermark``), which a Redis restarted or flushed across the restore
forgets, and only for records a signed checkpoint covered. What the audit service's database role
(and its owner) cannot reach is the producer's own schema, so the producer keeps the evidence:

- the ingest answer carries a *receipt* (``IngestResult.receipt``): the batch's event stored at the
  highest ``seq``, and that record's hash (which covers every record before it);
- the relay keeps the receipt of the newest event it delivered in its schema's one-row
  ``outbox_receipt`` (kit migration ``outbox/0002``), moved in the very statement that deletes the
  delivered rows (no extra round trip on the hot path), only ever to a higher ``seq``;
- on a timer, at start and before the first delivery after a failed one (a restore takes the audit
  service away for a while), :func:`check` asks ``GET /internal/receipts/{id}`` whether the trail
  still holds that record at that ``seq`` with that hash. If not, the mismatch is recorded in the row
  (so it survives restarts, later deliveries do not move the receipt past it, and every replica
  reports it), logged once, and ``outbox_audit_receipt_mismatch{service}`` is 1 (alert
  TimesheetsOutboxAuditReceiptMismatch) until an operator accepts the loss:
  ``python -m <service> outbox accept-audit-restore --reason …`` (:func:`accept_audit_restore`) clears
  the row and records the acceptance on the trail through the outbox.

Acceptance is the producer operator's explicit act, not something an ``audit.restore_accepted``
record on the trail clears: whoever could cut the trail could also append such a record.

Tolerated during a rolling upgrade: an audit service that answers no receipt (the receipt is not
moved) and one without the receipt route (404: the check says nothing and changes nothing).

What a receipt cannot see: a loss of only records delivered since the last check, when the trail grew
past the lost receipt's ``seq`` again before this relay's next delivery (a higher ``seq`` replaces the
receipt). The check before the first delivery after an outage covers a restore that took the audit
service away; the interval bounds the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import asyncpg
from prometheus_client import Gauge
from pydantic import ValidationError

from .contracts.audit import RECEIPTS_PATH, AuditEvent, Receipt, ReceiptCheck
from .db import LOCK_ERRORS, LOCK_REFUSAL, UNAVAILABLE_ERRORS, Connection, Database
from .http import SignedClient
from .identity import Identity
from .settings import DatabaseSettings

log = logging.getLogger("svckit.outbox")

receipt_mismatch = Gauge(
    "outbox_audit_receipt_mismatch",
    "1 when the audit trail no longer holds the newest event this service delivered where the audit "
    "service said it stored it (records delivered were lost: a restore or a cut); 0 when it does, or "
    "when there is nothing to check yet.",
    ["service"],
    multiprocess_mode="max",
)

ACCEPT_ACTION = "outbox.audit_restore_accepted"


class CheckFailed(Exception):
    """The audit service could not be asked (unreachable, 5xx, refused our identity)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def receipt_of(body: bytes) -> Receipt | None:
    """The receipt in an ingest answer, or None: an audit service older than receipts, or an answer
    that does not hold a well-formed one (never a reason to fail a delivery the service took)."""
    try:
        document = json.loads(body)
        found = document.get("receipt") if isinstance(document, dict) else None
        return Receipt.model_validate(found) if isinstance(found, dict) else None
    except (ValueError, ValidationError):
        return None


def acknowledge_statement(schema: str) -> str:
    """Delete the delivered rows (``$1``: their positions) and move the receipt to ``$2``-``$4`` (event
    id, seq, hash) in one statement: the relay's one round trip after a delivery, as before receipts.
    The receipt moves only to a higher seq (replicas deliver concurrently; a resend answers an older
    record), and never while a mismatch is recorded: the lost record stays the evidence."""
    return f"""WITH delivered AS (DELETE FROM {schema}.outbox WHERE position = ANY($1::bigint[]))
UPDATE {schema}.outbox_receipt
SET event_id = $2, seq = $3, hash = $4, delivered_at = now()
WHERE mismatch_at IS NULL AND (seq IS NULL OR seq < $3)"""


@dataclass(frozen=True, slots=True)
class Held:
    """The receipt row: the newest delivered event's record, and a mismatch found for it, if any."""

    event_id: uuid.UUID | None
    seq: int | None
    hash: str | None
    mismatch: str | None

    def report(self) -> dict[str, Any]:
        return {
            "event_id": str(self.event_id) if self.event_id else None,
            "seq": self.seq,
            "hash": self.hash,
            "mismatch": self.mismatch,
        }


async def held(conn: Connection | asyncpg.Connection, schema: str, *, lock: bool = False) -> Held:
    row = await conn.fetchrow(
        f"""SELECT event_id, seq, hash, mismatch_detail FROM {schema}.outbox_receipt
            {"FOR UPDATE" if lock else ""}"""
    )
    if row is None:  # the row is made by the migration; gone only if the owner removed it
        return Held(None, None, None, None)
    return Held(row["event_id"], row["seq"], row["hash"], row["mismatch_detail"])


class Producer(Protocol):
    """What the checker reads of the relay it serves (:class:`svckit.outbox.OutboxRelay`): the
    writer's schema and pool, its name, and how it reaches the audit service — kept by the relay
    alone, not restated here."""

    @property
    def database(self) -> Database: ...

    @property
    def schema(self) -> str: ...

    @property
    def source(self) -> str: ...

    @property
    def audit(self) -> SignedClient: ...

    @property
    def identity(self) -> Identity: ...

    @property
    def request_timeout(self) -> float: ...


class ReceiptChecker:
    """Holds one schema's trail to its receipt (:func:`check` on a timer; see the module docstring)."""

    def __init__(self, producer: Producer) -> None:
        self.producer = producer
        self.gauge = receipt_mismatch.labels(producer.source)
        self._told: set[str] = set()  # what this process has logged already (once each)

    async def check(self) -> str:
        """Check the receipt once: ``none`` (nothing delivered with a receipt yet), ``held`` (the trail
        holds it), ``mismatch`` (it does not: recorded, or found now), ``unknown`` (this audit service
        answers no receipt checks). Raises :class:`CheckFailed` when the audit service cannot be asked,
        a database error when the receipt cannot be read; the gauge then stays as it was."""
        producer = self.producer
        async with producer.database.connection() as conn:
            receipt = await held(conn, producer.schema)
        if receipt.mismatch is not None:
            self.gauge.set(1)
            self._once(
                "recorded",
                logging.ERROR,
                "the audit trail lost events this service delivered (recorded earlier); accept with "
                f"`python -m {producer.source} outbox accept-audit-restore`",
                receipt,
            )
            return "mismatch"
        if receipt.event_id is None or receipt.seq is None or receipt.hash is None:
            self.gauge.set(0)
            self._told.discard("recorded")  # accepted: a later loss is news again
            return "none"
        found = await self._ask(receipt.event_id)
        if found is None:
            self._once(
                "unknown", logging.INFO, "the audit service answers no receipt checks (older)", receipt
            )
            return "unknown"
        if found.stored and found.seq == receipt.seq and found.hash == receipt.hash:
            self.gauge.set(0)
            self._told.discard("recorded")
            return "held"
        if not found.stored:
            detail = f"record seq {receipt.seq} (event {receipt.event_id}) is not on the audit trail"
        elif found.seq != receipt.seq:
            detail = f"event {receipt.event_id} is at seq {found.seq} on the audit trail, not {receipt.seq}"
        else:
            detail = (
                f"record seq {receipt.seq} (event {receipt.event_id}) has another hash on the audit trail"
            )
        async with producer.database.connection() as conn:
            recorded = await conn.fetchval(
                f"""UPDATE {producer.schema}.outbox_receipt SET mismatch_at = now(), mismatch_detail = $4
                    WHERE event_id = $1 AND seq = $2 AND hash = $3 AND mismatch_at IS NULL
                    RETURNING true""",
                receipt.event_id,
                receipt.seq,
                receipt.hash,
                detail,
            )
        if not recorded:  # the receipt moved (or was accepted) meanwhile: the next check looks again
            return "none"
        self.gauge.set(1)
        self._told.add("recorded")
        log.error(
            "audit trail lost events this service delivered: %s",
            detail,
            extra={
                "service": producer.source,
                "event_id": str(receipt.event_id),
                "seq": receipt.seq,
                "found_seq": found.seq,
            },
        )
        return "mismatch"

    async def _ask(self, event_id: uuid.UUID) -> ReceiptCheck | None:
        producer = self.producer
        try:
            async with producer.audit.request(
                "GET", f"{RECEIPTS_PATH}/{event_id}", producer.identity, timeout=producer.request_timeout
            ) as response:
                if response.status in (404, 405):  # an audit service from before receipts
                    await response.read()
                    return None
                if response.status != 200:
                    text = (await response.text())[:300]
                    raise CheckFailed(f"audit service answered {response.status}: {text}", response.status)
                body = await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise CheckFailed(f"audit service unreachable: {type(exc).__name__}") from exc
        try:
            return ReceiptCheck.model_validate_json(body)
        except ValidationError as exc:
            raise CheckFailed(f"audit service answered a malformed receipt check: {exc}") from None

    def _once(self, key: str, level: int, message: str, receipt: Held) -> None:
        if key in self._told:
            return
        self._told.add(key)
        log.log(
            level,
            message,
            extra={
                "service": self.producer.source,
                "event_id": str(receipt.event_id) if receipt.event_id else None,
                "seq": receipt.seq,
                "mismatch": receipt.mismatch,
            },
        )


async def accept_audit_restore(database: Database, schema: str, source: str, reason: str) -> dict[str, Any]:
    """Accept a recorded mismatch: clear the receipt and the mismatch, and queue
    ``outbox.audit_restore_accepted`` (what was lost, the reason) in the same transaction, so the trail
    records the acceptance. Nothing to accept: nothing changes (``"state": "consistent"``)."""
    async with database.transaction() as conn:
        receipt = await held(conn, schema, lock=True)
        if receipt.mismatch is None:
            return {"state": "consistent", "receipt": receipt.report()}
        await conn.execute(
            f"""UPDATE {schema}.outbox_receipt SET event_id = NULL, seq = NULL, hash = NULL,
                    delivered_at = NULL, mismatch_at = NULL, mismatch_detail = NULL"""
        )
        event = AuditEvent.create(
            action=ACCEPT_ACTION,
            resource_type="outbox",
            resource_id=source,
            outcome="success",
            actor=Identity.service(source),
            source=source,
            details={"reason": reason, "lost": receipt.report()},
        )
        await conn.execute(
            f"INSERT INTO {schema}.outbox (id, occurred_at, payload) VALUES ($1, $2, $3::jsonb)",
            event.id,
            event.occurred_at,
            event.model_dump_json(),
        )
    return {"state": "accepted", "lost": receipt.report(), "reason": reason, "event_id": str(event.id)}


REFUSED, USAGE, UNREACHABLE = 1, 2, 3
UNREACHABLE_ERRORS: tuple[type[BaseException], ...] = (*UNAVAILABLE_ERRORS, TimeoutError)


def outbox_command(schema: str) -> Callable[[DatabaseSettings, list[str]], int]:
    """``python -m <service> outbox accept-audit-restore --reason TEXT``: the ``outbox`` command of a
    producer's CLI (``run_cli(commands={"outbox": outbox_command(schema)})``). Prints a JSON report;
    exit 0 (accepted, or nothing to accept), 1 (the schema is not migrated), 2 (bad arguments), 3 (the
    database unreachable)."""

    def run(settings: DatabaseSettings, args: list[str]) -> int:
        parser = argparse.ArgumentParser(prog=f"python -m {settings.service_name} outbox")
        parser.add_argument("action", choices=["accept-audit-restore"])
        parser.add_argument("--reason", required=True, help="the incident and what was lost")
        try:
            parsed = parser.parse_args(args)
        except SystemExit:
            return USAGE
        if not parsed.reason.strip():
            print("--reason must say why (the incident)", file=sys.stderr, flush=True)
            return USAGE

        database = Database.from_settings(settings, schema)

        async def accept() -> dict[str, Any]:
            try:
                database.start()
                await database.wait_connected(settings.db_connect_timeout_seconds)
                return await accept_audit_restore(database, schema, settings.service_name, parsed.reason)
            finally:
                await database.close()

        # the report is what stdout carries: the kit's informational lines (the pool is ready…) stay out
        logging.getLogger().setLevel(max(logging.WARNING, logging.getLogger().level))
        try:
            report = asyncio.run(accept())
        except LOCK_ERRORS:  # the database is fine: another session holds the table (not "unreachable")
            print(f"outbox {parsed.action} failed: {LOCK_REFUSAL}", file=sys.stderr, flush=True)
            return UNREACHABLE
        except UNREACHABLE_ERRORS as exc:
            # why the pool never connected (a refused certificate, a pooler refusing the session's
            # settings) says more than the wait's own TimeoutError
            why = database.last_error if database.last_error != "not connected yet" else type(exc).__name__
            print(f"database unreachable: {why}", file=sys.stderr, flush=True)
            return UNREACHABLE
        except asyncpg.UndefinedTableError:
            print(
                f"{schema}.outbox_receipt does not exist: "
                f"run `python -m {settings.service_name} migrate` first",
                file=sys.stderr,
                flush=True,
            )
            return REFUSED
        print(json.dumps(report, indent=2), flush=True)
        return 0

    return run


__all__ = [
    "ACCEPT_ACTION",
    "CheckFailed",
    "Held",
    "Producer",
    "ReceiptChecker",
    "accept_audit_restore",
    "acknowledge_statement",
    "outbox_command",
    "receipt_mismatch",
    "receipt_of",
]
