"""A decision's answer follows what was stored when Postgres's connection breaks around COMMIT, in
each of its writes: recording the pending decision, settling it after the timesheets service applied
it, voiding it after the timesheets service found its entry gone, and the audit record of an
approver's refused attempt at their own entry."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

import asyncpg
import pytest
from approvals.app import create_app as create_approvals
from approvals.settings import ApprovalsSettings
from approvals.store import RECORD_PENDING, pending_arguments
from prometheus_client import REGISTRY
from svckit.contracts.approvals import DecisionIn
from svckit.identity import Identity
from svckit.settings import load_settings

from testkit.client import Reply, SignedApi, wait_ready
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


async def put_as_request(
    approvals: SignedApi, caller: Caller, approver: Identity, entry_id: str, request_id: str
) -> Reply:
    """``PUT /approvals/{id}`` with the request id given: what the gateway sends again when its
    pooled connection closed under an idempotent request (same request id, fresh nonce)."""
    path = f"/approvals/{entry_id}"
    body = b'{"decision":"approved"}'
    headers = caller.headers(approver, "PUT", approvals.base_url + path, body=body, request_id=request_id)
    return await approvals.call(
        "PUT", path, None, data=body, headers={**headers, "content-type": "application/json"}
    )


async def own_entry_denials(db: asyncpg.Connection, entry_id: str) -> list[str]:
    """The request ids of the denied-decision records waiting in the approvals outbox for the entry
    (no audit service here: nothing is relayed away)."""
    rows = await db.fetch(
        """SELECT payload->>'request_id' AS request_id FROM approvals.outbox
           WHERE payload->>'action' = 'approval.decided' AND payload->>'outcome' = 'denied'
             AND payload->'resource'->>'id' = $1""",
        entry_id,
    )
    return [row["request_id"] for row in rows]


async def own_entry(timesheets: SignedApi) -> tuple[Identity, str, str]:
    """An approver who also records time, an entry of theirs, and the request id of their attempt to
    decide it."""
    own = user(f"lc-own-{uuid.uuid4().hex[:6]}", "create:timesheets", "approve:timesheets")
    created = await timesheets.call(
        "POST", "/timesheets", own, json={"date": "2026-10-08", "project": "L", "hours": 2}
    )
    assert created.status == 201
    return own, str(created.body["id"]), f"lc-own-{uuid.uuid4().hex}"


@pytest.mark.parametrize("when", ["after", "before"])
async def test_an_own_entry_is_403_whatever_its_denial_record_commit_does(
    rig: tuple[TcpProxy, SignedApi],
    timesheets: SignedApi,
    db: asyncpg.Connection,
    caller: Caller,
    when: When,
) -> None:
    """The 403 is the answer, whatever happens to the COMMIT of the denial's audit record: never a 503
    that invites a retry. The record is stored once (after a COMMIT that never arrived, by a second
    try of the same record), and the same request sent again adds none."""
    proxy, approvals = rig
    own, entry_id, request_id = await own_entry(timesheets)
    # the record's transaction, by the request id in its payload (a statement's text is sent only
    # the first time a pooled connection prepares it)
    done = proxy.cut_at_commit(when, after_sending=request_id.encode())
    refused, written, dropped = own_entry_counts()
    reply = await put_as_request(approvals, caller, own, entry_id, request_id)
    assert done.is_set()
    assert reply.status == 403, reply.text
    assert reply.body["detail"] == "Approvers cannot decide their own entries."
    assert await own_entry_denials(db, entry_id) == [request_id]
    # the denial counted by its reason, and its record as written (stored, whichever try stored it)
    assert own_entry_counts() == (refused + 1, written + 1, dropped)

    again = await put_as_request(approvals, caller, own, entry_id, request_id)
    assert again.status == 403, again.text
    assert await own_entry_denials(db, entry_id) == [request_id]
    assert await decision_state(db, entry_id) is None  # nothing recorded as a decision


async def test_the_same_own_entry_refusal_at_once_is_recorded_once(
    rig: tuple[TcpProxy, SignedApi], timesheets: SignedApi, db: asyncpg.Connection, caller: Caller
) -> None:
    """The same refused request arriving several times at once (the gateway's retry overtaking the
    first, on another replica's worth of connections): every copy is a 403 and the trail holds one
    record, written by whichever copy came first (the others find its id and add nothing)."""
    _, approvals = rig
    own, entry_id, request_id = await own_entry(timesheets)
    refused, written, dropped = own_entry_counts()
    replies = await asyncio.gather(
        *(put_as_request(approvals, caller, own, entry_id, request_id) for _ in range(4))
    )
    assert [reply.status for reply in replies] == [403] * 4, [reply.text for reply in replies]
    assert await own_entry_denials(db, entry_id) == [request_id]
    assert own_entry_counts() == (refused + 4, written + 4, dropped)  # each copy's record is stored


def own_entry_counts() -> tuple[float, float, float]:
    """``approvals_refusals_total{reason="own_entry"}`` and the approvals service's denial records
    written and dropped, in this process (the service under test runs in it)."""
    return (
        REGISTRY.get_sample_value("approvals_refusals_total", {"reason": "own_entry"}) or 0.0,
        REGISTRY.get_sample_value("audit_denials_written_total", {"service": "approvals"}) or 0.0,
        REGISTRY.get_sample_value("audit_denials_dropped_total", {"service": "approvals"}) or 0.0,
    )


async def pending_then_deleted(timesheets: SignedApi, db: asyncpg.Connection) -> tuple[str, str]:
    """An entry whose decision by :data:`APPROVER` was recorded pending (as when its apply call was
    lost) and which its owner deleted meanwhile: the decision can only end void. Returns the entry's
    id and the recorded decision's."""
    owner = user(f"lc-owner-{uuid.uuid4().hex[:6]}", "create:timesheets", "delete:timesheets")
    created = await timesheets.call(
        "POST", "/timesheets", owner, json={"date": "2026-10-09", "project": "L", "hours": 4}
    )
    assert created.status == 201
    entry_id = str(created.body["id"])
    recorded = await db.fetchrow(
        RECORD_PENDING.replace("INTO decisions", "INTO approvals.decisions"),
        *pending_arguments(
            uuid.UUID(entry_id),
            APPROVER,
            DecisionIn(decision="approved"),
            "lc-void",
            decision_id=uuid.uuid4(),
        ),
    )
    assert recorded is not None
    assert (await timesheets.call("DELETE", f"/timesheets/{entry_id}", owner)).status == 204
    return entry_id, str(recorded["id"])


async def voided(db: asyncpg.Connection, entry_id: str) -> tuple[Any, list[dict[str, Any]]]:
    """The entry's decision's (state, void reason), and the ``approval.voided`` records waiting in the
    approvals outbox for it."""
    state = await db.fetchrow(
        "SELECT state, void_reason FROM approvals.decisions WHERE entry_id = $1", uuid.UUID(entry_id)
    )
    rows = await db.fetch(
        """SELECT payload::text AS payload FROM approvals.outbox
           WHERE payload->>'action' = 'approval.voided' AND payload->'resource'->>'id' = $1""",
        entry_id,
    )
    return (tuple(state) if state else None), [json.loads(row["payload"]) for row in rows]


@pytest.mark.parametrize("when", ["after", "before"])
async def test_voiding_the_decision(
    rig: tuple[TcpProxy, SignedApi], timesheets: SignedApi, db: asyncpg.Connection, when: When
) -> None:
    """Voiding is a change of state like any other: it commits with its audit record, once, and the
    answer follows what was stored. While it is not known to be stored, the 503 says what is known:
    the decision cannot be applied (never that it will be)."""
    proxy, approvals = rig
    entry_id, decision_id = await pending_then_deleted(timesheets, db)
    # voiding is one statement in autocommit: cut where it executes (the statement's, by the
    # decision id in its audit event: its text is sent only the first time a connection prepares it)
    done = proxy.cut_at_commit(when, after_sending=decision_id.encode(), autocommit=True)
    reply = await approvals.call("PUT", f"/approvals/{entry_id}", APPROVER, json={"decision": "approved"})
    assert done.is_set()
    if when == "after":  # voided (only its answer was lost): the entry is gone
        assert reply.status == 404, reply.text
        assert reply.body["detail"] == "No such timesheet entry."
    else:  # not voided yet: recorded, and known not to be applicable; the reconciler voids it
        assert reply.status == 503, reply.text
        assert reply.body["detail"] == (
            "The decision is recorded, but it cannot be applied: the entry was deleted. It is being "
            "voided; repeat this request to see the outcome."
        )
        assert "decision" not in reply.body  # (a 503 with a decision says it will be applied)
        for _ in range(100):
            if (await voided(db, entry_id))[0] == ("void", "entry_gone"):
                break
            await asyncio.sleep(0.1)
    state, events = await voided(db, entry_id)
    assert state == ("void", "entry_gone")
    assert len(events) == 1, events
    event = events[0]
    assert (event["source"], event["outcome"], event["resource"]) == (
        "approvals",
        "failure",
        {"type": "timesheet", "id": entry_id},
    )
    assert (event["actor"]["issuer"], event["actor"]["subject"]) == APPROVER.principal
    assert event["request_id"] == "lc-void"  # the PUT that recorded the decision
    details = event["details"]
    assert (details["decision_id"], details["decision"], details["reason"]) == (
        decision_id,
        "approved",
        "entry_gone",
    )
    assert details["voided_by"] == ("request" if when == "after" else "reconciler")

    again = await approvals.call("PUT", f"/approvals/{entry_id}", APPROVER, json={"decision": "approved"})
    assert again.status == 404, again.text
    assert len((await voided(db, entry_id))[1]) == 1
