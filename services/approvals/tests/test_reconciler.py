"""The reconciler settles a backlog of pending decisions, as a crash or an outage leaves them."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Sequence

import asyncpg
import pytest
from approvals.peer import Timesheets
from approvals.reconciler import Reconciler
from approvals.workflow import Workflow
from svckit.contracts.audit import AuditEvent
from svckit.db import Database
from svckit.identity import Identity

from testkit.client import SignedApi
from testkit.fixtures import pair_signer, user


async def no_refusals(events: Sequence[AuditEvent]) -> None:
    """The reconciler drives recorded decisions: it never refuses an attempt, so records none."""
    raise AssertionError(f"the reconciler recorded a refusal: {events}")


@pytest.fixture
async def reconciler(
    domain_database: str, timesheets_url: str, identity_keys: dict[str, str]
) -> AsyncIterator[Reconciler]:
    database = Database(domain_database, schema="approvals")
    await database.wait_connected(10)
    peer = Timesheets.at(timesheets_url, pair_signer(identity_keys, "approvals", "timesheets"), 5)
    # The session's approvals app runs its own reconciler (it takes decisions untouched for 1 s). The
    # backlog below is stamped an hour ahead so only this one, told to look that far, takes it.
    workflow = Workflow(database, peer, 1, record=no_refusals)
    yield Reconciler(database, workflow, interval=1, after=-7200)
    await peer.close()
    await database.close()


async def test_backlog_is_settled(
    reconciler: Reconciler, timesheets: SignedApi, db: asyncpg.Connection
) -> None:
    alice = user(f"alice-{uuid.uuid4().hex[:6]}", "create:timesheets", "delete:timesheets")
    boss = user(f"boss-{uuid.uuid4().hex[:6]}", "approve:timesheets")
    entries = []
    for day in range(1, 13):
        reply = await timesheets.call(
            "POST", "/timesheets", alice, json={"date": f"2026-08-{day:02d}", "project": "R", "hours": 1}
        )
        entries.append(uuid.UUID(reply.body["id"]))
    decisions = {}
    for entry_id in entries:  # what a crash right after recording leaves behind
        decisions[entry_id] = await db.fetchval(
            """INSERT INTO approvals.decisions (id, entry_id, decision, approver_issuer, approver_subject,
                                                decided_at, updated_at)
               VALUES (gen_random_uuid(), $1, 'approved', $2, $3, now(), now() + interval '1 hour')
               RETURNING id""",
            entry_id,
            boss.issuer,
            boss.subject,
        )
    # Some were already applied at the timesheets service before the crash…
    service = Identity.service("approvals")
    for entry_id in entries[:4]:
        body = {
            "decision_id": str(decisions[entry_id]),
            "decision": "approved",
            "by": {"issuer": boss.issuer, "subject": boss.subject},
            "at": dt.datetime.now(dt.UTC).isoformat(),
        }
        assert (
            await timesheets.call("POST", f"/internal/timesheets/{entry_id}/decision", service, json=body)
        ).status == 200
    # …and one entry was deleted meanwhile.
    assert (await timesheets.call("DELETE", f"/timesheets/{entries[-1]}", alice)).status == 204

    await reconciler.run_once()
    rows = await db.fetch(
        """SELECT d.entry_id, d.state, d.void_reason, e.status, e.decision_id = d.id AS carried
           FROM approvals.decisions d JOIN timesheets.entries e ON e.id = d.entry_id
           WHERE d.entry_id = ANY($1::uuid[])""",
        entries,
    )
    by_entry = {row["entry_id"]: row for row in rows}
    for entry_id in entries[:-1]:
        row = by_entry[entry_id]
        assert (row["state"], row["status"], row["carried"]) == ("applied", "approved", True)
    gone = by_entry[entries[-1]]
    assert (gone["state"], gone["void_reason"], gone["status"]) == ("void", "entry_gone", "submitted")
    applied_events = await db.fetchval(
        """SELECT count(*) FROM approvals.outbox
           WHERE payload->>'action' = 'approval.decided' AND payload->'resource'->>'id' = ANY($1::text[])""",
        [str(e) for e in entries],
    )
    assert applied_events == len(entries) - 1
