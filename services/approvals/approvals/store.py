"""SQL over the ``approvals`` schema: the decisions and their state (pending → applied | void)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from typing import Any

import asyncpg
from svckit.contracts.approvals import DecisionIn
from svckit.db import Connection
from svckit.identity import Identity
from svckit.outbox import with_enqueued


@dataclass(frozen=True, slots=True)
class DecisionRow:
    """One row of ``decisions``."""

    id: uuid.UUID
    entry_id: uuid.UUID
    decision: str
    comment: str | None
    approver_issuer: str
    approver_subject: str
    approver_name: str
    approver_client: str
    approver_kind: str
    request_id: str | None
    state: str
    void_reason: str | None
    attempts: int
    last_error: str | None
    decided_at: dt.datetime
    applied_at: dt.datetime | None
    updated_at: dt.datetime

    @classmethod
    def of(cls, record: asyncpg.Record) -> DecisionRow:
        """From a row selected with :data:`COLUMNS`."""
        return cls(*record.values())

    @classmethod
    def maybe(cls, record: asyncpg.Record | None) -> DecisionRow | None:
        return cls.of(record) if record is not None else None

    @property
    def approver(self) -> tuple[str, str]:
        return (self.approver_issuer, self.approver_subject)


@dataclass(frozen=True, slots=True)
class PendingStats:
    pending: int
    oldest: float


# The select list is the row type's fields, in order, so ``DecisionRow.of`` can take values positionally.
COLUMNS = ", ".join(field.name for field in fields(DecisionRow))


RECORD_PENDING = f"""INSERT INTO decisions (id, entry_id, decision, comment, approver_issuer,
                                       approver_subject, approver_name, approver_client, request_id,
                                       approver_kind)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
    ON CONFLICT (entry_id) WHERE state <> 'void' DO NOTHING
    RETURNING {COLUMNS}"""


def pending_arguments(
    entry_id: uuid.UUID,
    approver: Identity,
    body: DecisionIn,
    request_id: str | None,
    *,
    decision_id: uuid.UUID,
) -> tuple[Any, ...]:
    """The parameters of :data:`RECORD_PENDING` (one statement: it records the decision as pending,
    or nothing when the entry already has a live, non-void decision). ``decision_id`` is the
    caller's, so that after a lost answer it knows what to look for."""
    return (
        decision_id,
        entry_id,
        body.decision,
        body.comment,
        approver.issuer,
        approver.subject,
        approver.name,
        approver.client_id,
        request_id,
        approver.kind,
    )


def decision_record(decision_id: uuid.UUID) -> Callable[[Connection], Awaitable[asyncpg.Record | None]]:
    """Reads the decision's row as :data:`RECORD_PENDING` returns it (after its answer was lost)."""

    async def reread(conn: Connection) -> asyncpg.Record | None:
        return await conn.fetchrow(f"SELECT {COLUMNS} FROM decisions WHERE id = $1", decision_id)

    return reread


#: the entry's pending or applied decision
LIVE_FOR_ENTRY = f"SELECT {COLUMNS} FROM decisions WHERE entry_id = $1 AND state <> 'void'"


async def live_for_entry(conn: Connection, entry_id: uuid.UUID) -> DecisionRow | None:
    """The entry's pending or applied decision, if any."""
    return DecisionRow.maybe(await conn.fetchrow(LIVE_FOR_ENTRY, entry_id))


async def get(conn: Connection, decision_id: uuid.UUID) -> DecisionRow | None:
    return DecisionRow.maybe(
        await conn.fetchrow(f"SELECT {COLUMNS} FROM decisions WHERE id = $1", decision_id)
    )


async def settled(conn: Connection, decision_id: uuid.UUID) -> bool:
    """No longer pending (applied or void): asked after a COMMIT of settling whose answer was lost."""
    state = await conn.fetchval("SELECT state FROM decisions WHERE id = $1", decision_id)
    return state is not None and state != "pending"


#: "this decision is still pending", for the statements that change one decision found by its id
#: (settling it, counting an attempt). Not written ``state = 'pending'``: that matches the partial
#: index ``decisions_pending`` too, and once the table is analysed with most decisions settled the
#: planner takes that index (few live rows) and filters it by ``id`` instead of looking the id up.
#: A settled decision's old version stays in that index until a vacuum, and while any transaction
#: holds the horizon back (the relays' claim transactions, a backup's snapshot) no scan can mark it
#: dead, so each settle visited every decision settled since (8,179 buffers and 2.2 ms a statement
#: after 10,000 decisions, rising until the next vacuum; ``tests/test_settle_plans.py``). The same
#: condition (``state`` is never null) in a form the planner does not match to the index's predicate
#: leaves it the primary key: one row, ~12 buffers, whatever the table's history.
STILL_PENDING = "state IS NOT DISTINCT FROM 'pending'"


#: pending → applied with the decision's audit event (``$2`` to ``$4``): one statement; no row (and no
#: event) when it was no longer pending (someone else settled it first)
MARK_APPLIED = with_enqueued(
    f"""UPDATE decisions SET state = 'applied', applied_at = clock_timestamp(),
                             updated_at = clock_timestamp(), last_error = NULL
        WHERE id = $1 AND {STILL_PENDING}
        RETURNING {COLUMNS}""",
    first=2,
)


#: pending → void with its reason (``$2``) and the void's audit event (``$3`` to ``$5``): one statement,
#: like :data:`MARK_APPLIED`; no row (and no event) when it was no longer pending
MARK_VOID = with_enqueued(
    f"""UPDATE decisions SET state = 'void', void_reason = $2, updated_at = clock_timestamp()
        WHERE id = $1 AND {STILL_PENDING}
        RETURNING {COLUMNS}""",
    first=3,
)


#: one more apply attempt (``$2``: why it failed) on a decision still pending
RECORD_ATTEMPT = f"""UPDATE decisions
    SET attempts = attempts + 1, last_error = $2, updated_at = clock_timestamp()
    WHERE id = $1 AND {STILL_PENDING}"""


async def record_attempt(conn: Connection, decision_id: uuid.UUID, error: str | None) -> None:
    """Count an apply attempt (and why it failed); also renews the lease against the reconciler."""
    await conn.execute(RECORD_ATTEMPT, decision_id, error)


async def lease_stale(conn: Connection, older_than_seconds: float, limit: int) -> list[DecisionRow]:
    """Take up to ``limit`` decisions pending and untouched for ``older_than_seconds``.

    Touching ``updated_at`` is the lease: another reconciler (another replica) skips them for the
    same period, and ``SKIP LOCKED`` keeps two replicas from taking the same rows at the same moment.
    """
    records = await conn.fetch(
        f"""UPDATE decisions SET updated_at = clock_timestamp()
            WHERE id IN (
                SELECT id FROM decisions
                WHERE state = 'pending'
                  AND updated_at < clock_timestamp() - make_interval(secs => $1)
                ORDER BY updated_at
                LIMIT $2
                FOR UPDATE SKIP LOCKED)
            RETURNING {COLUMNS}""",
        older_than_seconds,
        limit,
    )
    return [DecisionRow.of(record) for record in records]


async def pending_stats(conn: Connection) -> PendingStats:
    row = await conn.fetchrow(
        """SELECT count(*) AS pending,
                  COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - min(decided_at)), 0) AS oldest
           FROM decisions WHERE state = 'pending'"""
    )
    assert row is not None
    return PendingStats(pending=row["pending"], oldest=float(row["oldest"]))
