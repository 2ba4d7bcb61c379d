"""A token request the provider refuses changes nothing: the refresh token or code it named stays
usable, so a client's mistake (a scope it may not widen to, a wrong verifier) or someone else's
attempt does not use it up, and the client's next, correct request is not taken for a replay that
revokes the user's whole session."""

from __future__ import annotations

import aiohttp
import pytest

from testkit.oidc import Browser, code_request, exchange_code, params_of, pkce_pair, refresh, sign_in_tokens

pytestmark = pytest.mark.usefixtures("identity_service")


async def test_a_refresh_refused_for_its_scope_leaves_the_refresh_token_usable(
    browser: Browser, http: aiohttp.ClientSession, base_url: str
) -> None:
    body = await sign_in_tokens(browser, http, base_url, scope="openid offline_access read:timesheets")
    status, error = await refresh(http, base_url, body["refresh_token"], scope="openid read:audit")
    assert status == 400
    assert error["error"] == "invalid_scope"
    status, renewed = await refresh(http, base_url, body["refresh_token"])
    assert status == 200, renewed
    assert "refresh_token" in renewed


async def test_a_refresh_by_another_client_leaves_the_refresh_token_usable(
    browser: Browser, http: aiohttp.ClientSession, base_url: str
) -> None:
    body = await sign_in_tokens(browser, http, base_url, scope="openid offline_access read:timesheets")
    status, error = await refresh(http, base_url, body["refresh_token"], client_id="partner-spa")
    assert status == 400
    assert error["error"] == "invalid_grant"
    status, renewed = await refresh(http, base_url, body["refresh_token"])
    assert status == 200, renewed


async def test_a_code_exchange_refused_for_its_verifier_leaves_the_code_usable(
    browser: Browser, http: aiohttp.ClientSession, base_url: str
) -> None:
    verifier, challenge = pkce_pair()
    response = await browser.sign_in_and_authorize("alice", **code_request(challenge))
    assert response.status == 302, browser.last_html
    code = params_of(response.headers["Location"])["code"]
    status, error = await exchange_code(http, base_url, code, "x" * 43)
    assert status == 400
    assert error["error"] == "invalid_grant"
    status, tokens = await exchange_code(http, base_url, code, verifier)
    assert status == 200, tokens
