"""Entries over real HTTP on real Postgres: ownership, validation, listing, deletion, audit outbox."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest
from svckit.identity import Identity

from testkit.client import SignedApi
from testkit.fixtures import user

ALL = ("read:timesheets", "create:timesheets", "delete:timesheets")


def employee(name: str = "emp") -> Identity:
    subject = f"{name}-{uuid.uuid4().hex[:8]}"
    return user(subject, *ALL, name=f"{subject}@abc.example")


def manager(name: str = "mgr") -> Identity:
    return user(f"{name}-{uuid.uuid4().hex[:8]}", *ALL, "approve:timesheets")


def entry(**changes: Any) -> dict[str, Any]:
    return {"date": "2026-11-23", "project": "StoreZero", "hours": 7.5, "notes": "migration", **changes}


async def create(api: SignedApi, who: Identity, **changes: Any) -> dict[str, Any]:
    reply = await api.call("POST", "/timesheets", who, json=entry(**changes))
    assert reply.status == 201, reply.text
    body: dict[str, Any] = reply.body
    return body


async def test_create_owner_comes_from_identity(api: SignedApi, db: asyncpg.Connection) -> None:
    alice = employee("alice")
    reply = await api.call("POST", "/timesheets", alice, json=entry())
    assert reply.status == 201
    body = reply.body
    assert reply.headers["location"] == f"timesheets/{body['id']}"
    assert body["owner"] == {"issuer": alice.issuer, "subject": alice.subject, "name": alice.name}
    assert body["status"] == "submitted"
    assert body["decision"] is None
    assert (body["date"], body["project"], body["hours"], body["notes"]) == (
        "2026-11-23",
        "StoreZero",
        7.5,
        "migration",
    )
    assert body["created_at"].endswith("Z")
    # Its audit event committed with it, in the outbox.
    payload = await db.fetchval(
        "SELECT payload::text FROM outbox WHERE payload->'resource'->>'id' = $1", body["id"]
    )
    assert payload is not None
    assert '"timesheet.created"' in payload
    assert alice.subject in payload


async def test_owner_in_body_is_refused(api: SignedApi) -> None:
    reply = await api.call(
        "POST", "/timesheets", employee(), json=entry(owner={"subject": "bob"}, user="bob")
    )
    assert reply.status == 422
    assert reply.fields() == {"owner", "user"}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"date": "23/11/2026"}, "date"),
        ({"date": "2026-02-30"}, "date"),
        ({"date": 1700000000}, "date"),
        ({"date": None}, "date"),
        ({"project": ""}, "project"),
        ({"project": "   "}, "project"),
        ({"project": "x" * 101}, "project"),
        ({"project": 42}, "project"),
        ({"project": "a\x00b"}, "project"),
        ({"hours": 0}, "hours"),
        ({"hours": -1}, "hours"),
        ({"hours": 24.25}, "hours"),
        ({"hours": 7.3}, "hours"),
        ({"hours": 1e-9}, "hours"),
        ({"hours": "7.5"}, "hours"),
        ({"hours": True}, "hours"),
        ({"hours": None}, "hours"),
        ({"notes": "n" * 2001}, "notes"),
        ({"notes": 5}, "notes"),
    ],
)
async def test_each_bad_field_is_named(api: SignedApi, changes: dict[str, Any], field: str) -> None:
    reply = await api.call("POST", "/timesheets", employee(), json=entry(**changes))
    assert reply.status == 422, reply.text
    assert reply.problem
    assert reply.fields() == {field}


async def test_missing_fields_are_named(api: SignedApi) -> None:
    reply = await api.call("POST", "/timesheets", employee(), json={"notes": "x"})
    assert reply.status == 422
    assert reply.fields() == {"date", "project", "hours"}


@pytest.mark.parametrize(
    ("data", "content_type", "status"),
    [
        (b"{", "application/json", 400),
        (b"", "application/json", 400),
        (b"date=2026-11-23", "application/x-www-form-urlencoded", 415),
        (b"[1, 2]", "application/json", 422),
        (b'"text"', "application/json", 422),
    ],
)
async def test_bad_bodies(api: SignedApi, data: bytes, content_type: str, status: int) -> None:
    reply = await api.call(
        "POST", "/timesheets", employee(), data=data, headers={"content-type": content_type}
    )
    assert reply.status == status
    assert reply.problem


async def test_edge_values_are_accepted(api: SignedApi) -> None:
    who = employee()
    for day, hours in enumerate((0.25, 24, 8), start=1):  # a day each: a day holds 24 hours
        body = await create(api, who, hours=hours, date=f"2026-10-0{day}", project="  P  ", notes="")
        assert body["hours"] == hours
        assert body["project"] == "P"
        assert body["notes"] is None
    body = await create(api, who, notes=None, project="x" * 100)
    assert body["notes"] is None


async def test_unsigned_is_401(api: SignedApi) -> None:
    for method, path in [
        ("GET", "/timesheets"),
        ("POST", "/timesheets"),
        ("DELETE", f"/timesheets/{uuid.uuid4()}"),
    ]:
        reply = await api.call(method, path, None)
        assert reply.status == 401
        assert reply.problem


@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [
        ("GET", "/timesheets", "read:timesheets"),
        ("POST", "/timesheets", "create:timesheets"),
        ("GET", "/timesheets/00000000-0000-0000-0000-000000000000", "read:timesheets"),
        ("DELETE", "/timesheets/00000000-0000-0000-0000-000000000000", "delete:timesheets"),
        ("POST", "/timesheets/upload", "batch:upload"),
    ],
)
async def test_route_refuses_identity_without_its_scope(
    api: SignedApi, method: str, path: str, scope: str
) -> None:
    everything_else = {"read:timesheets", "create:timesheets", "delete:timesheets", "batch:upload"} - {scope}
    who = user(f"u-{uuid.uuid4().hex[:6]}", *everything_else, "approve:timesheets")
    reply = await api.call(method, path, who, json=entry() if method == "POST" else None)
    assert reply.status == 403
    assert reply.body["required_scope"] == scope


async def test_get_own_and_not_others(api: SignedApi) -> None:
    alice, bob = employee("alice"), employee("bob")
    mine = await create(api, alice)
    assert (await api.call("GET", f"/timesheets/{mine['id']}", alice)).body == mine
    for path in (f"/timesheets/{mine['id']}", f"/timesheets/{uuid.uuid4()}", "/timesheets/not-a-uuid"):
        reply = await api.call("GET", path, bob)
        assert reply.status == 404
        assert reply.problem
    # The same subject under another issuer is someone else.
    impostor = user(alice.subject, *ALL, issuer="https://evil.example/")
    assert (await api.call("GET", f"/timesheets/{mine['id']}", impostor)).status == 404


async def test_approver_reads_entries_awaiting_a_decision_only(
    api: SignedApi, db: asyncpg.Connection
) -> None:
    alice, boss = employee("alice"), manager("boss")
    waiting = await create(api, alice)
    assert (await api.call("GET", f"/timesheets/{waiting['id']}", boss)).status == 200
    await db.execute(
        """UPDATE entries SET status = 'approved', decision_id = gen_random_uuid(), decided_by_issuer = 'i',
           decided_by_subject = 's', decided_at = now() WHERE id = $1""",
        uuid.UUID(waiting["id"]),
    )
    assert (await api.call("GET", f"/timesheets/{waiting['id']}", boss)).status == 404
    assert (await api.call("GET", f"/timesheets/{waiting['id']}", alice)).body["status"] == "approved"


async def test_delete_rules(api: SignedApi, db: asyncpg.Connection) -> None:
    alice, bob = employee("alice"), employee("bob")
    first = await create(api, alice)
    # Not bob's: 404 and it stays.
    assert (await api.call("DELETE", f"/timesheets/{first['id']}", bob)).status == 404
    assert (await api.call("GET", f"/timesheets/{first['id']}", alice)).status == 200
    # Own and submitted: 204, then gone for every reader and a second delete is 404.
    reply = await api.call("DELETE", f"/timesheets/{first['id']}", alice)
    assert (reply.status, reply.text) == (204, "")
    assert (await api.call("GET", f"/timesheets/{first['id']}", alice)).status == 404
    assert (await api.call("DELETE", f"/timesheets/{first['id']}", alice)).status == 404
    listed = await api.call("GET", "/timesheets", alice)
    assert first["id"] not in {item["id"] for item in listed.body["items"]}
    actions = await db.fetch(
        """SELECT payload->>'action' AS action FROM outbox
           WHERE payload->'resource'->>'id' = $1 ORDER BY position""",
        first["id"],
    )
    assert [row["action"] for row in actions] == ["timesheet.created", "timesheet.deleted"]
    # Approved: 409, and it stays.
    second = await create(api, alice)
    await db.execute(
        """UPDATE entries SET status = 'approved', decision_id = gen_random_uuid(), decided_by_issuer = 'i',
           decided_by_subject = 's', decided_at = now() WHERE id = $1""",
        uuid.UUID(second["id"]),
    )
    reply = await api.call("DELETE", f"/timesheets/{second['id']}", alice)
    assert reply.status == 409
    assert reply.problem
    assert (await api.call("GET", f"/timesheets/{second['id']}", alice)).status == 200


async def test_database_refuses_deleting_an_approved_entry(api: SignedApi, db: asyncpg.Connection) -> None:
    """The rule holds below the service too: a CHECK constraint, not only handler code."""
    made = await create(api, employee())
    await db.execute(
        """UPDATE entries SET status = 'approved', decision_id = gen_random_uuid(), decided_by_issuer = 'i',
           decided_by_subject = 's', decided_at = now() WHERE id = $1""",
        uuid.UUID(made["id"]),
    )
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("UPDATE entries SET deleted_at = now() WHERE id = $1", uuid.UUID(made["id"]))
