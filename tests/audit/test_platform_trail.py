"""The whole trail across services: timesheets and approvals change state, their outboxes relay to
the audit service, and the records say who did what, in which request, and verify as a chain.

All three services run on loopback over a database of this module's own, wired to each other
exactly as in production (``AUDIT_URL``, ``TIMESHEETS_URL``).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from approvals.app import create_app as create_approvals
from approvals.settings import ApprovalsSettings
from audit.app import create_app as create_audit
from audit.settings import AuditSettings
from svckit.settings import load_settings
from timesheets.app import create_app as create_timesheets
from timesheets.settings import TimesheetsSettings

from testkit.client import SignedApi
from testkit.fixtures import (
    Caller,
    create_database,
    drop_database,
    free_port,
    migrate_schema,
    runtime_url,
    serve_app,
    user,
)

SERVICES = Path(__file__).resolve().parents[2] / "services"

ALICE = user("alice", "read:timesheets", "create:timesheets", "delete:timesheets", name="Alice")
BOB = user("bob", "read:timesheets", "approve:timesheets", name="Bob")
CAROL = user("carol", "read:audit", name="Carol")


@dataclass
class Platform:
    timesheets: SignedApi
    approvals: SignedApi
    audit: SignedApi


async def ready(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url + "/readyz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise TimeoutError(f"{url} never became ready")


@pytest.fixture(scope="module")
async def platform(identity_keys: dict[str, str], caller: Caller) -> AsyncIterator[Platform]:
    name = f"tsp_test_trail_{secrets.token_hex(4)}"
    dsn = await create_database(name)
    try:
        for service in ("timesheets", "approvals", "audit"):
            await migrate_schema(dsn, service, SERVICES / service / service)
        ports = {service: free_port() for service in ("timesheets", "approvals", "audit")}
        urls = {service: f"http://127.0.0.1:{port}" for service, port in ports.items()}
        common = {**identity_keys, "AUDIT_URL": urls["audit"]}

        def env(service: str, **more: str) -> dict[str, str]:
            return {**common, "DATABASE_URL": runtime_url(dsn, service), **more}  # its own role

        audit = create_audit(load_settings(AuditSettings, env=env("audit"), audit_verify_interval_seconds=0))
        timesheets = create_timesheets(
            load_settings(TimesheetsSettings, env=env("timesheets", OUTBOX_POLL_INTERVAL_SECONDS="0.5"))
        )
        approvals = create_approvals(
            load_settings(
                ApprovalsSettings,
                env=env("approvals", TIMESHEETS_URL=urls["timesheets"], OUTBOX_POLL_INTERVAL_SECONDS="0.5"),
            )
        )
        async with (
            serve_app(audit, ports["audit"]),
            serve_app(timesheets, ports["timesheets"]),
            serve_app(approvals, ports["approvals"]),
        ):
            for url in urls.values():
                await ready(url)
            clients = Platform(*(SignedApi(urls[s], caller) for s in ("timesheets", "approvals", "audit")))
            try:
                yield clients
            finally:
                for client in (clients.timesheets, clients.approvals, clients.audit):
                    await client.close()
    finally:
        await drop_database(name)


async def trail_of(platform: Platform, resource_id: str, expected: int, timeout: float = 15.0) -> list[Any]:
    """The records about one resource, oldest first, once ``expected`` of them have arrived."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        reply = await platform.audit.call("GET", "/audit/events", CAROL, params={"resource_id": resource_id})
        assert reply.status == 200, reply.text
        items: list[Any] = reply.body["items"]
        if len(items) >= expected or asyncio.get_running_loop().time() > deadline:
            return list(reversed(items))
        await asyncio.sleep(0.1)


async def test_create_approve_and_delete_leave_a_complete_verifiable_trail(platform: Platform) -> None:
    created = await platform.timesheets.call(
        "POST", "/timesheets", ALICE, json={"date": "2026-11-23", "project": "StoreZero", "hours": 7.5}
    )
    assert created.status == 201, created.text
    entry = created.body["id"]

    decided = await platform.approvals.call(
        "PUT", f"/approvals/{entry}", BOB, json={"decision": "approved", "comment": "fine"}
    )
    assert decided.status == 200, decided.text

    other = await platform.timesheets.call(
        "POST", "/timesheets", ALICE, json={"date": "2026-11-24", "project": "StoreZero", "hours": 2}
    )
    deleted = await platform.timesheets.call("DELETE", f"/timesheets/{other.body['id']}", ALICE)
    assert deleted.status == 204, deleted.text

    # Each writer's relay delivers on its own, so the chain order across sources is delivery order;
    # the order of what happened is the events' own time.
    records = sorted(
        await trail_of(platform, entry, expected=3),
        key=lambda r: datetime.fromisoformat(r["occurred_at"]),
    )
    actions = [(r["source"], r["action"], r["actor"]["subject"], r["outcome"]) for r in records]
    assert ("timesheets", "timesheet.created", "alice", "success") in actions
    assert ("approvals", "approval.decided", "bob", "success") in actions
    assert actions[0][1] == "timesheet.created"
    first = records[0]
    assert first["request_id"] == created.headers["x-request-id"]  # traceable to the very request
    assert first["actor"]["issuer"] == ALICE.issuer
    assert first["actor"]["name"] == "Alice"
    approval = next(r for r in records if r["action"] == "approval.decided")
    assert approval["details"]["decision"] == "approved"
    assert approval["request_id"] == decided.headers["x-request-id"]

    gone = await trail_of(platform, other.body["id"], expected=2)
    assert [r["action"] for r in gone] == ["timesheet.created", "timesheet.deleted"]
    assert gone[1]["request_id"] == deleted.headers["x-request-id"]

    verdict = await platform.audit.call("GET", "/audit/verify", CAROL)
    assert verdict.body["ok"] is True
    assert verdict.body["checked"] >= 5


async def test_a_refused_change_leaves_no_success_record(platform: Platform) -> None:
    """A change that did not happen is never recorded as having happened."""
    created = await platform.timesheets.call(
        "POST", "/timesheets", ALICE, json={"date": "2026-11-25", "project": "StoreZero", "hours": 1}
    )
    entry = created.body["id"]
    own = await platform.approvals.call(
        "PUT", f"/approvals/{entry}", user("alice", "approve:timesheets"), json={"decision": "approved"}
    )
    assert own.status == 403
    stranger = await platform.timesheets.call(
        "DELETE", f"/timesheets/{entry}", user("mallory", "delete:timesheets")
    )
    assert stranger.status == 404
    await asyncio.sleep(1.0)  # give any (wrong) event time to arrive
    records = await trail_of(platform, entry, expected=1)
    successes = [r["action"] for r in records if r["outcome"] == "success"]
    assert successes == ["timesheet.created"]
