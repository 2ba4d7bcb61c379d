"""Token and revocation requests name each parameter once (RFC 6749 §3.2): a repeated one is refused
as ``invalid_request``, never read as whichever copy a check happens to take (a ``dpop_jkt`` was
checked on its last copy and stored from its first)."""

from __future__ import annotations

import aiohttp
import pytest

pytestmark = pytest.mark.usefixtures("identity_service")


@pytest.mark.parametrize("path", ["/oauth/token", "/oauth/revoke"])
@pytest.mark.parametrize(
    "body",
    [
        "grant_type=client_credentials&grant_type=authorization_code&client_id=timesheets-batch",
        "grant_type=client_credentials&client_id=a&client_id=timesheets-batch&token=t",
        "grant_type=refresh_token&refresh_token=a&refresh_token=b&token=t&token=u",
    ],
)
async def test_a_parameter_sent_twice_is_invalid_request(
    http: aiohttp.ClientSession, base_url: str, path: str, body: str
) -> None:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    async with http.post(base_url + path, data=body.encode(), headers=headers) as response:
        assert response.status == 400, await response.text()
        assert response.headers["Content-Type"].startswith("application/json")
        document = await response.json()
        assert document["error"] == "invalid_request"
        assert "more than once" in document["error_description"]
