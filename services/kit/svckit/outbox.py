"""Transactional outbox: a state change and its audit event commit together, a relay delivers later.

A writer service inserts the audit event into its own ``outbox`` table *in the same transaction* as
the change it describes (:func:`enqueue`), so either both are committed or neither is. An
:class:`OutboxRelay` running in every replica of that service then POSTs pending events in batches to
the audit service's ``POST /internal/events`` as the service principal, and deletes them once the
audit service answers 200. Delivery is at-least-once (a crash between the POST and the DELETE
re-sends the batch); the audit service ingests idempotently by event id, so the effect is
exactly-once.

How the relay behaves:

- Batches are claimed with ``FOR UPDATE SKIP LOCKED`` inside a transaction that stays open until the
  audit service answered, so several replicas relay the same table without sending a row twice.
- ``enqueue`` sends ``NOTIFY outbox_<schema>`` (delivered by Postgres at commit); the relay LISTENs on
  a dedicated connection and wakes at once. Polling every ``poll_interval`` seconds covers a lost
  LISTEN connection and rows whose retry time came. After a failover whose old primary stays up the
  LISTEN connection would stay on it (TCP connections do) and hear nothing: when the pool finds its
  sessions on a read-only server while the DSN's name leads to a writable one
  (:func:`svckit.db.refused_as_read_only`), the relay reopens it where the name leads now.
- The hot paths' single statements (:func:`with_enqueued`) send no NOTIFY: the writer wakes the
  relay of its own process after the commit (:meth:`OutboxRelay.wake`), which delivers its rows at
  once; other replicas' relays find them when they poll, as before. A NOTIFY makes every committing
  transaction that sent one take Postgres's one lock on the notification queue (cluster-wide) and
  hold it through its WAL flush: such commits cannot share a flush, they go one at a time. Under the
  decisions benchmark (two notifying commits per decision, 80-130 decisions/s) the backends waited
  on ``Lock: object`` and ``WalSync``; and every NOTIFY also woke every listening relay.
- Under load the relay gathers batches: after a pass that delivered fewer than ``batch_size`` events
  it waits ``linger`` seconds (real time, 25 ms by default) before the next one, so a steady stream
  of commits goes out in batches of many events instead of one POST, one claim and one delete per
  event or two (each POST also costs the audit service an ingest). A relay that was idle delivers a
  lone event at once.
- A failed delivery (audit unreachable, 5xx, 401, timeout) records ``attempts``/``last_error`` on the
  rows and the relay backs off (capped exponential backoff with jitter), so a down audit service is
  not hammered; the rows stay due, so once it is back they arrive in outbox order (strictly so with
  one relaying replica; several replicas interleave batches). A batch refused as malformed
  (400/413/422) is split and re-sent event by event, so one poison event waits alone with its own
  growing ``next_attempt_at`` (and shows in ``outbox_oldest_event_age_seconds``) instead of
  blocking everything behind it. Nothing is ever dropped.
- The relay waits ``request_timeout`` seconds for an answer (``OUTBOX_REQUEST_TIMEOUT_SECONDS``, 10):
  past it the batch counts as failed, although the audit service may have received it and store it
  later (frozen, or its statement waiting on a lock); the resend is then acknowledged as duplicates
  and recorded once (tests/faults/test_redelivery.py). It stays below the database's
  idle-in-transaction timeout: the claim transaction is open, idle, while the relay waits.

The relay runs as the kit's supervised periodic task (:class:`svckit.tasks.PeriodicTask`, task
``outbox-relay``): one pass per ``poll_interval`` or NOTIFY, passes back to back while batches keep
coming, the back-off above after a failure (while backing off only ``stop()`` cuts the wait short —
every commit sends a NOTIFY, and those must not turn a back-off into hammering), on an injectable
clock.

Delivery receipts (:mod:`svckit.receipts`): the audit service answers where it stored the batch's
newest event; the statement that deletes the delivered rows also moves the schema's one-row
``outbox_receipt`` to it, and a second periodic task (``outbox-receipt-check``, every
``receipt_check_interval`` seconds, and before the first delivery at start and after a failed one)
asks the audit service whether its trail still holds that record: a trail restored to an earlier
point, or cut, does not (``outbox_audit_receipt_mismatch`` 1).

Metrics (label ``service`` = the relay's ``source``): ``outbox_pending_events``,
``outbox_oldest_event_age_seconds``, ``outbox_delivered_total``, ``outbox_delivery_failures_total``,
``outbox_audit_receipt_mismatch``; and the tasks' ``background_task_runs_total{task="outbox-relay"}``
and ``{task="outbox-receipt-check"}``.

The table comes from the kit migration set ``outbox`` (``svckit/schema/outbox/``): a writer service
lists ``outbox`` in its ``migrations/kit.txt`` and ``python -m <service> migrate`` creates it in the
writer's own schema (see :mod:`svckit.migrations`). The event itself is
:class:`svckit.contracts.audit.AuditEvent`, the model the audit service validates with.

Usage in a writer service::

    async with database.transaction() as conn:
        row = await conn.fetchrow("INSERT INTO entries ... RETURNING id")
        await enqueue(conn, AuditEvent.create(
            action="timesheet.created", resource_type="timesheet", resource_id=str(row["id"]),
            outcome="success", actor=identity, details={"project": ...}, source="timesheets"))

    relay = OutboxRelay(database, "timesheets", "timesheets", SignedClient(http, AUDIT_URL, signer))
    relay.start()   # in the lifespan, after database.start()
    ...
    await relay.stop()
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
from prometheus_client import Counter, Gauge

from .clock import SYSTEM_CLOCK, Clock
from .contracts.audit import INGEST_PATH, MAX_BATCH, Actor, AuditEvent, Receipt
from .db import READ_ONLY_ERRORS, UNAVAILABLE_ERRORS, Connection, Database, DatabaseUnavailable
from .http import HttpClient, SignedClient
from .identity import Identity, IdentitySigner
from .receipts import CheckFailed, ReceiptChecker, acknowledge_statement, receipt_of
from .settings import OutboxSettings
from .tasks import PeriodicTask, backoff_delay

log = logging.getLogger("svckit.outbox")

# A batch the audit service refuses as malformed is split; other failures are retried as a whole.
SPLIT_STATUSES = frozenset({400, 413, 422})

# The database being away is an expected condition the relay waits out, not a bug to log loudly.
DB_ERRORS: tuple[type[BaseException], ...] = (
    DatabaseUnavailable,
    asyncpg.PostgresError,
    *UNAVAILABLE_ERRORS,
)

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,50}$")

pending_events = Gauge(
    "outbox_pending_events",
    "Audit events committed to this service's outbox and not yet acknowledged by the audit service.",
    ["service"],
    multiprocess_mode="max",
)
oldest_event_age = Gauge(
    "outbox_oldest_event_age_seconds",
    "Age of the oldest undelivered outbox event (0 when the outbox is empty).",
    ["service"],
    multiprocess_mode="max",
)
delivered_total = Counter(
    "outbox_delivered_total",
    "Outbox events acknowledged by the audit service (accepted or recognised as duplicates).",
    ["service"],
)
delivery_failures_total = Counter(
    "outbox_delivery_failures_total",
    "Failed delivery attempts of outbox batches (each failed POST counts once).",
    ["service"],
)


def notify_channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel of one schema's outbox."""
    return f"outbox_{schema}"


_ENQUEUE = """
WITH added AS (
    INSERT INTO outbox (id, occurred_at, payload) VALUES ($1, $2, $3::jsonb) RETURNING 1
)
SELECT pg_notify('outbox_' || current_schema(), '') FROM added
"""


async def enqueue(conn: Connection | asyncpg.Connection, event: AuditEvent) -> None:
    """Add ``event`` to the outbox of the connection's schema, inside the caller's transaction.

    The connection's ``search_path`` must start with the writer's schema (``Database(schema=…)``
    does that). The NOTIFY that wakes the relays is only delivered if the transaction commits.
    """
    if not conn.is_in_transaction():
        raise RuntimeError("enqueue must run inside the transaction of the change it describes")
    await conn.execute(_ENQUEUE, event.id, event.occurred_at, event.model_dump_json())


def with_enqueued(change: str, first: int) -> str:
    """One statement that makes ``change`` and adds the change's audit event to the outbox: what
    :func:`enqueue` does after the change, without a round trip of its own (on the hot paths, round
    trips are most of a write's time) and without a NOTIFY (see the module docstring: the writer
    calls :meth:`OutboxRelay.wake` of its own relay once the statement, or its transaction, has
    committed).

    ``change`` is an ``INSERT``/``UPDATE``/``DELETE … RETURNING`` of at most one row (the statement
    answers its rows); the event is queued only when it returned one, so a change that found nothing
    to do (a row already settled by someone else) records no event. The event's values are the
    parameters ``$first`` to ``$first + 2``, in the order :func:`event_parameters` gives them. Like
    :func:`enqueue` it belongs with the change (a single statement commits or fails as a whole, also
    in autocommit).
    """
    return f"""WITH change AS ({change}),
queued AS (
    INSERT INTO outbox (id, occurred_at, payload)
    SELECT ${first}::uuid, ${first + 1}::timestamptz, ${first + 2}::jsonb FROM change
    RETURNING 1
)
SELECT change.* FROM change"""


def event_parameters(event: AuditEvent) -> tuple[Any, ...]:
    """The outbox row's values of ``event`` for :func:`with_enqueued`: id, occurred_at, payload."""
    return (event.id, event.occurred_at, event.model_dump_json())


class DeliveryError(Exception):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class _Row:
    position: int
    attempts: int
    payload: str  # the event as stored (``payload::text``): sent as it is, never parsed on the way

    def event_id(self) -> object:
        """The event's id (for a log line about it; parsed only then)."""
        try:
            document = json.loads(self.payload)
        except ValueError:
            return None
        return document.get("id") if isinstance(document, dict) else None


class OutboxRelay:
    """Delivers one schema's outbox to the audit service; run one per replica (see module docstring)."""

    def __init__(
        self,
        database: Database,
        schema: str,
        source: str,
        audit: SignedClient,
        *,
        batch_size: int = 200,
        poll_interval: float = 2.0,
        linger: float = 0.025,
        base_backoff: float = 0.5,
        max_backoff: float = 30.0,
        request_timeout: float = 10.0,
        metrics_interval: float = 5.0,
        receipt_check_interval: float = 60.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if not _SCHEMA_NAME.fullmatch(schema):
            raise ValueError(f"schema {schema!r} is not a plain lower-case identifier")
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be within 1..{MAX_BATCH}")
        self.database = database
        self.schema = schema
        self.source = source
        self.audit = audit
        self.identity = Identity.service(source)
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.linger = linger
        self.base_backoff = base_backoff
        self.max_backoff = max_backoff
        self.request_timeout = request_timeout
        self.metrics_interval = metrics_interval
        self.clock = clock
        # NOTIFY wakes it; a failed delivery backs off (and then only stop() ends the wait: every
        # commit in the writer sends a NOTIFY, and those must not turn a back-off into hammering)
        self.task = PeriodicTask(
            "outbox-relay",
            poll_interval,
            self._pass,
            clock=clock,
            initial_delay=0,
            expected=(DeliveryError, *DB_ERRORS),
            backoff_base=base_backoff,
            max_backoff=max_backoff,
            logger=log,
        )
        self._listener: asyncpg.Connection | None = None
        # the listener may be on a server that takes no writes (so no commits, no NOTIFYs): a failover
        # whose old primary stays up (see _ensure_listener)
        self._listener_suspect = False
        self._listen_failed = False
        database.on_address_moved(self._address_moved)
        self._metrics_due = 0.0
        self._delivered = delivered_total.labels(source)
        self._failed = delivery_failures_total.labels(source)
        self._acknowledge_sql = acknowledge_statement(schema)
        self.receipts = ReceiptChecker(self)
        # the receipt is checked before the first delivery (at start, and after a failed one: a
        # restore takes the audit service away), then on its own timer
        self._check_first = True
        self.receipt_task = PeriodicTask(
            "outbox-receipt-check",
            receipt_check_interval,
            self.check_receipt,
            clock=clock,
            expected=(CheckFailed, *DB_ERRORS),
            backoff_base=base_backoff,
            max_backoff=max_backoff,
            logger=log,
        )

    @classmethod
    def for_service(
        cls, settings: OutboxSettings, database: Database, schema: str, http: HttpClient, **options: Any
    ) -> OutboxRelay:
        """The relay of a service's outbox as its settings say: to ``AUDIT_URL``, signed with its key of
        the (service → audit) pair, polling and backing off as configured; ``options`` as the
        constructor's (``linger``)."""
        audit = SignedClient(http, settings.audit_url, IdentitySigner(settings.identity_sign_keys("audit")))
        return cls(
            database,
            schema,
            settings.service_name,
            audit,
            poll_interval=settings.outbox_poll_interval_seconds,
            max_backoff=settings.outbox_max_backoff_seconds,
            receipt_check_interval=settings.outbox_receipt_check_interval_seconds,
            request_timeout=settings.outbox_request_timeout_seconds,
            **options,
        )

    # ---- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start relaying in the background; returns at once (the database may not be up yet)."""
        self.task.start()
        self.receipt_task.start()

    async def stop(self, timeout: float = 5.0) -> None:
        """Let a delivery in flight finish (bounded by ``timeout``), then stop and close the listener."""
        await self.task.stop(timeout)
        await self.receipt_task.stop(timeout)
        await self._close_listener()

    def wake(self) -> None:
        """Deliver now instead of at the next poll (not while backing off after a failed delivery)."""
        self.task.wake()

    async def record(self, events: Sequence[AuditEvent]) -> None:
        """Commit ``events`` to the outbox on their own — records of no state change of the service,
        such as its aggregated denials (:mod:`svckit.denials`) — and wake this relay. One transaction:
        all of them or none (a database error propagates: :data:`DB_ERRORS`). An event already held is
        not added again: the caller's retry after a ``COMMIT`` whose answer was lost writes what the
        first try did not, instead of failing on the first try's ids until they are relayed."""
        if not events:
            return
        async with self.database.transaction() as conn:
            await conn.executemany(
                f"INSERT INTO {self.schema}.outbox (id, occurred_at, payload) VALUES ($1, $2, $3::jsonb)"
                " ON CONFLICT (id) DO NOTHING",
                [event_parameters(event) for event in events],
            )
        self.wake()

    # ---- one pass (run by the periodic task) ----------------------------------------------------

    async def _pass(self) -> bool:
        """Listen, deliver one batch, refresh the gauges now and then. True: more may be waiting
        (after a batch that was not full, only once ``linger`` has passed: more gather meanwhile)."""
        await self._ensure_listener()
        try:
            if self._check_first:
                try:
                    await self.check_receipt()
                except CheckFailed as exc:  # the audit service is away: so is delivery, wait it out
                    raise DeliveryError(f"receipt check: {exc}", exc.status) from None
                self._check_first = False
            delivered = await self.deliver_due()
        except READ_ONLY_ERRORS:
            # the pool reached a server that takes no writes: the listener, opened to the same name,
            # most likely did too
            self._listener_suspect = True
            raise
        finally:  # the backlog gauges also while the audit service is away (their alert says so)
            await self._maybe_update_metrics()
        if 0 < delivered < self.batch_size and self.linger > 0:
            await asyncio.sleep(self.linger)  # real time: a batching window, not part of the schedule
        return delivered > 0

    async def deliver_due(self) -> int:
        """Deliver one batch of due events: how many were in it (0: none were due; more may be due
        when it was full).

        Raises :class:`DeliveryError` when the audit service did not take the batch (after recording
        the attempt on the rows).
        """
        failure: DeliveryError | None = None
        acknowledged = 0
        async with self.database.transaction() as conn:
            rows = await conn.fetch(
                f"""SELECT position, attempts, payload::text AS payload
                    FROM {self.schema}.outbox
                    WHERE next_attempt_at <= now()
                    ORDER BY position
                    LIMIT $1
                    FOR UPDATE SKIP LOCKED""",
                self.batch_size,
            )
            if not rows:
                return 0
            batch = [_Row(*row) for row in rows]
            try:
                receipt = await self._post(batch)
                await self._acknowledge(conn, batch, receipt)
                acknowledged = len(batch)
            except DeliveryError as exc:
                if exc.status in SPLIT_STATUSES and len(batch) > 1:
                    acknowledged = await self._deliver_one_by_one(conn, batch)
                    if acknowledged == 0:
                        failure = exc
                else:
                    await self._record_failure(conn, batch, exc)
                    failure = exc
        self._delivered.inc(acknowledged)
        # Raised only after the transaction committed the attempt counts and retry times.
        if failure is not None:
            if failure.status not in SPLIT_STATUSES:
                self._check_first = True  # the audit service was away: check before going on
            raise failure
        return len(batch)

    async def _deliver_one_by_one(self, conn: Connection, batch: Sequence[_Row]) -> int:
        """Isolate malformed events: deliver each alone, record failures on the ones refused."""
        delivered = 0
        for row in batch:
            try:
                receipt = await self._post([row])
            except DeliveryError as exc:
                await self._record_failure(conn, [row], exc)
                if exc.status not in SPLIT_STATUSES:
                    break  # the audit service itself is failing now; keep the rest for later
                log.error(
                    "audit service refused an outbox event; it stays in the outbox",
                    extra={"service": self.source, "event_id": row.event_id(), "status": exc.status},
                )
                continue
            await self._acknowledge(conn, [row], receipt)
            delivered += 1
        return delivered

    async def _post(self, batch: Sequence[_Row]) -> Receipt | None:
        """Send ``batch``; the receipt the audit service answered (None from one that answers none)."""
        # {"events": [...]} around the stored documents as they are: parsing each one and writing it
        # again cost more than the rest of a batch's delivery
        body = f'{{"events":[{",".join([row.payload for row in batch])}]}}'.encode()
        try:
            async with self.audit.request(
                "POST", INGEST_PATH, self.identity, content=body, timeout=self.request_timeout
            ) as response:
                if response.status == 200:
                    return receipt_of(await response.read())
                text = (await response.text())[:300]
                self._failed.inc()
                raise DeliveryError(f"audit service answered {response.status}: {text}", response.status)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._failed.inc()
            raise DeliveryError(f"audit service unreachable: {type(exc).__name__}") from exc

    async def _acknowledge(self, conn: Connection, batch: Sequence[_Row], receipt: Receipt | None) -> None:
        """Delete the delivered rows and, with a receipt, move it in the same statement."""
        positions = [row.position for row in batch]
        if receipt is None:
            await conn.execute(
                f"DELETE FROM {self.schema}.outbox WHERE position = ANY($1::bigint[])", positions
            )
        else:
            await conn.execute(self._acknowledge_sql, positions, receipt.id, receipt.seq, receipt.hash)

    async def check_receipt(self) -> bool:
        """Hold the audit trail to the receipt once (:class:`svckit.receipts.ReceiptChecker`)."""
        await self.receipts.check()
        return False

    async def _record_failure(self, conn: Connection, batch: Sequence[_Row], exc: DeliveryError) -> None:
        """Note the attempt on the rows. Only events the audit service refused as malformed get a
        retry time of their own; after an outage the rows stay due, so that (with one relay) the
        chain receives them in outbox order once the relay's own backoff lets it try again."""
        if exc.status in SPLIT_STATUSES:
            attempts = max(row.attempts for row in batch) + 1
            delay = backoff_delay(attempts, self.base_backoff, self.max_backoff)
        else:
            delay = 0.0
        await conn.execute(
            f"""UPDATE {self.schema}.outbox
                SET attempts = attempts + 1,
                    next_attempt_at = now() + make_interval(secs => $2),
                    last_error = $3
                WHERE position = ANY($1::bigint[])""",
            [row.position for row in batch],
            delay,
            str(exc)[:500],
        )

    # ---- metrics -------------------------------------------------------------------------------

    async def update_metrics(self) -> None:
        """Refresh the backlog gauges from the table (shared by all replicas, so any one is right)."""
        async with self.database.connection() as conn:
            row = await conn.fetchrow(
                f"""SELECT count(*) AS pending,
                           COALESCE(EXTRACT(EPOCH FROM now() - min(occurred_at)), 0) AS age
                    FROM {self.schema}.outbox"""
            )
        assert row is not None
        pending_events.labels(self.source).set(row["pending"])
        oldest_event_age.labels(self.source).set(max(0.0, float(row["age"])))

    async def _maybe_update_metrics(self) -> None:
        now = self.clock.monotonic()
        if now < self._metrics_due:
            return
        try:
            await self.update_metrics()
        except DB_ERRORS:
            return  # the database is away: try again at the next pass, not an interval later
        self._metrics_due = now + self.metrics_interval

    # ---- LISTEN --------------------------------------------------------------------------------

    async def _ensure_listener(self) -> None:
        """Keep a dedicated LISTEN connection; without one the relay still works by polling.

        A failover moves the DSN's name; a LISTEN connection stays on the server it was opened to (TCP
        connections do), and if that one stays up — a demoted primary, taking no writes — it hears no
        NOTIFY again: the writers commit on the new primary. So when the relay's pooled connection was
        refused as read-only, or the pool found the name leading to a writable server
        (:meth:`svckit.db.Database.on_address_moved`), the listener is suspect: the next pass opens a
        new one where the name leads now and keeps it in place of the old; it stays suspect while the
        server it reached takes no writes either (the failover is not over: the passes' back-off
        paces the tries).
        """
        current = self._listener
        if current is not None and current.is_closed():
            current = self._listener = None
        if current is not None and not self._listener_suspect:
            return
        try:
            conn = await self.database.connect(f"{self.database.application_name}-outbox")
        except DB_ERRORS as exc:
            self._listen_unavailable(exc)
            return
        try:
            read_only = await conn.fetchval("SELECT current_setting('transaction_read_only')")
            await conn.add_listener(notify_channel(self.schema), self._on_notify)
        except DB_ERRORS as exc:  # a hot standby refuses LISTEN
            conn.terminate()
            self._listen_unavailable(exc)
            return
        if current is not None:
            log.info(
                "outbox LISTEN connection reopened where the database's address leads now",
                extra={"read_only": read_only},
            )
            await self._close_listener()
        self._listen_failed = False
        self._listener_suspect = read_only == "on"
        self._listener = conn

    def _address_moved(self) -> None:
        self._listener_suspect = True
        self.task.wake()

    def _listen_unavailable(self, exc: BaseException) -> None:
        if not self._listen_failed:  # once per outage, not once per poll
            log.info("outbox LISTEN connection unavailable; polling", extra={"error": type(exc).__name__})
        self._listen_failed = True

    def _on_notify(self, *args: object) -> None:
        self.task.wake()

    async def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None and not listener.is_closed():
            try:
                await asyncio.wait_for(listener.close(), 2.0)
            except DB_ERRORS:
                listener.terminate()


__all__ = [
    "INGEST_PATH",
    "MAX_BATCH",
    "Actor",
    "AuditEvent",
    "DeliveryError",
    "OutboxRelay",
    "backoff_delay",
    "enqueue",
    "notify_channel",
]
