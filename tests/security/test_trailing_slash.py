"""A trailing slash never exposes a service's internal URL: the gateway once routed /api/timesheets/
as /api/timesheets (its route matching stripped slashes at both ends) but forwarded the raw path
/timesheets/, which the service's Starlette router answered with a 307 to its own internal URL. Now
such a path matches no route, and the answer is the gateway's own problem document."""

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
