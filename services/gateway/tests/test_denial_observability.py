"""Every denial at the edge has a reason in ``gateway_auth_failures_total`` and a record on the audit
trail (docs/ARCHITECTURE.md: "Every refusal is an RFC 9457 problem document with a stable ``reason``,
counted in ``gateway_auth_failures_total{reason}`` and written to the audit trail"). Each case here was
a denial path found without one or the other; the docstrings say what it was.
"""

from __future__ import annotations

import aiohttp

from .conftest import Echo, Provider, StartGateway
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
