"""The approvals service's internal routes: who may call them, the queue, and applying decisions,
including the races (approve vs delete, two decisions at once) with real concurrency."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from typing import Any

import asyncpg
import pytest
from svckit.identity import Identity

from testkit.client import Reply, SignedApi
from testkit.fixtures import user

ALL = ("read:timesheets", "create:timesheets", "delete:timesheets")
APPROVALS = Identity.service("approvals")


def someone(prefix: str = "int") -> Identity:
    return user(f"{prefix}-{uuid.uuid4().hex[:8]}", *ALL, "approve:timesheets")


async def create(api: SignedApi, who: Identity, date: str = "2026-11-23") -> str:
    reply = await api.call("POST", "/timesheets", who, json={"date": date, "project": "P", "hours": 4})
    assert reply.status == 201
    entry_id: str = reply.body["id"]
    return entry_id


def decision(by: Identity, verdict: str = "approved", decision_id: uuid.UUID | None = None) -> dict[str, Any]:
    return {
        "decision_id": str(decision_id or uuid.uuid4()),
        "decision": verdict,
        "comment": "ok",
        "by": {"issuer": by.issuer, "subject": by.subject, "name": by.name, "client_id": by.client_id},
        "at": dt.datetime.now(dt.UTC).isoformat(),
    }


async def decide(api: SignedApi, entry_id: str, body: dict[str, Any]) -> Reply:
    return await api.call("POST", f"/internal/timesheets/{entry_id}/decision", APPROVALS, json=body)


@pytest.mark.parametrize(
    "identity",
    [
        user("alice", *ALL, "approve:timesheets"),
        Identity.service("gateway"),  # a service principal, validly signed, that is not approvals
        Identity("http://localhost:9000/", "approvals", "client", "approvals", frozenset(), ""),
    ],
)
async def test_only_the_approvals_service_may_call(api: SignedApi, identity: Identity) -> None:
    entry_id = uuid.uuid4()
    for method, path, body in [
        ("GET", "/internal/timesheets/pending?exclude_issuer=i&exclude_subject=s", None),
        ("GET", f"/internal/timesheets/{entry_id}", None),
        ("POST", f"/internal/timesheets/{entry_id}/decision", decision(someone())),
    ]:
        reply = await api.call(method, path, identity, json=body)
        assert reply.status == 403, (method, path)


async def test_pending_queue_excludes_the_approver_and_decided(api: SignedApi) -> None:
    boss, alice = someone("boss"), someone("alice")
    own = await create(api, boss, "2031-01-02")
    theirs = await create(api, alice, "2031-01-03")
    decided = await create(api, alice, "2031-01-04")
    assert (await decide(api, decided, decision(boss))).status == 200
    reply = await api.call(
        "GET",
        "/internal/timesheets/pending",
        APPROVALS,
        params={"exclude_issuer": boss.issuer, "exclude_subject": boss.subject, "limit": "100"},
    )
    assert reply.status == 200
    ids = [item["id"] for item in reply.body["items"]]
    assert theirs in ids
    assert own not in ids
    assert decided not in ids
    missing = await api.call("GET", "/internal/timesheets/pending", APPROVALS)
    assert missing.status == 422
    assert missing.fields() == {"exclude_issuer", "exclude_subject"}


async def test_decision_rules_and_idempotency(api: SignedApi, db: asyncpg.Connection) -> None:
    boss, alice = someone("boss"), someone("alice")
    entry_id = await create(api, alice)
    # The owner cannot decide their own entry.
    assert (await decide(api, entry_id, decision(alice))).status == 403
    body = decision(boss, "rejected")
    first = await decide(api, entry_id, body)
    assert first.status == 200
    assert first.body["status"] == "rejected"
    assert first.body["decision"]["by"]["subject"] == boss.subject
    assert first.body["decision"]["comment"] == "ok"
    # The same decision again (a retry): 200, nothing changes.
    again = await decide(api, entry_id, body)
    assert (again.status, again.body) == (200, first.body)
    # Another decision: 409, the entry carries the first.
    other = await decide(api, entry_id, decision(someone("boss2"), "approved"))
    assert other.status == 409
    assert other.body["entry"]["status"] == "rejected"
    # A rejected entry may be deleted; the retry still learns its decision was applied.
    assert (await api.call("DELETE", f"/timesheets/{entry_id}", alice)).status == 204
    assert (await decide(api, entry_id, body)).status == 200
    assert (await decide(api, entry_id, decision(boss))).status == 404
    assert (await decide(api, str(uuid.uuid4()), decision(boss))).status == 404
    events = await db.fetch(
        "SELECT payload FROM outbox WHERE payload->>'action' = 'timesheet.decided' "
        "AND payload->'resource'->>'id' = $1",
        entry_id,
    )
    assert len(events) == 1
    # the entry's part of the details comes from the row the decision changed (store.APPLY_DECISION)
    event = json.loads(events[0]["payload"])
    assert event["details"] == {
        "owner": {"issuer": alice.issuer, "subject": alice.subject},
        "date": "2026-11-23",
        "project": "P",
        "hours": 4.0,
        "decision": "rejected",
        "decision_id": body["decision_id"],
        "via": "approvals",
    }
    assert isinstance(event["details"]["hours"], float)
    assert event["actor"]["subject"] == boss.subject


async def test_bad_decisions_are_named(api: SignedApi) -> None:
    entry_id = await create(api, someone())
    body = decision(someone())
    body["decision"] = "maybe"
    body["at"] = "2026-11-23T10:00:00"  # no offset
    del body["by"]["subject"]
    reply = await decide(api, entry_id, body)
    assert reply.status == 422
    assert reply.fields() == {"decision", "at", "by.subject"}


async def test_approve_racing_delete_exactly_one_wins(api: SignedApi, db: asyncpg.Connection) -> None:
    boss = someone("boss")
    outcomes = []
    for _ in range(15):
        alice = someone("alice")
        entry_id = await create(api, alice)
        approve, delete = await asyncio.gather(
            decide(api, entry_id, decision(boss)),
            api.call("DELETE", f"/timesheets/{entry_id}", alice),
        )
        outcomes.append((approve.status, delete.status))
        row = await db.fetchrow("SELECT status, deleted_at FROM entries WHERE id = $1", uuid.UUID(entry_id))
        assert row is not None
        if approve.status == 200:
            assert delete.status == 409
            assert (row["status"], row["deleted_at"]) == ("approved", None)
        else:
            assert (approve.status, delete.status) == (404, 204)
            assert row["status"] == "submitted"
            assert row["deleted_at"] is not None
    assert set(outcomes) <= {(200, 409), (404, 204)}


async def test_two_decisions_at_once_exactly_one_wins(api: SignedApi) -> None:
    for _ in range(10):
        entry_id = await create(api, someone("alice"))
        replies = await asyncio.gather(
            *(
                decide(api, entry_id, decision(someone("boss"), verdict))
                for verdict in ("approved", "rejected") * 2
            )
        )
        statuses = sorted(reply.status for reply in replies)
        assert statuses == [200, 409, 409, 409]
        winner = next(reply for reply in replies if reply.status == 200)
        for loser in (reply for reply in replies if reply.status == 409):
            assert loser.body["entry"]["status"] == winner.body["status"]
