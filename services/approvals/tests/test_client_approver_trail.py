"""A machine client (client-credentials token, identity kind ``client``) holding approve:timesheets
decides an entry: the audit events of that decision must name it as the client it is. Both services
write ``kind: "user"`` instead (approvals.events.approver_of and timesheets.events.decided hard-code
it, and neither the decision row nor ApplyDecision carries the kind), while the same approvals
service records the client's *refused* attempts (events.refused_own_entry) with kind ``client``."""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg
from svckit.identity import Identity

from testkit.client import SignedApi
from testkit.fixtures import user

ISSUER = "http://localhost:9000/"


async def test_a_client_approver_is_on_the_trail_as_a_client(
    approvals: SignedApi, timesheets: SignedApi, db: asyncpg.Connection
) -> None:
    owner = user(f"owner-{uuid.uuid4().hex[:8]}", "create:timesheets", "read:timesheets")
    robot_id = f"robot-{uuid.uuid4().hex[:8]}"
    robot = Identity(ISSUER, f"{robot_id}@clients", "client", robot_id, frozenset({"approve:timesheets"}))
    created = await timesheets.call(
        "POST", "/timesheets", owner, json={"date": "2026-11-23", "project": "P", "hours": 8}
    )
    entry_id = created.body["id"]
    decided = await approvals.call("PUT", f"/approvals/{entry_id}", robot, json={"decision": "approved"})
    assert decided.status == 200, decided.text
    # the timesheets side is applied after the answer: wait for its event (a fixed 0.1 s was too short
    # on a loaded machine, and the test saw one event of two)
    deadline = asyncio.get_running_loop().time() + 15
    while True:
        rows = await db.fetch(
            """SELECT payload::text AS payload FROM approvals.outbox
                   WHERE payload->>'action' = 'approval.decided' AND payload->'resource'->>'id' = $1
               UNION ALL
               SELECT payload::text FROM timesheets.outbox
                   WHERE payload->>'action' = 'timesheet.decided' AND payload->'resource'->>'id' = $1""",
            entry_id,
        )
        if len(rows) >= 2 or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)
    actors = [json.loads(row["payload"])["actor"] for row in rows]
    assert len(actors) == 2  # (no audit service here: both events wait in their outboxes)
    assert [(a["subject"], a["kind"]) for a in actors] == [(robot.subject, "client")] * 2
