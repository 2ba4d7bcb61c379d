"""SQL over the ``approvals`` schema: the decisions and their state (pending → applied | void)."""

from __future__ import annotations

import uuid

import asyncpg
from svckit.db import Connection
from svckit.identity import Identity

from .models import DecisionIn

Row = asyncpg.Record

COLUMNS = """id, entry_id, decision, comment, approver_issuer, approver_subject, approver_name,
    approver_client, request_id, state, void_reason, attempts, last_error, decided_at, applied_at,
    updated_at"""


async def insert_pending(
    conn: Connection,
    entry_id: uuid.UUID,
    approver: Identity,
    body: DecisionIn,
    request_id: str | None,
    *,
    decision_id: uuid.UUID,
) -> Row | None:
    """Record a new decision as pending; None if the entry already has a live (non-void) decision.

    ``decision_id`` is the caller's, so that after a lost COMMIT it knows what to look for."""
    return await conn.fetchrow(
        f"""INSERT INTO decisions (id, entry_id, decision, comment, approver_issuer, approver_subject,
                                   approver_name, approver_client, request_id)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
            ON CONFLICT (entry_id) WHERE state <> 'void' DO NOTHING
            RETURNING {COLUMNS}""",
        decision_id,
        entry_id,
        body.decision,
        body.comment,
        approver.issuer,
        approver.subject,
        approver.name,
        approver.client_id,
        request_id,
    )


async def live_for_entry(conn: Connection, entry_id: uuid.UUID) -> Row | None:
    """The entry's pending or applied decision, if any."""
    return await conn.fetchrow(
        f"SELECT {COLUMNS} FROM decisions WHERE entry_id = $1 AND state <> 'void'", entry_id
    )


async def get(conn: Connection, decision_id: uuid.UUID) -> Row | None:
    return await conn.fetchrow(f"SELECT {COLUMNS} FROM decisions WHERE id = $1", decision_id)


async def settled(conn: Connection, decision_id: uuid.UUID) -> bool:
    """No longer pending (applied or void): asked after a COMMIT of settling whose answer was lost."""
    state = await conn.fetchval("SELECT state FROM decisions WHERE id = $1", decision_id)
    return state is not None and state != "pending"


async def mark_applied(conn: Connection, decision_id: uuid.UUID) -> Row | None:
    """pending → applied; None if it was no longer pending (someone else settled it first)."""
    return await conn.fetchrow(
        f"""UPDATE decisions SET state = 'applied', applied_at = clock_timestamp(),
                                 updated_at = clock_timestamp(), last_error = NULL
            WHERE id = $1 AND state = 'pending'
            RETURNING {COLUMNS}""",
        decision_id,
    )


async def mark_void(conn: Connection, decision_id: uuid.UUID, reason: str) -> Row | None:
    return await conn.fetchrow(
        f"""UPDATE decisions SET state = 'void', void_reason = $2, updated_at = clock_timestamp()
            WHERE id = $1 AND state = 'pending'
            RETURNING {COLUMNS}""",
        decision_id,
        reason,
    )


async def record_attempt(conn: Connection, decision_id: uuid.UUID, error: str | None) -> None:
    """Count an apply attempt (and why it failed); also renews the lease against the reconciler."""
    await conn.execute(
        """UPDATE decisions SET attempts = attempts + 1, last_error = $2, updated_at = clock_timestamp()
           WHERE id = $1 AND state = 'pending'""",
        decision_id,
        error,
    )


async def lease_stale(conn: Connection, older_than_seconds: float, limit: int) -> list[Row]:
    """Take up to ``limit`` decisions pending and untouched for ``older_than_seconds``.

    Touching ``updated_at`` is the lease: another reconciler (another replica) skips them for the
    same period, and ``SKIP LOCKED`` keeps two replicas from taking the same rows at the same moment.
    """
    return await conn.fetch(
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


async def pending_stats(conn: Connection) -> Row:
    row = await conn.fetchrow(
        """SELECT count(*) AS pending,
                  COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - min(decided_at)), 0) AS oldest
           FROM decisions WHERE state = 'pending'"""
    )
    assert row is not None
    return row
