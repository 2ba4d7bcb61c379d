"""Refresh tokens: only with offline_access, rotated at every use, reuse revokes the family, logout too."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from testkit.oidc import SPA, Browser, refresh, sign_in_tokens

pytestmark = pytest.mark.usefixtures("identity_service")


async def test_no_refresh_token_without_offline_access(
    browser: Browser, http: aiohttp.ClientSession, base_url: str
) -> None:
    body = await sign_in_tokens(browser, http, base_url, scope="openid read:timesheets")
    assert "refresh_token" not in body


@pytest.mark.parametrize("narrower", ["openid read:timesheets", "openid", "offline_access"])
async def test_a_narrower_scope_narrows_the_access_token_only(
    browser: Browser, http: aiohttp.ClientSession, base_url: str, narrower: str
) -> None:
    """RFC 6749 §6: ``scope`` on a refresh narrows what the *access token* may do; a refresh token
    issued then has the scope of the one presented. A scope without ``offline_access`` used up the
    refresh token and issued none: the client kept the spent one (§6: no new token, keep the old),
    whose next use was taken for reuse and revoked the session. And ``offline_access`` alone left
    the family with that scope for good."""
    full = "openid profile offline_access read:timesheets"
    body = await sign_in_tokens(browser, http, base_url, scope=full)
    status, narrowed = await refresh(http, base_url, body["refresh_token"], scope=narrower)
    assert status == 200, narrowed
    assert narrowed["scope"] == narrower
    assert narrowed["refresh_token"] != body["refresh_token"]
    status, again = await refresh(http, base_url, narrowed["refresh_token"])
    assert status == 200, again
    assert again["scope"] == full


async def test_rotation_and_reuse_detection(
    browser: Browser, http: aiohttp.ClientSession, base_url: str, verify: Any
) -> None:
    body = await sign_in_tokens(
        browser, http, base_url, scope="openid profile offline_access read:timesheets"
    )
    first = body["refresh_token"]
    status, second = await refresh(http, base_url, first)
    assert status == 200, second
    assert second["refresh_token"] != first
    tokens = await verify(second, "timesheets-spa")
    assert tokens.access["permissions"] == ["read:timesheets"]
    assert tokens.id is not None
    assert tokens.id["sub"] == "local|alice"
    assert tokens.id["auth_time"] == (await verify(body, "timesheets-spa")).id["auth_time"]
    # a narrower scope may be asked for, a wider one not
    status, narrower = await refresh(http, base_url, second["refresh_token"], scope="openid offline_access")
    assert status == 200
    assert narrower["scope"] == "openid offline_access"
    status, error = await refresh(http, base_url, narrower["refresh_token"], scope="openid read:audit")
    assert status == 400
    assert error["error"] == "invalid_scope"

    # the first token again: reuse is detected and the whole family dies, including the newest token
    status, reused = await refresh(http, base_url, first)
    assert status == 400
    assert reused["error"] == "invalid_grant"
    assert "already used" in reused["error_description"]
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as other:
        fresh = await sign_in_tokens(Browser(base_url, other), http, base_url, scope="openid offline_access")
    status, _ = await refresh(http, base_url, fresh["refresh_token"])
    assert status == 200, "another session's family is unaffected"


async def test_refresh_token_is_bound_to_its_client(
    browser: Browser, http: aiohttp.ClientSession, base_url: str
) -> None:
    body = await sign_in_tokens(browser, http, base_url, scope="openid offline_access")
    status, error = await refresh(http, base_url, body["refresh_token"], client_id="partner-spa")
    assert status == 400
    assert error["error"] == "invalid_grant"


async def test_logout_revokes_the_sessions_refresh_tokens(
    browser: Browser, http: aiohttp.ClientSession, base_url: str
) -> None:
    body = await sign_in_tokens(browser, http, base_url, scope="openid offline_access")
    response = await browser.get(f"/v2/logout?client_id=timesheets-spa&returnTo={SPA}/")
    assert response.status == 302
    status, error = await refresh(http, base_url, body["refresh_token"])
    assert status == 400
    assert error["error"] == "invalid_grant"


async def test_revocation_endpoint(browser: Browser, http: aiohttp.ClientSession, base_url: str) -> None:
    body = await sign_in_tokens(browser, http, base_url, scope="openid offline_access read:timesheets")
    revoke = base_url + "/oauth/revoke"
    # an unknown token is not an error (RFC 7009 §2.2)
    async with http.post(revoke, data={"client_id": "timesheets-spa", "token": "nonsense"}) as r:
        assert r.status == 200
    # another client cannot revoke it
    async with http.post(revoke, data={"client_id": "partner-spa", "token": body["refresh_token"]}) as r:
        assert r.status == 400
    status, rotated = await refresh(http, base_url, body["refresh_token"])
    assert status == 200
    async with http.post(
        revoke,
        data={
            "client_id": "timesheets-spa",
            "token": rotated["refresh_token"],
            "token_type_hint": "refresh_token",
        },
    ) as r:
        assert r.status == 200
    status, error = await refresh(http, base_url, rotated["refresh_token"])
    assert status == 400
    assert error["error"] == "invalid_grant"
    # revoking the refresh token revoked every access token of its family too (issue 14)
    for access_token in (body["access_token"], rotated["access_token"]):
        async with http.get(base_url + "/userinfo", headers={"Authorization": "Bearer " + access_token}) as r:
            assert r.status == 401
    # an access token alone: its ledger entry is revoked, /userinfo refuses it, the refresh token lives
    other = await sign_in_tokens(browser, http, base_url, scope="openid offline_access read:timesheets")
    bearer = {"Authorization": "Bearer " + other["access_token"]}
    async with http.get(base_url + "/userinfo", headers=bearer) as r:
        assert r.status == 200
    async with http.post(revoke, data={"client_id": "timesheets-spa", "token": other["access_token"]}) as r:
        assert r.status == 200
    async with http.get(base_url + "/userinfo", headers=bearer) as r:
        assert r.status == 401
    status, _ = await refresh(http, base_url, other["refresh_token"])
    assert status == 200
    async with http.post(revoke, data={"client_id": "timesheets-spa"}) as r:
        assert r.status == 400
        assert (await r.json())["error"] == "invalid_request"
