"""Every state change of timesheets and approvals reaches the audit trail exactly once, even when
the audit service is down for a while: real services, one database of this module's own."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from approvals.app import create_app as create_approvals
from approvals.settings import ApprovalsSettings
from approvals.store import RECORD_PENDING, pending_arguments
from svckit.contracts.approvals import DecisionIn
from svckit.identity import Identity
from svckit.settings import load_settings
from timesheets.app import create_app as create_timesheets
from timesheets.settings import TimesheetsSettings

from testkit.client import SignedApi, wait_ready
from testkit.fixtures import (
    Caller,
    ServiceProcess,
    ServiceRedis,
    create_database,
    drop_database,
    migrate_schema,
    serve_app,
    user,
)

SERVICES = Path(__file__).resolve().parents[2] / "services"
EMPLOYEE = ("read:timesheets", "create:timesheets", "delete:timesheets")
AUDITOR = user("carol", "read:audit")


class Stack:
    def __init__(self, url: str, audit: ServiceProcess, timesheets: SignedApi, approvals: SignedApi) -> None:
        self.url = url
        self.audit = audit
        self.timesheets = timesheets
        self.approvals = approvals


@pytest.fixture(scope="module")
async def stack(
    test_run_id: str,
    service_env: dict[str, str],
    service_redis: ServiceRedis,
    caller: Caller,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Stack]:
    name = f"tsp_test_{test_run_id}_trail"
    url = await create_database(name)
    for service in ("timesheets", "approvals", "audit"):
        await migrate_schema(url, service, SERVICES / service / service)
    env = {**service_env, "DATABASE_URL": url}  # the owner: each service gets its own role below
    own = service_redis.runtime_env  # each its own runtime role and Redis user
    logs = tmp_path_factory.mktemp("audit")
    audit = ServiceProcess("audit", own(env, "audit"), log_dir=logs).start("/readyz")
    relay = {"AUDIT_URL": audit.url, "OUTBOX_MAX_BACKOFF_SECONDS": "1", "OUTBOX_POLL_INTERVAL_SECONDS": "0.5"}
    timesheets_app = create_timesheets(
        load_settings(TimesheetsSettings, env={**own(env, "timesheets"), **relay})
    )
    try:
        async with serve_app(timesheets_app) as timesheets_url:
            await wait_ready(timesheets_url)
            approvals_env = {**own(env, "approvals"), **relay, "TIMESHEETS_URL": timesheets_url}
            approvals_settings = load_settings(ApprovalsSettings, env=approvals_env)
            async with serve_app(create_approvals(approvals_settings)) as approvals_url:
                await wait_ready(approvals_url)
                timesheets = SignedApi(timesheets_url, caller)
                approvals = SignedApi(approvals_url, caller)
                yield Stack(url, audit, timesheets, approvals)
                await timesheets.close()
                await approvals.close()
    finally:
        audit.stop()
        await drop_database(name)


async def outbox_backlog(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        value: int = await conn.fetchval(
            "SELECT (SELECT count(*) FROM timesheets.outbox) + (SELECT count(*) FROM approvals.outbox)"
        )
        return value
    finally:
        await conn.close()


async def trail(audit: SignedApi, resource_id: str) -> list[tuple[str, str, str]]:
    """(source, action, outcome) of every audit record about one resource, by time of occurrence
    (after an outage the two services' relays may deliver in either order: ``seq`` is arrival)."""
    reply = await audit.call(
        "GET", "/audit/events", AUDITOR, params={"resource_id": resource_id, "limit": "100"}
    )
    assert reply.status == 200, reply.text
    items = sorted(reply.body["items"], key=lambda item: dt.datetime.fromisoformat(item["occurred_at"]))
    assert len({item["id"] for item in items}) == len(items)
    return [(item["source"], item["action"], item["outcome"]) for item in items]


async def wait_drained(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while (backlog := await outbox_backlog(url)) > 0:
        assert time.monotonic() < deadline, f"{backlog} events still in the outboxes after {timeout}s"
        await asyncio.sleep(0.2)


async def act(stack: Stack) -> dict[str, Any]:
    """One of each state change; returns the resource ids and the expected trail of each."""
    alice = user(f"alice-{uuid.uuid4().hex[:6]}", *EMPLOYEE)
    bob = user(f"bob-{uuid.uuid4().hex[:6]}", *EMPLOYEE, "approve:timesheets")
    ids = []
    for day in (1, 2, 3):
        reply = await stack.timesheets.call(
            "POST", "/timesheets", alice, json={"date": f"2026-11-0{day}", "project": "A", "hours": 8}
        )
        assert reply.status == 201
        ids.append(reply.body["id"])
    approved, rejected, deleted = ids
    assert (
        await stack.approvals.call("PUT", f"/approvals/{approved}", bob, json={"decision": "approved"})
    ).status == 200
    assert (
        await stack.approvals.call("PUT", f"/approvals/{rejected}", bob, json={"decision": "rejected"})
    ).status == 200
    assert (await stack.timesheets.call("DELETE", f"/timesheets/{deleted}", alice)).status == 204
    own = await stack.timesheets.call(
        "POST", "/timesheets", bob, json={"date": "2026-11-04", "project": "B", "hours": 1}
    )
    assert (
        await stack.approvals.call("PUT", f"/approvals/{own.body['id']}", bob, json={"decision": "approved"})
    ).status == 403
    # A decision recorded pending (its apply call lost, say) whose entry the owner deleted meanwhile:
    # the approver's repeated PUT finds the entry gone and voids the decision, a change on the trail.
    gone = await stack.timesheets.call(
        "POST", "/timesheets", alice, json={"date": "2026-11-05", "project": "C", "hours": 2}
    )
    conn = await asyncpg.connect(stack.url)
    try:
        recorded = await conn.fetchrow(
            RECORD_PENDING.replace("INTO decisions", "INTO approvals.decisions"),
            *pending_arguments(
                uuid.UUID(gone.body["id"]),
                bob,
                DecisionIn(decision="approved"),
                None,
                decision_id=uuid.uuid4(),
            ),
        )
    finally:
        await conn.close()
    assert recorded is not None
    assert (await stack.timesheets.call("DELETE", f"/timesheets/{gone.body['id']}", alice)).status == 204
    assert (
        await stack.approvals.call("PUT", f"/approvals/{gone.body['id']}", bob, json={"decision": "approved"})
    ).status == 404
    batch = Identity(
        "http://localhost:9000/", "batch", "client", "timesheets-batch", frozenset({"batch:upload"}), ""
    )
    rows = [{"user": alice.subject, "date": "2026-10-01", "project": "U", "hours": 1}] * 3
    upload = await stack.timesheets.call("POST", "/timesheets/upload", batch, json={"entries": rows})
    assert upload.status == 201
    created = ("timesheets", "timesheet.created", "success")
    decided = [("approvals", "approval.decided", "success"), ("timesheets", "timesheet.decided", "success")]
    return {
        approved: [created, *decided],
        rejected: [created, *decided],
        deleted: [created, ("timesheets", "timesheet.deleted", "success")],
        own.body["id"]: [created, ("approvals", "approval.decided", "denied")],
        gone.body["id"]: [
            created,
            ("timesheets", "timesheet.deleted", "success"),
            ("approvals", "approval.voided", "failure"),
        ],
        upload.body["upload_id"]: [("timesheets", "timesheet.uploaded", "success")],
    }


def same_trail(got: list[tuple[str, str, str]], expected: list[tuple[str, str, str]]) -> bool:
    # The two services' events for one decision may arrive in either order.
    return sorted(got) == sorted(expected) and got[0] == expected[0]


async def test_every_change_is_audited_once(stack: Stack) -> None:
    expected = await act(stack)
    await wait_drained(stack.url)
    audit = SignedApi(stack.audit.url, stack.timesheets.caller)
    try:
        for resource_id, events in expected.items():
            got = await trail(audit, resource_id)
            assert same_trail(got, events), (resource_id, got)
    finally:
        await audit.close()


async def test_audit_down_for_a_while_loses_and_duplicates_nothing(stack: Stack) -> None:
    stack.audit.stop()
    expected = await act(stack)
    # The changes succeeded; their events wait in the outboxes.
    assert await outbox_backlog(stack.url) == sum(len(events) for events in expected.values())
    await asyncio.sleep(2)  # a few failed deliveries and backoffs
    await asyncio.to_thread(stack.audit.start, "/readyz")
    await wait_drained(stack.url)
    audit = SignedApi(stack.audit.url, stack.timesheets.caller)
    try:
        for resource_id, events in expected.items():
            got = await trail(audit, resource_id)
            assert same_trail(got, events), (resource_id, got)
        verify = await audit.call("GET", "/audit/verify", AUDITOR)
        assert verify.status == 200
        assert verify.body["ok"] is True
    finally:
        await audit.close()
