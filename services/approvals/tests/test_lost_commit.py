"""A decision's answer follows what was stored when Postgres's connection breaks around COMMIT, in
both of its transactions: recording the pending decision, and settling it after the timesheets
service applied it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Literal

import asyncpg
import pytest
from approvals.app import create_app as create_approvals
from approvals.settings import ApprovalsSettings
from svckit.settings import load_settings

from testkit.client import SignedApi, wait_ready
from testkit.fixtures import Caller, TcpProxy, runtime_url, serve_app, user

When = Literal["before", "after"]
APPROVER = user(f"lc-approver-{uuid.uuid4().hex[:6]}", "approve:timesheets")


@pytest.fixture(scope="module")
async def rig(
    domain_database: str, service_env: dict[str, str], timesheets_link: TcpProxy, caller: Caller
) -> AsyncIterator[tuple[TcpProxy, SignedApi]]:
    proxy = TcpProxy.for_postgres(domain_database)
    await proxy.start()
    env = {
        **service_env,
        "DATABASE_URL": proxy.url_for(runtime_url(domain_database, "approvals")),
        "TIMESHEETS_URL": f"http://127.0.0.1:{timesheets_link.port}",
        "AUDIT_URL": "http://127.0.0.1:9",
        "RECONCILE_INTERVAL_SECONDS": "0.3",
        "RECONCILE_AFTER_SECONDS": "1",
    }
    async with serve_app(create_approvals(load_settings(ApprovalsSettings, env=env))) as url:
        await wait_ready(url)
        client = SignedApi(url, caller)
        yield proxy, client
        await client.close()
    await proxy.cut()


async def submitted(timesheets: SignedApi) -> str:
    owner = user(f"lc-owner-{uuid.uuid4().hex[:6]}", "create:timesheets")
    reply = await timesheets.call(
        "POST", "/timesheets", owner, json={"date": "2026-10-07", "project": "L", "hours": 3}
    )
    assert reply.status == 201
    return str(reply.body["id"])


async def decision_state(db: asyncpg.Connection, entry_id: str) -> str | None:
    state: str | None = await db.fetchval(
        "SELECT state FROM approvals.decisions WHERE entry_id = $1 AND state <> 'void'", uuid.UUID(entry_id)
    )
    return state


@pytest.mark.parametrize("when", ["after", "before"])
async def test_recording_the_decision(
    rig: tuple[TcpProxy, SignedApi], timesheets: SignedApi, db: asyncpg.Connection, when: When
) -> None:
    proxy, approvals = rig
    entry_id = await submitted(timesheets)
    # recording is one statement in autocommit: cut where it executes
    done = proxy.cut_at_commit(when, after_sending=b"INSERT INTO decisions", autocommit=True)
    reply = await approvals.call("PUT", f"/approvals/{entry_id}", APPROVER, json={"decision": "approved"})
    assert done.is_set()
    if when == "after":  # recorded: the request goes on and applies it
        assert reply.status == 200, reply.text
        assert await decision_state(db, entry_id) == "applied"
    else:
        assert reply.status == 503, reply.text
        assert reply.body["outcome"] == "not_stored"
        assert await decision_state(db, entry_id) is None
        entry = await db.fetchval("SELECT status FROM timesheets.entries WHERE id = $1", uuid.UUID(entry_id))
        assert entry == "submitted"


@pytest.mark.parametrize("when", ["after", "before"])
async def test_settling_the_decision(
    rig: tuple[TcpProxy, SignedApi], timesheets: SignedApi, db: asyncpg.Connection, when: When
) -> None:
    proxy, approvals = rig
    entry_id = await submitted(timesheets)
    # settling is one statement in autocommit: cut where it executes
    done = proxy.cut_at_commit(when, after_sending=b"SET state = 'applied'", autocommit=True)
    reply = await approvals.call("PUT", f"/approvals/{entry_id}", APPROVER, json={"decision": "approved"})
    assert done.is_set()
    if when == "after":
        assert reply.status == 200, reply.text
        assert await decision_state(db, entry_id) == "applied"
    else:  # applied at timesheets, still pending here: "recorded, will be applied", never a 500
        assert reply.status == 503, reply.text
        assert "recorded" in reply.body["detail"]
        for _ in range(100):  # the reconciler settles it
            if await decision_state(db, entry_id) == "applied":
                break
            await asyncio.sleep(0.1)
        assert await decision_state(db, entry_id) == "applied"
