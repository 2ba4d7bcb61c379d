"""The whole trail across services: timesheets and approvals change state, their outboxes relay to
the audit service, and the records say who did what, in which request, and verify as a chain.

All three services run on loopback over a database of this module's own, wired to each other
exactly as in production (``AUDIT_URL``, ``TIMESHEETS_URL``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from testkit.client import SignedApi
from testkit.fixtures import (
    Caller,
    ServiceRedis,
    user,
)
from testkit.inprocess import three_services

SERVICES = Path(__file__).resolve().parents[2] / "services"

ALICE = user("alice", "read:timesheets", "create:timesheets", "delete:timesheets", name="Alice")
BOB = user("bob", "read:timesheets", "approve:timesheets", name="Bob")
CAROL = user("carol", "read:audit", name="Carol")


@dataclass
class Platform:
    timesheets: SignedApi
    approvals: SignedApi
    audit: SignedApi


@pytest.fixture(scope="module")
async def platform(
    identity_keys: dict[str, str], service_redis: ServiceRedis, caller: Caller
) -> AsyncIterator[Platform]:
    async with three_services(identity_keys, service_redis, "trail") as urls:
        clients = Platform(*(SignedApi(urls[s], caller) for s in ("timesheets", "approvals", "audit")))
        try:
            yield clients
        finally:
            for client in (clients.timesheets, clients.approvals, clients.audit):
                await client.close()


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
