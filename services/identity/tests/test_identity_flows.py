"""End-to-end flows over HTTP against the real service process: discovery, code+PKCE, implicit,
client credentials, userinfo, prompt=none, consent, logout."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import time
from typing import Any

import aiohttp
import pytest

from testkit.fixtures import ServiceProcess, metrics_url
from testkit.oidc import (
    API,
    BATCH_SECRET,
    DEMO_PASSWORD,
    SPA,
    Browser,
    code_request,
    exchange_code,
    hidden_field,
    params_of,
    pkce_pair,
)

pytestmark = pytest.mark.usefixtures("identity_service")


def at_hash(access_token: str) -> str:
    digest = hashlib.sha256(access_token.encode()).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()


async def code_flow(
    browser: Browser,
    username: str,
    *,
    client_id: str = "timesheets-spa",
    redirect_uri: str = f"{SPA}/callback",
    scope: str = "openid profile email read:timesheets create:timesheets",
    extra: dict[str, str] | None = None,
) -> tuple[dict[str, str], str, str]:
    """Sign in and get a code; returns (callback params, verifier, nonce)."""
    verifier, challenge = pkce_pair()
    nonce = secrets.token_urlsafe(12)
    state = secrets.token_urlsafe(12)
    request = code_request(
        challenge,
        client_id=client_id,
        redirect_uri=redirect_uri,
        scope=scope,
        state=state,
        nonce=nonce,
        **(extra or {}),
    )
    response = await browser.sign_in_and_authorize(username, **request)
    assert response.status == 302, browser.last_html
    location = response.headers["Location"]
    assert location.startswith(redirect_uri + "?"), location
    params = params_of(location)
    assert params["state"] == state
    return params, verifier, nonce


async def test_discovery_and_jwks(http: aiohttp.ClientSession, base_url: str, issuer: str) -> None:
    async with http.get(base_url + "/.well-known/openid-configuration") as response:
        assert response.status == 200
        doc = await response.json()
    assert doc["issuer"] == issuer
    assert doc["authorization_endpoint"] == issuer + "authorize"
    assert doc["token_endpoint"] == issuer + "oauth/token"
    assert doc["jwks_uri"] == issuer + ".well-known/jwks.json"
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert "web_message" in doc["response_modes_supported"]
    async with http.get(doc["jwks_uri"].replace(issuer, base_url + "/")) as response:
        keys = (await response.json())["keys"]
    assert keys
    assert all(k["use"] == "sig" and k["kid"] and k["alg"] == "RS256" for k in keys)
    assert all("d" not in k and "p" not in k for k in keys), "private parts must never be published"


async def test_code_flow_with_pkce_issues_verified_tokens(
    browser: Browser, http: aiohttp.ClientSession, base_url: str, issuer: str, verify: Any
) -> None:
    params, verifier, nonce = await code_flow(browser, "alice")
    status, body = await exchange_code(http, base_url, params["code"], verifier)
    assert status == 200, body
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    tokens = await verify(body, "timesheets-spa")
    access, id_token = tokens.access, tokens.id
    assert tokens.access_header["typ"] == "at+jwt"
    assert access["sub"] == "local|alice"
    assert access["aud"] == [API, issuer + "userinfo"]
    assert access["azp"] == access["client_id"] == "timesheets-spa"
    assert access["scope"] == "openid profile email read:timesheets create:timesheets"
    assert access["permissions"] == ["read:timesheets", "create:timesheets"]
    assert access["gty"] == "authorization_code"
    assert access["jti"]
    assert access["exp"] - access["iat"] == 900
    assert access["name"] == "Alice Employee"
    assert access["email"] == "alice@example.com"
    assert id_token is not None
    assert id_token["nonce"] == nonce
    assert id_token["at_hash"] == at_hash(body["access_token"])
    assert id_token["azp"] == "timesheets-spa"
    assert id_token["sub"] == "local|alice"
    assert abs(id_token["auth_time"] - time.time()) < 60
    assert id_token["email"] == "alice@example.com"

    async with http.get(
        base_url + "/userinfo", headers={"Authorization": "Bearer " + body["access_token"]}
    ) as r:
        assert r.status == 200
        info = await r.json()
    assert info["sub"] == "local|alice"
    assert info["name"] == "Alice Employee"


async def test_token_endpoint_accepts_json_like_auth0(
    browser: Browser, http: aiohttp.ClientSession, base_url: str
) -> None:
    params, verifier, _ = await code_flow(browser, "bob")
    response = await http.post(
        base_url + "/oauth/token",
        json={
            "grant_type": "authorization_code",
            "client_id": "timesheets-spa",
            "code": params["code"],
            "code_verifier": verifier,
            "redirect_uri": f"{SPA}/callback",
        },
    )
    assert response.status == 200, await response.text()


async def test_scopes_are_narrowed_to_roles(
    browser: Browser, http: aiohttp.ClientSession, base_url: str, verify: Any
) -> None:
    """alice (employee) asks for approve:timesheets and read:audit: the token carries neither."""
    scope = "openid read:timesheets approve:timesheets read:audit"
    params, verifier, _ = await code_flow(browser, "alice", scope=scope)
    status, body = await exchange_code(http, base_url, params["code"], verifier)
    assert status == 200
    claims = (await verify(body, "timesheets-spa")).access
    assert claims["permissions"] == ["read:timesheets"]
    assert "approve:timesheets" not in claims["scope"]
    assert body["scope"] == "openid read:timesheets"


async def test_manager_gets_approve_and_auditor_gets_audit(
    base_url: str, http: aiohttp.ClientSession, verify: Any
) -> None:
    scope = "openid read:timesheets approve:timesheets read:audit"
    for user, expected in (
        ("bob", ["read:timesheets", "approve:timesheets"]),
        ("carol", ["read:timesheets", "read:audit"]),
    ):
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            params, verifier, _ = await code_flow(Browser(base_url, session), user, scope=scope)
        status, body = await exchange_code(http, base_url, params["code"], verifier)
        assert status == 200
        assert (await verify(body, "timesheets-spa")).access["permissions"] == expected


async def test_implicit_grant_returns_tokens_in_fragment(browser: Browser, verify: Any) -> None:
    nonce, state = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
    response = await browser.sign_in_and_authorize(
        "alice",
        response_type="token id_token",
        client_id="timesheets-spa",
        redirect_uri=f"{SPA}/",
        scope="openid profile read:timesheets",
        state=state,
        nonce=nonce,
        audience=API,
    )
    assert response.status == 302
    location = response.headers["Location"]
    assert location.startswith(f"{SPA}/#"), "implicit tokens travel in the fragment, never the query"
    params = params_of(location)
    assert params["state"] == state
    assert params["token_type"] == "Bearer"
    tokens = await verify(params, "timesheets-spa")
    assert tokens.id is not None
    assert tokens.id["nonce"] == nonce
    assert tokens.id["at_hash"] == at_hash(params["access_token"])
    assert tokens.access["gty"] == "implicit"
    assert tokens.access["permissions"] == ["read:timesheets"]


async def test_client_credentials(http: aiohttp.ClientSession, base_url: str, verify: Any) -> None:
    auth = {"Authorization": aiohttp.encode_basic_auth("timesheets-batch", BATCH_SECRET)}
    async with http.post(
        base_url + "/oauth/token", data={"grant_type": "client_credentials", "audience": API}, headers=auth
    ) as r:
        assert r.status == 200
        body = await r.json()
    claims = (await verify(body, "timesheets-batch")).access
    assert claims["sub"] == "timesheets-batch@clients"
    assert claims["gty"] == "client-credentials"
    assert claims["permissions"] == ["batch:upload"]
    assert claims["aud"] == API
    # client_secret_post works too
    data = {
        "grant_type": "client_credentials",
        "client_id": "timesheets-batch",
        "client_secret": BATCH_SECRET,
    }
    async with http.post(base_url + "/oauth/token", data=data) as r:
        assert r.status == 200


async def test_prompt_none_silent_renewal(browser: Browser, base_url: str) -> None:
    _verifier, challenge = pkce_pair()
    common = code_request(challenge, redirect_uri=f"{SPA}/", prompt="none", state="s1")
    # not signed in: login_required goes back to the client, no page is shown
    response = await browser.authorize(**common)
    assert response.status == 302
    answer = params_of(response.headers["Location"])
    assert answer["error"] == "login_required"
    assert answer["state"] == "s1"
    # the same through web_message: a page that posts the error to the framing SPA
    response = await browser.authorize(**common, response_mode="web_message")
    assert response.status == 200
    assert 'type: "authorization_response"' in browser.last_html
    assert '"error": "login_required"' in browser.last_html
    csp = response.headers["Content-Security-Policy"]
    assert f"frame-ancestors {SPA}" in csp
    assert "X-Frame-Options" not in response.headers

    login = await browser.login("alice")
    assert login.status == 303
    response = await browser.authorize(**common, response_mode="web_message")
    assert response.status == 200
    assert '"code": "' in browser.last_html
    assert '"state": "s1"' in browser.last_html
    assert f'"{SPA}"' in browser.last_html, "the message is addressed to the redirect URI's origin only"
    response = await browser.authorize(**common)
    assert response.status == 302
    assert "code" in params_of(response.headers["Location"])


async def test_sign_in_page_is_not_frameable(browser: Browser) -> None:
    response = await browser.get("/login")
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]


async def test_session_cookie_flags(browser: Browser) -> None:
    response = await browser.login("alice")
    assert response.status == 303
    cookie = next(
        v for k, v in response.headers.items() if k.lower() == "set-cookie" and "tsp_idp_session" in v
    )
    lowered = cookie.lower()
    assert "httponly" in lowered
    assert "samesite=lax" in lowered
    assert "secure" not in lowered  # plain-HTTP issuer locally; Secure is on for https issuers


async def test_third_party_consent_is_asked_remembered_and_revocable(browser: Browser, base_url: str) -> None:
    _verifier, challenge = pkce_pair()
    params = {
        "response_type": "code",
        "client_id": "partner-spa",
        "redirect_uri": f"{SPA}/partner/callback",
        "scope": "openid profile read:timesheets",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "state": "p1",
    }
    await browser.login("alice")
    # silent renewal cannot consent
    response = await browser.authorize(**params, prompt="none")
    assert params_of(response.headers["Location"])["error"] == "consent_required"
    # the consent page lists each scope in words
    response = await browser.authorize(**params)
    assert response.status == 200
    assert "Partner Time Reports" in browser.last_html
    assert "Read your timesheet entries" in browser.last_html
    assert "See your name" in browser.last_html
    assert response.headers["X-Frame-Options"] == "DENY"
    form = {
        "csrf_token": hidden_field(browser.last_html, "csrf_token"),
        "request": hidden_field(browser.last_html, "request"),
    }
    # a forged decision (no valid CSRF token) is refused
    forged = await browser.post("/authorize/decision", {**form, "csrf_token": "x", "decision": "allow"})
    assert forged.status == 403
    denied = await browser.post("/authorize/decision", {**form, "decision": "deny"})
    assert denied.status == 302
    assert params_of(denied.headers["Location"])["error"] == "access_denied"
    allowed = await browser.post("/authorize/decision", {**form, "decision": "allow"})
    assert allowed.status == 302
    assert "code" in params_of(allowed.headers["Location"])
    # remembered: no page the second time, even silently
    response = await browser.authorize(**params, prompt="none")
    assert "code" in params_of(response.headers["Location"])
    # revoke on the account page; then consent is asked again
    page = await browser.get("/account/consents")
    assert page.status == 200
    assert "Partner Time Reports" in browser.last_html
    revoke = await browser.post(
        "/account/consents/revoke",
        {"csrf_token": hidden_field(browser.last_html, "csrf_token"), "client_id": "partner-spa"},
    )
    assert revoke.status == 303
    response = await browser.authorize(**params, prompt="none")
    assert params_of(response.headers["Location"])["error"] == "consent_required"


async def test_first_party_skips_consent(browser: Browser) -> None:
    params, _, _ = await code_flow(browser, "carol", scope="openid read:audit")
    assert "code" in params


async def test_auth0_logout(browser: Browser, base_url: str) -> None:
    await browser.login("alice")
    response = await browser.get("/v2/logout?" + "client_id=timesheets-spa&returnTo=" + f"{SPA}/")
    assert response.status == 302
    assert response.headers["Location"] == f"{SPA}/"
    # the session is gone
    page = await browser.get("/account/consents")
    assert page.status == 302
    assert page.headers["Location"].startswith("/login")


async def test_oidc_rp_initiated_logout(browser: Browser, http: aiohttp.ClientSession, base_url: str) -> None:
    params, verifier, _ = await code_flow(browser, "alice", redirect_uri=f"{SPA}/")
    status, body = await exchange_code(http, base_url, params["code"], verifier, redirect_uri=f"{SPA}/")
    assert status == 200
    query = {"id_token_hint": body["id_token"], "post_logout_redirect_uri": f"{SPA}/", "state": "bye"}
    from urllib.parse import urlencode

    response = await browser.get("/oidc/logout?" + urlencode(query))
    assert response.status == 302
    assert response.headers["Location"] == f"{SPA}/?state=bye"
    again = await browser.authorize(
        response_type="code",
        client_id="timesheets-spa",
        redirect_uri=f"{SPA}/",
        prompt="none",
        code_challenge=pkce_pair()[1],
        code_challenge_method="S256",
        scope="openid",
    )
    assert params_of(again.headers["Location"])["error"] == "login_required"


async def test_cors_for_registered_origins_only(http: aiohttp.ClientSession, base_url: str) -> None:
    preflight = {
        "Origin": SPA,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,auth0-client",
    }
    async with http.options(base_url + "/oauth/token", headers=preflight) as r:
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == SPA
        assert "auth0-client" in r.headers["Access-Control-Allow-Headers"]
    async with http.options(
        base_url + "/oauth/token", headers={**preflight, "Origin": "https://evil.example"}
    ) as r:
        assert r.status == 403
        assert "Access-Control-Allow-Origin" not in r.headers
    async with http.get(base_url + "/.well-known/openid-configuration", headers={"Origin": SPA}) as r:
        assert r.headers["Access-Control-Allow-Origin"] == SPA
    async with http.get(base_url + "/.well-known/jwks.json", headers={"Origin": "https://evil.example"}) as r:
        assert "Access-Control-Allow-Origin" not in r.headers


async def test_metrics(http: aiohttp.ClientSession, base_url: str, browser: Browser) -> None:
    await browser.login("alice", password="wrong-password")
    async with http.post(
        base_url + "/oauth/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": aiohttp.encode_basic_auth("timesheets-batch", BATCH_SECRET)},
    ) as r:
        assert r.status == 200
    async with http.get(metrics_url(base_url)) as r:
        text = await r.text()
    assert 'identity_tokens_issued_total{grant_type="client_credentials"}' in text
    assert 'identity_login_failures_total{reason="invalid_credentials"}' in text
    assert 'http_requests_total{method="POST",route="/oauth/token",status="200"}' in text


async def test_health(http: aiohttp.ClientSession, base_url: str) -> None:
    async with http.get(base_url + "/readyz") as r:
        assert r.status == 200
        assert (await r.json())["checks"] == {"postgres": "ok", "signing_keys": "ok"}


async def test_implicit_prompt_none_without_session_answers_in_the_fragment(browser: Browser) -> None:
    response = await browser.authorize(
        response_type="id_token token",
        client_id="timesheets-spa",
        redirect_uri=f"{SPA}/",
        scope="openid",
        nonce="n-1",
        state="i1",
        prompt="none",
    )
    assert response.status == 302
    location = response.headers["Location"]
    assert location.startswith(f"{SPA}/#")
    answer = params_of(location)
    assert answer["error"] == "login_required"
    assert answer["state"] == "i1"


async def test_authorize_accepts_post(browser: Browser) -> None:
    await browser.login("alice")
    _, challenge = pkce_pair()
    form = code_request(challenge, redirect_uri=f"{SPA}/", scope="openid", state="post-1")
    response = await browser.post("/authorize", form)
    assert response.status == 302
    answer = params_of(response.headers["Location"])
    assert answer["state"] == "post-1"
    assert "code" in answer


async def test_no_secret_reaches_the_logs(
    browser: Browser, http: aiohttp.ClientSession, base_url: str, identity_service: ServiceProcess
) -> None:
    params, verifier, _ = await code_flow(browser, "alice")
    status, body = await exchange_code(http, base_url, params["code"], verifier)
    assert status == 200
    session_cookie = next(c.value for c in browser.session.cookie_jar if c.key == "tsp_idp_session")
    await asyncio.sleep(0.5)  # let the process flush its log lines
    logs = identity_service.logs()
    assert "/oauth/token" in logs, "the access log is there"
    for secret in (
        params["code"],
        verifier,
        body["access_token"],
        body["id_token"],
        session_cookie,
        DEMO_PASSWORD,
    ):
        assert secret not in logs


@pytest.mark.parametrize("mode", ["web_message", "form_post"])
async def test_implicit_silent_renewal_in_other_response_modes(browser: Browser, mode: str) -> None:
    await browser.login("alice")
    response = await browser.authorize(
        response_type="id_token token",
        client_id="timesheets-spa",
        redirect_uri=f"{SPA}/",
        scope="openid read:timesheets",
        nonce="n-2",
        state="w1",
        prompt="none",
        response_mode=mode,
    )
    assert response.status == 200, browser.last_html
    assert "access_token" in browser.last_html
    assert "id_token" in browser.last_html
    assert "w1" in browser.last_html
    if mode == "web_message":
        assert f"frame-ancestors {SPA}" in response.headers["Content-Security-Policy"]
    else:
        assert f'action="{SPA}/"' in browser.last_html


async def test_prompt_login_and_max_age_ask_for_the_password_again(browser: Browser) -> None:
    await browser.login("alice")
    _, challenge = pkce_pair()
    base = code_request(challenge, redirect_uri=f"{SPA}/", scope="openid")
    assert "code" in params_of((await browser.authorize(**base)).headers["Location"])
    for extra in ({"prompt": "login"}, {"max_age": "0"}):
        await asyncio.sleep(1.1)  # max_age=0: any session is too old a second later
        response = await browser.authorize(**base, **extra)
        assert response.status == 302
        assert response.headers["Location"].startswith("/login?")
        assert "prompt" not in response.headers["Location"], "no loop after signing in"
    silent = await browser.authorize(**base, max_age="0", prompt="none")
    assert params_of(silent.headers["Location"])["error"] == "login_required"


async def test_prompt_consent_shows_the_page_again(browser: Browser) -> None:
    await browser.login("bob")
    _, challenge = pkce_pair()
    params = {
        "response_type": "code",
        "client_id": "partner-spa",
        "redirect_uri": f"{SPA}/partner/",
        "scope": "openid read:timesheets",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    page = await browser.authorize(**params)
    assert page.status == 200
    form = {
        "csrf_token": hidden_field(browser.last_html, "csrf_token"),
        "request": hidden_field(browser.last_html, "request"),
    }
    allowed = await browser.post("/authorize/decision", {**form, "decision": "allow"})
    assert "code" in params_of(allowed.headers["Location"])
    assert (await browser.authorize(**params)).status == 302
    again = await browser.authorize(**params, prompt="consent")
    assert again.status == 200
    assert "wants to access your account" in browser.last_html


async def test_login_hint_prefills_the_user_name(browser: Browser) -> None:
    response = await browser.authorize(
        **code_request(pkce_pair()[1], redirect_uri=f"{SPA}/", scope="openid", login_hint='bob"><script>')
    )
    page = await browser.get(response.headers["Location"])
    assert page.status == 200
    assert 'value="bob&#34;&gt;&lt;script&gt;"' in browser.last_html
