"""The approval queue passes its cursor through to the timesheets service: a forged one is a 422
naming ``cursor`` (docs/CONTRACTS.md), not a 503 claiming the timesheets service is unreachable."""

from __future__ import annotations

import base64
import json

from testkit.client import SignedApi
from testkit.fixtures import user

APPROVER = user("forged-queue-cursor", "read:timesheets", "approve:timesheets")


async def test_a_queue_cursor_whose_id_is_not_a_string_is_422(approvals: SignedApi) -> None:
    value = ["2026-11-23", "2026-11-23T17:02:11.204518+00:00", 1]
    cursor = base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()
    reply = await approvals.call("GET", "/approvals", APPROVER, params={"cursor": cursor})
    assert reply.status == 422, reply.text  # was 503 "unreachable" (the timesheets service answered 500)
    assert reply.fields() == {"cursor"}


async def test_a_queue_cursor_with_padding_is_422(approvals: SignedApi) -> None:
    """Cursors are published as base64url without padding; ``…==`` is not one (it was passed on)."""
    value = ["2026-11-23", "2026-11-23T17:02:11.204518+00:00", "0b5c1a1e-8d7e-4c57-a3f0-4b0f7a1f2c3d"]
    cursor = base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()
    assert (await approvals.call("GET", "/approvals", APPROVER, params={"cursor": cursor})).status == 200
    reply = await approvals.call("GET", "/approvals", APPROVER, params={"cursor": cursor + "=="})
    assert reply.status == 422, reply.text
    assert reply.fields() == {"cursor"}
