"""Token, revocation and authorization requests name each parameter once (RFC 6749 §3.1, §3.2): a
repeated one is refused as ``invalid_request``, never read as whichever copy a check happens to take
(a ``dpop_jkt`` was checked on its last copy and stored from its first)."""

from __future__ import annotations

from urllib.parse import urlencode

import aiohttp
import pytest

from testkit.oidc import code_request, pkce_pair

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


@pytest.mark.parametrize("twice", ["redirect_uri", "state", "client_id", "dpop_jkt"])
async def test_an_authorization_request_naming_a_parameter_twice_is_refused_here(
    http: aiohttp.ClientSession, base_url: str, twice: str
) -> None:
    """RFC 6749 §3.1. Shown as an error page, never redirected: which ``redirect_uri`` or ``state``
    was meant is exactly what cannot be told."""
    _, challenge = pkce_pair()
    pairs = list(code_request(challenge).items())
    pairs += [(twice, "https://evil.example/" if twice == "redirect_uri" else "other")]
    if twice == "dpop_jkt":
        pairs += [("dpop_jkt", "also")]
    async with http.get(f"{base_url}/authorize?{urlencode(pairs)}", allow_redirects=False) as response:
        page = await response.text()
        assert response.status == 400, page
        assert "Location" not in response.headers
        assert f"The {twice} parameter is sent more than once." in page
