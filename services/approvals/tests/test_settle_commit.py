"""Settling a decision does not wait for its commit to reach the disk; recording it does.

The timesheets service's apply is the decision's truth, committed durably there before a decision is
settled here. A settle lost in a crash of Postgres leaves the decision ``pending``, which the
reconciler (or the approver's repeated PUT) settles again with the same event id
(``events.settlement_id``): the case of a restore of this schema (docs/approvals-consistency.md). So
the settle statements turn ``synchronous_commit`` off for their own transaction only.
"""

from __future__ import annotations

import uuid

import asyncpg
import pytest
from approvals import events, store
from approvals.store import DecisionRow
from svckit.contracts.approvals import DecisionIn
from svckit.identity import Identity

APPROVER = Identity("http://localhost:9000/", "settle-approver", "user", "timesheets-spa")


async def pending(db: asyncpg.Connection) -> DecisionRow:
    row = await db.fetchrow(
        store.RECORD_PENDING,
        *store.pending_arguments(
            uuid.uuid4(), APPROVER, DecisionIn(decision="approved"), "r", decision_id=uuid.uuid4()
        ),
    )
    assert row is not None
    return DecisionRow.of(row)


async def commit_setting(db: asyncpg.Connection, statement: str, *arguments: object) -> str:
    """``synchronous_commit`` as the transaction running ``statement`` will commit with."""
    async with db.transaction():
        await db.fetchrow(statement, *arguments)
        setting: str = await db.fetchval("SELECT current_setting('synchronous_commit')")
    return setting


@pytest.fixture
async def approvals_db(db: asyncpg.Connection) -> asyncpg.Connection:
    await db.execute("SET search_path = approvals")
    return db


async def test_recording_waits_for_the_disk(approvals_db: asyncpg.Connection) -> None:
    arguments = store.pending_arguments(
        uuid.uuid4(), APPROVER, DecisionIn(decision="approved"), "r", decision_id=uuid.uuid4()
    )
    assert await commit_setting(approvals_db, store.RECORD_PENDING, *arguments) == "on"


async def test_settling_applied_does_not_wait_for_the_disk(approvals_db: asyncpg.Connection) -> None:
    row = await pending(approvals_db)
    setting = await commit_setting(approvals_db, store.MARK_APPLIED, row.id, *events.decided(row, "request"))
    assert setting == "off"
    assert await approvals_db.fetchval("SELECT current_setting('synchronous_commit')") == "on"
    assert await approvals_db.fetchval("SELECT state FROM decisions WHERE id = $1", row.id) == "applied"


async def test_settling_void_does_not_wait_for_the_disk(approvals_db: asyncpg.Connection) -> None:
    row = await pending(approvals_db)
    arguments = ("entry_gone", *events.voided(row, "entry_gone", "request"))
    assert await commit_setting(approvals_db, store.MARK_VOID, row.id, *arguments) == "off"
    assert await approvals_db.fetchval("SELECT current_setting('synchronous_commit')") == "on"
    assert await approvals_db.fetchval("SELECT state FROM decisions WHERE id = $1", row.id) == "void"
