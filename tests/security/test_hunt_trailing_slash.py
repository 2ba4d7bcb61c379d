"""A trailing slash: the gateway routes /api/timesheets/ as /api/timesheets (its route matching strips
slashes at both ends) but forwards the raw path /timesheets/, which the service's Starlette router
answers with a 307 to its own internal URL (hunt-gateway)."""

from __future__ import annotations

import aiohttp
import pytest
import yarl

from .conftest import Edge


@pytest.mark.parametrize(
    ("method", "raw"),
    [("GET", "/api/timesheets/"), ("POST", "/api/timesheets/"), ("DELETE", "/api/timesheets/abc/")],
)
async def test_a_trailing_slash_never_exposes_a_service_url(
    edge: Edge, client: aiohttp.ClientSession, method: str, raw: str
) -> None:
    token = edge.issuer.token("alice-slash", "read:timesheets", "create:timesheets", "delete:timesheets")
    async with client.request(
        method,
        yarl.URL(edge.gateway + raw, encoded=True),
        headers={"Authorization": f"Bearer {token}"},
        allow_redirects=False,
    ) as response:
        location = response.headers.get("Location", "")
        assert edge.timesheets not in location, f"{response.status} Location: {location}"
        assert response.status not in (301, 302, 307, 308), location
        assert response.headers["Content-Type"] == "application/problem+json"
