"""Deciding an entry across two services without a distributed transaction.

The steps (see docs/approvals-consistency.md for the failure analysis):

1. **Record** the decision here as ``pending`` (unique per entry: a second or concurrent decision
   conflicts in the database, not in application code).
2. **Apply** it at the timesheets service, keyed by the decision id. That call is idempotent and its
   answer definitive: applied (also when repeated), entry gone, decided otherwise, own entry.
3. **Settle** here: ``applied`` or ``void``, each with its audit event in the same statement.

If anything dies between the steps the decision stays ``pending`` and the :mod:`reconciler`
repeats step 2 and 3 until they complete, so the decision and the entry's status always end equal.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import asyncpg
from svckit import denials
from svckit.context import current_request_id
from svckit.contracts.approvals import DecisionIn
from svckit.contracts.audit import AuditEvent
from svckit.contracts.timesheets import Entry
from svckit.db import UNAVAILABLE_ERRORS, Connection, Database, OutcomeUnknown
from svckit.denials import Sink
from svckit.identity import Identity
from svckit.outbox import DB_ERRORS

from . import events, store
from .metrics import decided, decisions, refusals
from .peer import ApplyOutcome, PeerUnavailable, Timesheets
from .store import DecisionRow

log = logging.getLogger("approvals.workflow")

State = Literal["applied", "void", "pending"]
NOTE_ERRORS: tuple[type[BaseException], ...] = (asyncpg.PostgresError, *UNAVAILABLE_ERRORS)
VOID_REASONS = {"gone": "entry_gone", "conflict": "already_decided", "forbidden": "own_entry"}


@dataclass(frozen=True)
class Result:
    """Where a decision stands after an attempt, and the entry as the timesheets service returned it
    (``entry_text``: as it wrote it, when it answered the entry with a 200). ``voiding``: a pending
    decision the timesheets service's answer says can never apply, with the void reason it gave,
    when voiding it here failed or is not known to have committed (a retry or the reconciler voids
    it)."""

    state: State
    decision: DecisionRow
    entry: Entry | None = None
    reason: str = ""
    entry_text: str = ""
    voiding: str = ""


@dataclass(frozen=True)
class Refusal:
    """The decision was refused before anything was recorded."""

    status: int
    detail: str
    existing: DecisionRow | None = None


class Workflow:
    def __init__(
        self,
        database: Database,
        timesheets: Timesheets,
        attempts: int,
        *,
        record: Sink,
        events_committed: Callable[[], None] = lambda: None,
    ) -> None:
        """``record``: commits audit events of no change of state to the outbox on their own (the
        outbox relay's :meth:`~svckit.outbox.OutboxRelay.record`, which also writes the service's
        aggregated denials); ``events_committed``: called once a decision and its audit event have
        committed (``store.MARK_APPLIED`` and ``store.MARK_VOID`` send no NOTIFY): the relay's ``wake``."""
        self.database = database
        self.timesheets = timesheets
        self.attempts = attempts
        self.record = record
        self.events_committed = events_committed

    async def decide(self, approver: Identity, entry_id: uuid.UUID, body: DecisionIn) -> Result | Refusal:
        """``PUT /approvals/{id}``. Raises :class:`PeerUnavailable` when nothing could be recorded.

        An entry's live decision, if it has one, is looked up only where it changes the answer: on
        the paths that refuse, or that cannot go on, before answering (a repeated decision is
        answered by the one that exists, as if it had been looked up first), and when recording
        conflicts with it. A new decision, the common case, goes without that round trip."""
        # Cheap checks first, so refusals leave no pending decision behind (the apply step repeats
        # them atomically; these only make the common refusals precise and quick).
        try:
            entry = await self.timesheets.entry(entry_id)
        except PeerUnavailable:
            existing = await self._live(entry_id)
            if existing is not None:  # a repeated decision: answered by the one recorded
                return await self._again(existing, approver, body)
            raise
        refusal = None
        if entry is None:
            refusal = Refusal(404, "No such timesheet entry.")
        elif (entry.owner.issuer, entry.owner.subject) == approver.principal:
            refusal = Refusal(403, "Approvers cannot decide their own entries.")
        elif entry.status != "submitted":
            refusal = Refusal(409, "The entry has already been decided.")
        if refusal is not None:
            existing = await self._live(entry_id)
            if existing is not None:
                return await self._again(existing, approver, body)
            if refusal.status == 403:
                refusals.labels("own_entry").inc()
                await self._record_refusal(events.refused_own_entry(approver, entry_id, body))
            return refusal

        decision_id = uuid.uuid4()

        async def recorded(conn: Connection) -> bool:
            return await store.get(conn, decision_id) is not None

        # One statement in autocommit (one round trip): recorded as pending, or nothing when the entry
        # has a live decision already (then read that one).
        row = DecisionRow.maybe(
            await self.database.write_once(
                store.RECORD_PENDING,
                *store.pending_arguments(
                    entry_id, approver, body, current_request_id(), decision_id=decision_id
                ),
                committed=recorded,
                reread=store.decision_record(decision_id),
            )
        )
        if row is None:
            existing = await self._live(entry_id)
            if existing is None:  # voided between the two statements: treat as just decided
                return Refusal(409, "The entry has already been decided.")
            return await self._again(existing, approver, body)
        return await self.drive(row, self.attempts, via="request")

    async def _record_refusal(self, event: AuditEvent) -> None:
        """The audit record of a refused attempt, on its own (nothing else changed): best effort. The
        refusal is the answer whatever happens to this write — never a 503 that invites a retry of a
        request that can only be refused again, nor anything that says it was stored when it may not
        be. Written like the service's other denials (:meth:`~svckit.outbox.OutboxRelay.record`), and
        like their writer (:class:`svckit.denials.DenialRecorder`) tried again after any database
        error, an unknown outcome of its ``COMMIT`` included: the record's id is the request's
        (:func:`events.refusal_id`) and ``record`` adds an id the outbox holds no second time, so a
        try that did commit, or the same request refused again, leaves one record. Two tries, so the
        answer never waits long for the database."""
        failure = ""
        for _ in range(2):
            try:
                await self.record([event])
            except DB_ERRORS as exc:  # perhaps not stored: once more (a second copy is not added)
                failure = type(exc).__name__
                continue
            denials.written_total.labels(events.SOURCE).inc()
            return
        denials.dropped_total.labels(events.SOURCE).inc()
        log.warning(
            "the audit record of a refused decision is not known to be stored",
            extra={"event_id": str(event.id), "reason": event.details.get("reason"), "error": failure},
        )

    async def _live(self, entry_id: uuid.UUID) -> DecisionRow | None:
        async with self.database.connection() as conn:
            return await store.live_for_entry(conn, entry_id)

    async def _again(self, existing: DecisionRow, approver: Identity, body: DecisionIn) -> Result | Refusal:
        """A decision exists. The same approver repeating the same pending decision (a client retry
        after a timeout or 503) drives it on; anything else is a second decision: 409."""
        same = (
            existing.approver == approver.principal
            and existing.decision == body.decision
            and existing.comment == body.comment
        )
        if existing.state == "pending" and same:
            return await self.drive(existing, self.attempts, via="request")
        return Refusal(409, "The entry already has a decision.", existing)

    async def drive(self, decision: DecisionRow, attempts: int, *, via: str) -> Result:
        """Steps 2 and 3 for a recorded decision; safe to run any number of times, concurrently too."""
        try:
            outcome = await self.timesheets.apply_with_retries(decision, attempts)
        except PeerUnavailable as exc:
            await self._note_failure(decision.id, str(exc))
            return Result("pending", decision, reason=str(exc))
        return await self.settle(decision, outcome, via=via)

    async def settle(self, decision: DecisionRow, outcome: ApplyOutcome, *, via: str) -> Result:
        if outcome.verdict == "refused":
            # Not a verdict on the entry (a 4xx we did not expect: misconfiguration, a bug). Keep the
            # decision pending so nothing is lost; the pending-age metric makes it visible.
            log.error(
                "timesheets refused a decision; it stays pending",
                extra={"decision_id": str(decision.id), "detail": outcome.detail[:200]},
            )
            await self._note_failure(decision.id, f"refused: {outcome.detail[:200]}")
            return Result("pending", decision, outcome.entry, "refused")
        void_reason = VOID_REASONS.get(outcome.verdict, "")

        async def settled(conn: Connection) -> bool:
            return await store.settled(conn, decision.id)

        # One statement in autocommit: applied or void with its audit event, or nothing if settled
        # already (the event is built from the pending row: the fields it names never change).
        arguments: tuple[object, ...]
        if outcome.verdict == "applied":
            statement, arguments = store.MARK_APPLIED, events.decided(decision, via)
        else:
            statement, arguments = store.MARK_VOID, (void_reason, *events.voided(decision, void_reason, via))
        try:
            row = DecisionRow.maybe(
                await self.database.write_once(
                    statement,
                    decision.id,
                    *arguments,
                    committed=settled,
                    reread=store.decision_record(decision.id),
                )
            )
            changed = row is not None  # (after a lost answer: whoever settled it, it is settled)
            if changed:
                self.events_committed()
            if row is None:  # another request or the reconciler settled it first: report that
                async with self.database.connection() as conn:
                    row = await store.get(conn, decision.id)
        except UNAVAILABLE_ERRORS as exc:
            # Answered for good by the timesheets service but not settled here (or not known to be):
            # the decision is recorded and stays pending until a retry or the reconciler settles it.
            log.warning("could not settle a decision; it stays pending", extra={"error": type(exc).__name__})
            return Result("pending", decision, outcome.entry, "settle_failed", voiding=void_reason)
        if row is None:
            # recorded on one connection, gone on the next: they reached different servers (a
            # failover whose old primary stayed up, until svckit.dbserver closes the old connections).
            # Where the record is now cannot be said: 503, retry (it was a 500: an assertion)
            log.warning("a decision recorded a moment ago was not found; the database server changed?")
            raise OutcomeUnknown("the decision was not found on the database server reached now")
        if changed and outcome.verdict == "applied":
            counted = decided.get(row.decision)  # (the table's CHECK holds it to the two)
            (counted if counted is not None else decisions.labels(row.decision)).inc()
        return Result(
            row.state,  # type: ignore[arg-type]
            row,
            outcome.entry,
            row.void_reason or "",
            outcome.entry_text,
        )

    async def _note_failure(self, decision_id: uuid.UUID, error: str) -> None:
        try:
            async with self.database.transaction() as conn:
                await store.record_attempt(conn, decision_id, error[:500])
        except NOTE_ERRORS as exc:  # best effort: the decision stays pending anyway
            log.warning("could not record a failed apply attempt", extra={"error": type(exc).__name__})
