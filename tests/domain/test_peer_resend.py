"""The approvals service's peer hop sends a decision again when a kept connection breaks before any
byte of the answer (``approvals.peerhttp``: "sent again on a new connection, once, only for requests
the caller marks idempotent"). Applying a decision is idempotent by its id, so the repeat must learn
the outcome: the timesheets service answers 200 for the decision it already carries.

But every receiver accepts a signed request once (``svckit.identity``: the nonce is remembered by
every replica), and the repeat is the same bytes, nonce included: when the first copy reached the
timesheets service (its answer lost: the connection reset by a proxy, a pod killed after reading it,
a sidecar), the repeat is refused as a replay (401), the workflow takes that for a refusal it did not
expect, and the approver is told 502 "refused unexpectedly" for a decision that was applied. The
gateway signs its retries afresh (``gateway.proxy``: ``resign``); the peer hop does not.
"""

from __future__ import annotations

import asyncio

import asyncpg
from aiohttp import web

from testkit.client import SignedApi
from testkit.fixtures import Caller, ServiceProcess

from .conftest import FaultProxy, signed_api
from .test_approval_crashes import employee, manager, state, submit


class CutFirstAnswer(FaultProxy):
    """The first decision call is forwarded and its answer lost (the connection reset); the rest pass."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.decision_calls = 0
        self.statuses: list[int] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if not (request.method == "POST" and request.path.endswith("/decision")):
            return await super().handle(request)
        self.decision_calls += 1
        status, body, content_type = await self._forward(request)
        self.statuses.append(status)
        if self.decision_calls == 1:
            return await self._cut(request)
        response = web.Response(status=status, body=body)
        if content_type:
            response.headers["content-type"] = content_type
        return response


async def test_a_decision_resent_after_a_lost_answer_learns_it_was_applied(
    approvals_process: ServiceProcess,
    timesheets_url: str,
    timesheets: SignedApi,
    db: asyncpg.Connection,
    caller: Caller,
) -> None:
    proxy = CutFirstAnswer(timesheets_url)
    await proxy.start()
    try:
        alice, bob = employee(), manager()
        entry_id = await submit(timesheets, alice)
        approvals_process.env["TIMESHEETS_URL"] = proxy.url
        approvals_process.env["RECONCILE_AFTER_SECONDS"] = "3600"  # only the request drives it
        await asyncio.to_thread(approvals_process.start, "/readyz")
        async with signed_api(approvals_process.url, caller) as approvals:
            # the pre-check (GET) opens the kept connection the decision call then reuses
            reply = await approvals.call("PUT", f"/approvals/{entry_id}", bob, json={"decision": "approved"})
        applied = await state(db, entry_id)
        assert applied["status"] == "approved"  # the first copy was applied
        # today: the repeat of the same bytes is refused as a replay (401) and the approver gets a 502
        assert reply.status == 200, (reply.status, reply.text, proxy.statuses)
        assert reply.body["state"] == "applied"
        assert 401 not in proxy.statuses, proxy.statuses
    finally:
        await proxy.stop()
