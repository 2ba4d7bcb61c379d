"""The approval decision and the entry's status end consistent even when a process dies between
the steps (docs/approvals-consistency.md): real processes, real kills, real reconciliation."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg
from svckit.identity import Identity

from testkit.client import SignedApi
from testkit.fixtures import Caller, ServiceProcess, user

from .conftest import FaultProxy, signed_api

EMPLOYEE = ("read:timesheets", "create:timesheets", "delete:timesheets")


def employee() -> Identity:
    return user(f"alice-{uuid.uuid4().hex[:8]}", *EMPLOYEE)


def manager() -> Identity:
    return user(f"bob-{uuid.uuid4().hex[:8]}", *EMPLOYEE, "approve:timesheets")


async def submit(timesheets: SignedApi, who: Identity) -> str:
    reply = await timesheets.call(
        "POST", "/timesheets", who, json={"date": "2026-11-23", "project": "P", "hours": 8}
    )
    assert reply.status == 201
    entry_id: str = reply.body["id"]
    return entry_id


async def state(db: asyncpg.Connection, entry_id: str) -> dict[str, Any]:
    """Both sides of the decision, and the audit events each side enqueued for it."""
    key = uuid.UUID(entry_id)
    entry = await db.fetchrow(
        "SELECT status, decision_id, deleted_at FROM timesheets.entries WHERE id = $1", key
    )
    decisions = await db.fetch(
        "SELECT id, state, void_reason FROM approvals.decisions WHERE entry_id = $1 ORDER BY decided_at", key
    )
    events = await db.fetch(
        """SELECT payload->>'source' AS source, payload->>'action' AS action, payload->>'outcome' AS outcome,
                  payload->'details'->>'applied_by' AS via
           FROM (SELECT payload FROM timesheets.outbox UNION ALL SELECT payload FROM approvals.outbox) AS o
           WHERE payload->'resource'->>'id' = $1 AND payload->>'action' <> 'timesheet.created'""",
        entry_id,
    )
    assert entry is not None
    return {
        "status": entry["status"],
        "entry_decision": entry["decision_id"],
        "deleted": entry["deleted_at"] is not None,
        "decisions": [(row["id"], row["state"], row["void_reason"]) for row in decisions],
        "events": sorted((e["source"], e["action"], e["outcome"], e["via"]) for e in events),
    }


async def wait_settled(db: asyncpg.Connection, entry_id: str, timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        current = await state(db, entry_id)
        if current["decisions"] and all(d[1] != "pending" for d in current["decisions"]):
            return current
        assert time.monotonic() < deadline, f"still pending after {timeout}s: {current}"
        await asyncio.sleep(0.1)


async def test_killed_after_the_entry_changed_is_reconciled(
    approvals_process: ServiceProcess,
    fault_proxy: FaultProxy,
    timesheets: SignedApi,
    db: asyncpg.Connection,
    caller: Caller,
) -> None:
    alice, bob = employee(), manager()
    entry_id = await submit(timesheets, alice)
    await asyncio.to_thread(approvals_process.start, "/readyz")
    fault_proxy.set("hold_after")
    async with signed_api(approvals_process.url, caller) as approvals:
        put = asyncio.create_task(
            approvals.call("PUT", f"/approvals/{entry_id}", bob, json={"decision": "approved"})
        )
        await asyncio.wait_for(fault_proxy.held.wait(), 10)
        # The timesheets service applied the decision; approvals has not settled it: the window.
        window = await state(db, entry_id)
        assert window["status"] == "approved"
        assert [d[1] for d in window["decisions"]] == ["pending"]
        assert window["entry_decision"] == window["decisions"][0][0]

        assert approvals_process.process is not None
        approvals_process.process.kill()  # SIGKILL: no shutdown code runs
        approvals_process.process.wait()
        fault_proxy.set("pass")
        assert (await asyncio.gather(put, return_exceptions=True))[0] is not None

        await asyncio.to_thread(approvals_process.start, "/readyz")  # a new process of the same service
        settled = await wait_settled(db, entry_id)
        decision_id = window["decisions"][0][0]
        assert settled["decisions"] == [(decision_id, "applied", None)]
        assert settled["status"] == "approved"
        assert settled["entry_decision"] == decision_id
        # Each side's audit event exactly once; the approval's says the reconciler finished it.
        assert settled["events"] == [
            ("approvals", "approval.decided", "success", "reconciler"),
            ("timesheets", "timesheet.decided", "success", None),
        ]
        again = await approvals.call("PUT", f"/approvals/{entry_id}", bob, json={"decision": "approved"})
        assert again.status == 409


async def test_killed_before_applying_is_reconciled(
    approvals_process: ServiceProcess,
    fault_proxy: FaultProxy,
    timesheets: SignedApi,
    db: asyncpg.Connection,
    caller: Caller,
) -> None:
    alice, bob = employee(), manager()
    entry_id = await submit(timesheets, alice)
    await asyncio.to_thread(approvals_process.start, "/readyz")
    fault_proxy.set("hold_before")
    async with signed_api(approvals_process.url, caller) as approvals:
        put = asyncio.create_task(
            approvals.call(
                "PUT", f"/approvals/{entry_id}", bob, json={"decision": "rejected", "comment": "no"}
            )
        )
        await asyncio.wait_for(fault_proxy.held.wait(), 10)
        window = await state(db, entry_id)
        assert window["status"] == "submitted"
        assert [d[1] for d in window["decisions"]] == ["pending"]
        # Another approver meanwhile: the recorded decision holds the entry.
        other = await approvals.call(
            "PUT", f"/approvals/{entry_id}", manager(), json={"decision": "approved"}
        )
        assert other.status == 409

        assert approvals_process.process is not None
        approvals_process.process.kill()
        approvals_process.process.wait()
        fault_proxy.release()
        fault_proxy.set("pass")
        await asyncio.gather(put, return_exceptions=True)

        await asyncio.to_thread(approvals_process.start, "/readyz")
        settled = await wait_settled(db, entry_id)
        assert [d[1] for d in settled["decisions"]] == ["applied"]
        assert settled["status"] == "rejected"
        assert settled["entry_decision"] == settled["decisions"][0][0]
        mine = await timesheets.call("GET", f"/timesheets/{entry_id}", alice)
        assert mine.body["decision"]["comment"] == "no"


async def test_lost_link_then_entry_deleted_voids_the_decision(
    approvals_process: ServiceProcess,
    fault_proxy: FaultProxy,
    timesheets: SignedApi,
    db: asyncpg.Connection,
    caller: Caller,
) -> None:
    alice, bob = employee(), manager()
    entry_id = await submit(timesheets, alice)
    await asyncio.to_thread(approvals_process.start, "/readyz")
    fault_proxy.set("drop_request")
    async with signed_api(approvals_process.url, caller) as approvals:
        reply = await approvals.call("PUT", f"/approvals/{entry_id}", bob, json={"decision": "approved"})
        assert reply.status == 503
        assert reply.body["decision"]["state"] == "pending"
        # Not yet applied, so the owner may still delete it; the decision can then never apply.
        assert (await timesheets.call("DELETE", f"/timesheets/{entry_id}", alice)).status == 204
        fault_proxy.set("pass")
        settled = await wait_settled(db, entry_id)
        assert [(d[1], d[2]) for d in settled["decisions"]] == [("void", "entry_gone")]
        assert settled["deleted"]
        assert settled["status"] == "submitted"
        # the void is on the trail too, once (the reconciler voided it: the PUT had answered 503)
        assert settled["events"] == [
            ("approvals", "approval.voided", "failure", None),
            ("timesheets", "timesheet.deleted", "success", None),
        ]
        again = await approvals.call("PUT", f"/approvals/{entry_id}", bob, json={"decision": "approved"})
        assert again.status == 404


async def test_lost_answer_then_client_retry_gets_the_outcome(
    approvals_process: ServiceProcess,
    fault_proxy: FaultProxy,
    timesheets: SignedApi,
    db: asyncpg.Connection,
    caller: Caller,
) -> None:
    """The decision was applied but both answers were lost; the approver's retry of the same PUT
    (before the reconciler's turn) learns it succeeded, and nothing is applied twice."""
    alice, bob = employee(), manager()
    entry_id = await submit(timesheets, alice)
    approvals_process.env["RECONCILE_AFTER_SECONDS"] = "3600"  # only the client's retry drives it
    await asyncio.to_thread(approvals_process.start, "/readyz")
    fault_proxy.set("drop_response")
    async with signed_api(approvals_process.url, caller) as approvals:
        body = {"decision": "approved", "comment": "ok"}
        first = await approvals.call("PUT", f"/approvals/{entry_id}", bob, json=body)
        assert first.status == 503
        assert (await state(db, entry_id))["status"] == "approved"
        fault_proxy.set("pass")
        retry = await approvals.call("PUT", f"/approvals/{entry_id}", bob, json=body)
        assert retry.status == 200, retry.text
        assert retry.body["id"] == first.body["decision"]["id"]
        assert retry.body["state"] == "applied"
        settled = await state(db, entry_id)
        assert [d[1] for d in settled["decisions"]] == ["applied"]
        assert [e[1] for e in settled["events"]] == ["approval.decided", "timesheet.decided"]
