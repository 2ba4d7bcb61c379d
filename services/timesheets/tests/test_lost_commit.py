"""Every write of the timesheets service answers what really happened when Postgres's connection
breaks around COMMIT: the answer is lost after the server committed (→ the success status, the entry
is there), or the connection breaks before COMMIT reached it (→ 503 ``not_stored``, nothing there).

The service runs with its database behind a :class:`TcpProxy` that cuts the connection of the
request's own transaction exactly there.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Literal

import asyncpg
import pytest
from svckit.identity import Identity
from svckit.settings import load_settings
from timesheets.app import create_app
from timesheets.settings import TimesheetsSettings

from testkit.client import Reply, SignedApi, wait_ready
from testkit.fixtures import Caller, TcpProxy, runtime_url, serve_app, user

from .test_internal import APPROVALS, decision
from .test_upload import batch_client

When = Literal["before", "after"]
WHO = user(f"commit-{uuid.uuid4().hex[:6]}", "read:timesheets", "create:timesheets", "delete:timesheets")


@pytest.fixture(scope="module")
async def rig(
    timesheets_database: str, service_env: dict[str, str], caller: Caller
) -> AsyncIterator[tuple[TcpProxy, SignedApi]]:
    proxy = TcpProxy.for_postgres(timesheets_database)
    await proxy.start()
    env = {
        **service_env,
        "DATABASE_URL": proxy.url_for(runtime_url(timesheets_database, "timesheets")),
        "AUDIT_URL": "http://127.0.0.1:9",
    }
    async with serve_app(create_app(load_settings(TimesheetsSettings, env=env))) as url:
        await wait_ready(url)
        client = SignedApi(url, caller)
        yield proxy, client
        await client.close()
    await proxy.cut()


async def cut(
    proxy: TcpProxy, when: When, marker: bytes, request: object, *, autocommit: bool = False
) -> Reply:
    done = proxy.cut_at_commit(when, after_sending=marker, autocommit=autocommit)
    reply = await request  # type: ignore[misc]
    assert done.is_set(), "the request's COMMIT was never cut"
    return reply  # type: ignore[no-any-return]


def expect(reply: Reply, when: When, success: int) -> None:
    if when == "after":
        assert reply.status == success, reply.text
    else:
        assert reply.status == 503, reply.text
        assert reply.problem
        assert reply.body["outcome"] == "not_stored"
        assert reply.headers["retry-after"]


async def create(api: SignedApi, who: Identity = WHO) -> str:
    reply = await api.call(
        "POST", "/timesheets", who, json={"date": "2026-10-05", "project": "C", "hours": 2}
    )
    assert reply.status == 201, reply.text
    return str(reply.body["id"])


@pytest.mark.parametrize("when", ["after", "before"])
async def test_create(rig: tuple[TcpProxy, SignedApi], db: asyncpg.Connection, when: When) -> None:
    proxy, api = rig
    body = {"date": "2026-10-05", "project": f"commit-{when}", "hours": 1.5}
    # a create without an Idempotency-Key is one statement in autocommit: cut where it runs
    reply = await cut(
        proxy, when, b"INSERT INTO entries", api.call("POST", "/timesheets", WHO, json=body), autocommit=True
    )
    expect(reply, when, 201)
    count = await db.fetchval("SELECT count(*) FROM timesheets.entries WHERE project = $1", f"commit-{when}")
    assert count == (1 if when == "after" else 0)
    if when == "after":
        assert reply.body["project"] == f"commit-{when}"
        assert reply.headers["location"] == f"timesheets/{reply.body['id']}"


@pytest.mark.parametrize("when", ["after", "before"])
async def test_delete(rig: tuple[TcpProxy, SignedApi], db: asyncpg.Connection, when: When) -> None:
    proxy, api = rig
    entry_id = await create(api)
    reply = await cut(
        proxy, when, b"UPDATE entries SET deleted_at", api.call("DELETE", f"/timesheets/{entry_id}", WHO)
    )
    expect(reply, when, 204)
    deleted = await db.fetchval(
        "SELECT deleted_at IS NOT NULL FROM timesheets.entries WHERE id = $1", uuid.UUID(entry_id)
    )
    assert deleted is (when == "after")


@pytest.mark.parametrize("when", ["after", "before"])
async def test_upload(rig: tuple[TcpProxy, SignedApi], db: asyncpg.Connection, when: When) -> None:
    proxy, api = rig
    tag = f"upload-{when}-{uuid.uuid4().hex[:6]}"
    rows = [{"user": f"{tag}-{i}", "date": "2026-10-06", "project": "U", "hours": 1} for i in range(3)]
    reply = await cut(
        proxy,
        when,
        b"INSERT INTO entries",
        api.call("POST", "/timesheets/upload", batch_client(), json={"entries": rows}),
    )
    expect(reply, when, 201)
    count = await db.fetchval(
        "SELECT count(*) FROM timesheets.entries WHERE owner_subject LIKE $1", f"{tag}-%"
    )
    assert count == (3 if when == "after" else 0)


@pytest.mark.parametrize("when", ["after", "before"])
async def test_decision(rig: tuple[TcpProxy, SignedApi], db: asyncpg.Connection, when: When) -> None:
    proxy, api = rig
    entry_id = await create(api)
    body = decision(user("approver-x", "approve:timesheets"))
    reply = await cut(
        proxy,
        when,
        b"UPDATE entries",
        api.call("POST", f"/internal/timesheets/{entry_id}/decision", APPROVALS, json=body),
        autocommit=True,  # one statement (store.APPLY_DECISION)
    )
    expect(reply, when, 200)
    status = await db.fetchval("SELECT status FROM timesheets.entries WHERE id = $1", uuid.UUID(entry_id))
    assert status == ("approved" if when == "after" else "submitted")


@pytest.mark.parametrize("when", ["after", "before"])
@pytest.mark.parametrize("operation", ["create", "upload"])
async def test_a_replayed_key_is_replayed_whatever_becomes_of_its_commit(
    rig: tuple[TcpProxy, SignedApi], db: asyncpg.Connection, when: When, operation: str
) -> None:
    """A retry with the same Idempotency-Key stores nothing (it replays the first answer), yet its
    transaction ends with a COMMIT like any other. When that COMMIT's connection breaks, the service
    asks whether *this* attempt's new entry or upload id committed (it never exists) and answers 503
    ``not_stored``: the client is told its request was not stored, while the first attempt's entries
    are there under that very key. The retry's answer must be the replay (201)."""
    proxy, api = rig
    key = f"replay-{operation}-{when}-{uuid.uuid4().hex[:8]}"
    if operation == "create":
        who, path = WHO, "/timesheets"
        body: object = {"date": "2026-10-07", "project": key[:100], "hours": 1}
    else:
        who, path = batch_client(), "/timesheets/upload"
        body = {
            "entries": [
                {"user": f"{key}-{i}", "date": "2026-10-07", "project": "U", "hours": 1} for i in range(2)
            ]
        }
    first = await api.call("POST", path, who, json=body, headers={"Idempotency-Key": key})
    assert first.status == 201, first.text
    retry = await cut(
        proxy,
        when,
        key.encode(),  # in the claim's parameters (the statement itself is prepared already)
        api.call("POST", path, who, json=body, headers={"Idempotency-Key": key}),
    )
    assert retry.status == 201, retry.text
    assert retry.headers.get("idempotent-replayed") == "true"
    assert retry.body == first.body
