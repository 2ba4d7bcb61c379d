"""Request bodies held at once per worker (``GATEWAY_REQUEST_BODY_BUFFER_BYTES``, ``Body``).

A body is read whole before it goes upstream (its digest is signed), so bodies in flight are memory
held: without a bound, one batch client's 64 largest uploads OOM-killed the gateway under the chart's
512Mi limit (tests/packaging/test_pods_under_limits.py). A body's declared length is taken from the
worker's budget before it is read and given back when the request ends, whichever way.
"""

from __future__ import annotations

import asyncio
import json
import uuid

from prometheus_client import REGISTRY

from .conftest import Provider, StartGateway
from .test_in_flight import gateway_with, head, request, until

BODY = 600_000  # two do not fit a budget of 1 MiB


def put(token: str, seconds: float, size: int = BODY) -> bytes:
    """A PUT of ``size`` bytes the echo upstream answers after ``seconds``."""
    extra = f"Content-Length: {size}\r\nContent-Type: application/json\r\nConnection: close\r\n"
    return head(f"/api/approvals/slow?s={seconds}", token, "PUT", extra) + b" " * size


async def test_a_body_that_does_not_fit_is_refused_503_and_the_room_comes_back(
    start_gateway: StartGateway, provider: Provider
) -> None:
    refusals = REGISTRY.get_sample_value("gateway_request_body_budget_refusals_total") or 0.0
    tokens = [provider.scoped("approve:timesheets", subject=f"b-{uuid.uuid4().hex[:6]}") for _ in range(2)]
    async with gateway_with(start_gateway, gateway_request_body_buffer_bytes=1 << 20) as (gateway, edge):
        first = asyncio.create_task(request(gateway, put(tokens[0], 1.5)))
        await until(lambda: edge.body.held == BODY, "the first body held")
        status, headers, body = await request(gateway, put(tokens[1], 0))  # another caller: all share it
        assert status == 503
        assert headers["retry-after"] == "2"
        problem = json.loads(body)
        assert problem["reason"] == "request_body_budget"
        assert problem["outcome"] == "not_stored"
        assert REGISTRY.get_sample_value("gateway_request_body_budget_refusals_total") == refusals + 1
        assert (await first)[0] == 200
        await until(lambda: edge.body.held == 0, "the room given back")
        assert (await request(gateway, put(tokens[1], 0)))[0] == 200
        await until(lambda: edge.body.held == 0, "the room given back again")
        # a refused client that is gone, a body refused as too large: nothing is kept either
        status, _, _ = await request(gateway, put(tokens[1], 0, size=17 << 20)[:4096])
        assert status == 413
        assert edge.body.held == 0


async def test_zero_means_no_bound(start_gateway: StartGateway, provider: Provider) -> None:
    tokens = [provider.scoped("approve:timesheets", subject=f"z-{uuid.uuid4().hex[:6]}") for _ in range(3)]
    async with gateway_with(start_gateway, gateway_request_body_buffer_bytes=0) as (gateway, edge):
        answers = await asyncio.gather(*(request(gateway, put(t, 0.3)) for t in tokens))
        assert [status for status, _, _ in answers] == [200] * 3
        assert edge.body.held == 0
