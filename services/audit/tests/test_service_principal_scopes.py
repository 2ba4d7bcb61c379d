"""A writer's key may sign only its own service principal, and a service principal holds no scopes:
scopes come from a token the gateway verified. Otherwise the holder of the timesheets → audit key
(a compromised timesheets pod) signs ``timesheets`` with ``read:audit`` and reads, and verifies, the
whole trail: every other service's records, the gateway's denials with client addresses."""

from __future__ import annotations

import pytest
from svckit.identity import Identity

from testkit.client import SignedApi

from .conftest import TIMESHEETS, EventFactory


@pytest.mark.parametrize(
    "route", ["/audit/events", "/audit/verify", "/audit/checkpoints", "/audit/checkpoint-keys"]
)
async def test_a_writer_cannot_grant_itself_read_audit(
    api: SignedApi, new_event: EventFactory, route: str
) -> None:
    approvals = Identity.service("approvals")
    reply = await api.call(
        "POST", "/internal/events", approvals, json={"events": [new_event(source="approvals")]}
    )
    assert reply.status == 200, reply.text
    self_granted = Identity.service("timesheets", ["read:audit"])
    reply = await api.call("GET", route, self_granted)
    assert reply.status in (401, 403), f"{reply.status}: {reply.text[:300]}"
    assert reply.problem
    # and the writer's own principal, as the outbox relay signs it, still ingests
    ok = await api.call("POST", "/internal/events", TIMESHEETS, json={"events": [new_event()]})
    assert ok.status == 200, ok.text
