"""Idempotency-Key on create: retries replay, never duplicate; a reused key with a new body is refused."""

from __future__ import annotations

import asyncio
import json
import uuid

import aiohttp
import asyncpg
from multidict import CIMultiDict
from svckit.identity import Identity

from testkit.client import SignedApi
from testkit.fixtures import user

ALL = ("read:timesheets", "create:timesheets", "delete:timesheets")


def someone() -> Identity:
    return user(f"idem-{uuid.uuid4().hex[:8]}", *ALL)


BODY = {"date": "2026-11-23", "project": "StoreZero", "hours": 7.5}


async def count(db: asyncpg.Connection, who: Identity) -> int:
    value: int = await db.fetchval("SELECT count(*) FROM entries WHERE owner_subject = $1", who.subject)
    return value


async def test_retry_replays_the_first_response(api: SignedApi, db: asyncpg.Connection) -> None:
    alice = someone()
    key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    first = await api.call("POST", "/timesheets", alice, json=BODY, headers=key)
    assert first.status == 201
    assert "idempotent-replayed" not in first.headers
    # Same meaning, different spelling (7.50, key order): still the same request.
    again = await api.call(
        "POST",
        "/timesheets",
        alice,
        json={"hours": 7.50, "project": "StoreZero", "date": "2026-11-23"},
        headers=key,
    )
    assert again.status == 201
    assert again.body == first.body
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true"
    assert await count(db, alice) == 1
    created = await db.fetchval(
        "SELECT count(*) FROM outbox WHERE payload->'actor'->>'subject' = $1", alice.subject
    )
    assert created == 1


async def test_same_key_other_body_is_422(api: SignedApi, db: asyncpg.Connection) -> None:
    alice = someone()
    key = {"Idempotency-Key": "reused-key-1"}
    assert (await api.call("POST", "/timesheets", alice, json=BODY, headers=key)).status == 201
    reply = await api.call("POST", "/timesheets", alice, json={**BODY, "hours": 8}, headers=key)
    assert reply.status == 422
    assert reply.fields() == {"Idempotency-Key"}
    assert await count(db, alice) == 1


async def test_keys_belong_to_their_caller(api: SignedApi, db: asyncpg.Connection) -> None:
    alice, bob = someone(), someone()
    key = {"Idempotency-Key": "shared-name"}
    a = await api.call("POST", "/timesheets", alice, json=BODY, headers=key)
    b = await api.call("POST", "/timesheets", bob, json=BODY, headers=key)
    assert a.status == b.status == 201
    assert a.body["id"] != b.body["id"]
    assert b.body["owner"]["subject"] == bob.subject


async def test_concurrent_retries_create_one_entry(api: SignedApi, db: asyncpg.Connection) -> None:
    alice = someone()
    key = {"Idempotency-Key": f"burst-{uuid.uuid4()}"}
    replies = await asyncio.gather(
        *(api.call("POST", "/timesheets", alice, json=BODY, headers=key) for _ in range(12))
    )
    assert {reply.status for reply in replies} == {201}
    assert len({reply.body["id"] for reply in replies}) == 1
    assert sum(1 for reply in replies if "idempotent-replayed" not in reply.headers) == 1
    assert await count(db, alice) == 1


async def test_failed_request_leaves_the_key_free(api: SignedApi, db: asyncpg.Connection) -> None:
    alice = someone()
    key = {"Idempotency-Key": "after-a-mistake"}
    assert (
        await api.call("POST", "/timesheets", alice, json={**BODY, "hours": 99}, headers=key)
    ).status == 422
    assert (await api.call("POST", "/timesheets", alice, json=BODY, headers=key)).status == 201
    assert await count(db, alice) == 1


async def test_malformed_key_is_400(api: SignedApi) -> None:
    for value in ("", "x" * 256, "has space", "é"):
        reply = await api.call(
            "POST", "/timesheets", someone(), json=BODY, headers={"Idempotency-Key": value}
        )
        assert reply.status == 400, value
        assert reply.fields() == {"Idempotency-Key"}


async def test_two_key_lines_are_refused_like_a_list(api: SignedApi, db: asyncpg.Connection) -> None:
    """Two ``Idempotency-Key`` field lines mean the same as one line listing both (RFC 9110 §5.3),
    which is refused; reading only the first would let the retry that sends them the other way round
    create the entry a second time."""
    alice = someone()
    sent = json.dumps(BODY).encode()
    url = api.base_url + "/timesheets"
    for first, second in (("key-a", "key-b"), ("key-b", "key-a")):
        headers = CIMultiDict({"Content-Type": "application/json"})
        headers.update(api.caller.headers(alice, "POST", url, body=sent))
        headers.add("Idempotency-Key", first)
        headers.add("Idempotency-Key", second)
        async with aiohttp.ClientSession() as session, session.post(url, data=sent, headers=headers) as reply:
            problem = await reply.json(content_type=None)
            assert reply.status == 400, problem
        assert {error["field"] for error in problem["errors"]} == {"Idempotency-Key"}
    assert await count(db, alice) == 0


async def test_expired_key_is_taken_over(api: SignedApi, db: asyncpg.Connection) -> None:
    alice = someone()
    key = {"Idempotency-Key": "old-key"}
    first = await api.call("POST", "/timesheets", alice, json=BODY, headers=key)
    await db.execute(
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE caller_subject = $1",
        alice.subject,
    )
    second = await api.call("POST", "/timesheets", alice, json={**BODY, "hours": 2}, headers=key)
    assert second.status == 201
    assert second.body["id"] != first.body["id"]
