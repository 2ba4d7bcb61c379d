"""A client registered with ``--require-dpop`` (RFC 9449 §5.2 ``dpop_bound_access_tokens``) never holds
a bearer access token: not from the token endpoint, and not from the implicit flow either, which hands
access tokens out at the authorization endpoint where no DPoP proof can be sent."""

from __future__ import annotations

import secrets

import pytest

from testkit.clihost import CliHost
from testkit.oidc import SPA, Browser, hosted_cli, params_of

pytestmark = pytest.mark.usefixtures("identity_service")

CLIENT_ID = "dpop-implicit-spa"


@pytest.fixture(scope="module")
def dpop_client_with_implicit(seeded: dict[str, str], cli_host: CliHost) -> str:
    """What ``add-client`` accepts today: a public DPoP-only client also registered for implicit."""
    result = hosted_cli(
        cli_host,
        seeded,
        "add-client",
        CLIENT_ID,
        "--name",
        "DPoP SPA",
        "--public",
        "--first-party",
        "--redirect-uri",
        f"{SPA}/dpop/",
        "--grant-type",
        "authorization_code",
        "--grant-type",
        "implicit",
        "--scope",
        "openid",
        "--scope",
        "read:timesheets",
        "--require-dpop",
    )
    assert result.returncode == 0, result.stderr
    return CLIENT_ID


async def test_a_dpop_only_client_gets_no_bearer_token_from_the_implicit_flow(
    browser: Browser, dpop_client_with_implicit: str
) -> None:
    response = await browser.sign_in_and_authorize(
        "alice",
        response_type="id_token token",
        client_id=dpop_client_with_implicit,
        redirect_uri=f"{SPA}/dpop/",
        scope="openid read:timesheets",
        state="s1",
        nonce=secrets.token_urlsafe(12),
    )
    assert response.status == 302, browser.last_html
    answer = params_of(response.headers["Location"])
    assert "access_token" not in answer, f"a {answer.get('token_type')} token for a DPoP-only client"
    assert answer["error"] in ("unauthorized_client", "invalid_request", "unsupported_response_type")
