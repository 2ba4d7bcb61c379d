"""Every denial at the edge has a reason in ``gateway_auth_failures_total`` and a record on the audit
trail (docs/ARCHITECTURE.md: "Every refusal is an RFC 9457 problem document with a stable ``reason``,
counted in ``gateway_auth_failures_total{reason}`` and written to the audit trail"). Each case here was
a denial path found without one or the other; the docstrings say what it was.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from testkit.fixtures import ServiceProcess

from .conftest import Echo, Provider, StartGateway, process_env
from .test_cors_limits_audit import BEHIND_PROXY, unique_address, wait_for_address
from .test_dpop import auth_failures

ROUTE = "/api/timesheets"


async def test_a_token_in_the_query_string_is_a_counted_and_audited_denial(
    http: aiohttp.ClientSession, start_gateway: StartGateway, provider: Provider, echo: Echo
) -> None:
    """``?access_token=`` is refused (400, ``WWW-Authenticate: Bearer error="invalid_request"``), the
    same kind of refusal as several ``Authorization`` headers (reason ``malformed``, counted, audited).
    This one has no ``reason`` in its problem body, is counted in no ``gateway_auth_failures_total``
    series and never reaches the audit trail: a client leaking tokens into URLs (and so into every
    proxy's and browser's history) is invisible to the SREs and the auditors alike."""
    address = unique_address()
    token = provider.token()
    async with start_gateway(**BEHIND_PROXY) as gateway:
        before = await auth_failures(http, gateway)
        async with http.get(
            f"{gateway}{ROUTE}?access_token={token}", headers={"X-Forwarded-For": address}
        ) as response:
            assert response.status == 400
            assert 'error="invalid_request"' in response.headers["WWW-Authenticate"]
            reason = (await response.json()).get("reason")
        after = await auth_failures(http, gateway)
        counted = {key: after[key] - before.get(key, 0.0) for key in after if after[key] != before.get(key)}
        assert reason, "the problem document carries no reason"
        assert counted == {reason: 1.0}, f"gateway_auth_failures_total moved by {counted}"
        records = await wait_for_address(echo, address, timeout=3.0)
    assert [record["details"]["reason"] for record in records] == [reason]
    assert all(token not in str(record) for record in records)


# --- refusals of the HTTP layer -------------------------------------------------------------------


@pytest.fixture(scope="module")
async def process(
    provider: Provider, echo: Echo, identity_keys: dict[str, str], redis_prefix: str
) -> AsyncIterator[ServiceProcess]:
    """A real ``python -m gateway`` process, served as in production, with short stall timeouts."""
    from .test_edge_refusals import STALL_TIMEOUTS

    started = ServiceProcess(
        "gateway", process_env(provider, echo, identity_keys, redis_prefix, **STALL_TIMEOUTS)
    )
    await asyncio.to_thread(started.start)
    try:
        yield started
    finally:
        await asyncio.to_thread(started.stop)


def refused_counted(text: str) -> dict[str, float]:
    """``http_refused_total`` by status."""
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "http_refused_total":
                counts[sample.labels["status"]] = sample.value
    return counts


async def test_refusals_of_the_http_layer_are_counted(
    http: aiohttp.ClientSession, process: ServiceProcess
) -> None:
    """The gateway's HTTP layer answers a head over the limit (431) and a client that stops sending
    in the middle of a head (408: slowloris) itself, before the edge sees a request: no route series
    or access line sees them, so a flood of them — the very attacks those answers exist for — would
    be invisible. Each is counted in ``http_refused_total{status}`` (and logged, rate-limited)."""
    from svckit.server import MAX_HEAD_BYTES

    from .test_edge_refusals import exchange, problem_status

    async def counted() -> dict[str, float]:
        async with http.get(process.metrics_url) as response:
            return refused_counted(await response.text())

    before = await counted()
    response, _ = await exchange(
        process.url, b"GET /api/timesheets HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"a" * (2 * MAX_HEAD_BYTES), 3
    )
    assert problem_status(response) == 431
    response, _ = await exchange(process.url, b"GET /api/timesheets HTTP/1.1\r\nHost: gw\r\n", 4)
    assert problem_status(response) == 408
    after = await counted()
    assert after.get("431", 0.0) == before.get("431", 0.0) + 1
    assert after.get("408", 0.0) == before.get("408", 0.0) + 1
    log = process.logs()
    assert "request refused by the HTTP layer" in log
