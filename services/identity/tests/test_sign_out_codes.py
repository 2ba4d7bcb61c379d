"""Signing out revokes every token issued through the session (README, "Revocation"): that includes the
tokens an authorization code issued through it would still yield. A code not yet redeemed when the
session ends can no longer be: otherwise it gives an access token and a refresh-token family bound to
a session that is gone, which no later sign-out can revoke."""

from __future__ import annotations

import aiohttp
import pytest

from testkit.oidc import SPA, Browser, code_request, exchange_code, hidden_field, params_of, pkce_pair

pytestmark = pytest.mark.usefixtures("identity_service")


@pytest.mark.parametrize("logout", [f"/v2/logout?client_id=timesheets-spa&returnTo={SPA}/", "/oidc/logout"])
async def test_a_code_issued_before_sign_out_is_not_redeemable_after_it(
    browser: Browser, http: aiohttp.ClientSession, base_url: str, logout: str
) -> None:
    verifier, challenge = pkce_pair()
    request = code_request(challenge, scope="openid offline_access read:timesheets")
    response = await browser.sign_in_and_authorize("alice", **request)
    assert response.status == 302, browser.last_html
    code = params_of(response.headers["Location"])["code"]
    signed_out = await browser.get(logout)
    if logout == "/oidc/logout":  # no id_token_hint: the person is asked first, and confirms
        assert signed_out.status == 200
        token = hidden_field(browser.last_html, "csrf_token")
        signed_out = await browser.post("/oidc/logout", {"csrf_token": token})
    assert signed_out.status in (200, 302)
    status, body = await exchange_code(http, base_url, code, verifier)
    assert status == 400, f"tokens issued after sign-out: {sorted(body)}"
    assert body["error"] == "invalid_grant"
