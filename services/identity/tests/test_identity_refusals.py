"""Every refusal the issue lists, end to end over HTTP against the real service process."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import aiohttp
import asyncpg
import pytest
from identity import store
from identity.models import User
from identity.passwords import hash_secret

from testkit.oidc import (
    BATCH_SECRET,
    DEMO_PASSWORD,
    SPA,
    Browser,
    code_request,
    hidden_field,
    params_of,
    pkce_pair,
)

pytestmark = pytest.mark.usefixtures("identity_service")


async def get_code(browser: Browser, username: str = "alice", **extra: str) -> tuple[str, str]:
    verifier, challenge = pkce_pair()
    response = await browser.sign_in_and_authorize(username, **code_request(challenge, **extra))
    assert response.status == 302, browser.last_html
    return params_of(response.headers["Location"])["code"], verifier


async def redeem(http: aiohttp.ClientSession, base_url: str, **data: str) -> tuple[int, dict[str, Any]]:
    body = {
        "grant_type": "authorization_code",
        "client_id": "timesheets-spa",
        "redirect_uri": f"{SPA}/callback",
        **data,
    }
    async with http.post(base_url + "/oauth/token", data=body) as response:
        return response.status, await response.json()


async def test_unregistered_redirect_uri_gets_an_error_page_never_a_redirect(browser: Browser) -> None:
    await browser.login("alice")
    for uri in ("https://evil.example/callback", f"{SPA}/callback/../evil", f"{SPA}/callbackx", f"{SPA}"):
        response = await browser.get(
            "/authorize?" + urlencode(code_request(pkce_pair()[1], redirect_uri=uri))
        )
        assert response.status == 400, uri
        assert "Location" not in response.headers
        assert "invalid_request" in browser.last_html
        assert response.headers["Content-Type"].startswith("text/html")


async def test_unknown_client_gets_an_error_page(browser: Browser) -> None:
    response = await browser.get("/authorize?" + urlencode(code_request(pkce_pair()[1], client_id="nobody")))
    assert response.status == 400
    assert "Location" not in response.headers
    assert "invalid_client" in browser.last_html


async def test_implicit_without_nonce_is_refused_to_the_client(browser: Browser) -> None:
    await browser.login("alice")
    params = {
        "response_type": "id_token token",
        "client_id": "timesheets-spa",
        "redirect_uri": f"{SPA}/",
        "scope": "openid",
        "state": "n1",
    }
    response = await browser.get("/authorize?" + urlencode(params))
    assert response.status == 302
    location = response.headers["Location"]
    assert location.startswith(f"{SPA}/#")
    answer = params_of(location)
    assert answer["error"] == "invalid_request"
    assert "nonce" in answer["error_description"]
    assert answer["state"] == "n1"


async def test_implicit_in_query_mode_is_refused(browser: Browser) -> None:
    await browser.login("alice")
    params = {
        "response_type": "id_token token",
        "client_id": "timesheets-spa",
        "redirect_uri": f"{SPA}/",
        "scope": "openid",
        "nonce": "n",
        "response_mode": "query",
    }
    response = await browser.get("/authorize?" + urlencode(params))
    answer = params_of(response.headers["Location"])
    assert answer["error"] == "invalid_request"
    assert "access_token" not in answer


async def test_code_flow_without_pkce_is_refused_for_public_clients(browser: Browser) -> None:
    await browser.login("alice")
    response = await browser.get("/authorize?" + urlencode(code_request(None)))
    assert response.status == 302
    answer = params_of(response.headers["Location"])
    assert answer["error"] == "invalid_request"
    assert "PKCE" in answer["error_description"]


async def test_plain_pkce_is_refused(browser: Browser) -> None:
    await browser.login("alice")
    verifier, _ = pkce_pair()
    params = code_request(None, code_challenge=verifier, code_challenge_method="plain")
    response = await browser.get("/authorize?" + urlencode(params))
    answer = params_of(response.headers["Location"])
    assert answer["error"] == "invalid_request"
    assert "plain" in answer["error_description"]


async def test_pkce_mismatch_is_refused(browser: Browser, http: aiohttp.ClientSession, base_url: str) -> None:
    code, _ = await get_code(browser)
    other_verifier, _ = pkce_pair()
    status, body = await redeem(http, base_url, code=code, code_verifier=other_verifier)
    assert status == 400
    assert body["error"] == "invalid_grant"


async def test_missing_verifier_is_refused(
    browser: Browser, http: aiohttp.ClientSession, base_url: str
) -> None:
    code, _ = await get_code(browser)
    status, body = await redeem(http, base_url, code=code)
    assert status == 400
    assert body["error"] == "invalid_request"


async def test_replayed_code_is_refused_and_revokes_its_tokens(
    browser: Browser, http: aiohttp.ClientSession, base_url: str
) -> None:
    code, verifier = await get_code(browser)
    status, first = await redeem(http, base_url, code=code, code_verifier=verifier)
    assert status == 200
    bearer = {"Authorization": "Bearer " + first["access_token"]}
    async with http.get(base_url + "/userinfo", headers=bearer) as response:
        assert response.status == 200
    status, second = await redeem(http, base_url, code=code, code_verifier=verifier)
    assert status == 400
    assert second["error"] == "invalid_grant"
    assert "already used" in second["error_description"]
    async with http.get(base_url + "/userinfo", headers=bearer) as response:
        assert response.status == 401
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


async def test_expired_code_is_refused(
    browser: Browser, http: aiohttp.ClientSession, base_url: str, db: asyncpg.Connection
) -> None:
    code, verifier = await get_code(browser)
    import hashlib

    await db.execute(
        "UPDATE authorization_codes SET expires_at = now() - interval '1 second' WHERE code_hash = $1",
        hashlib.sha256(code.encode()).digest(),
    )
    status, body = await redeem(http, base_url, code=code, code_verifier=verifier)
    assert status == 400
    assert body["error"] == "invalid_grant"
    assert "expired" in body["error_description"]


async def test_code_is_bound_to_client_and_redirect_uri(
    browser: Browser, http: aiohttp.ClientSession, base_url: str
) -> None:
    code, verifier = await get_code(browser)
    status, body = await redeem(http, base_url, code=code, code_verifier=verifier, redirect_uri=f"{SPA}/")
    assert status == 400
    assert body["error"] == "invalid_grant"
    code, verifier = await get_code(browser)
    status, body = await redeem(http, base_url, code=code, code_verifier=verifier, client_id="partner-spa")
    assert status == 400
    assert body["error"] == "invalid_grant"


async def test_codes_are_stored_only_as_digests(browser: Browser, db: asyncpg.Connection) -> None:
    code, _ = await get_code(browser)
    rows = await db.fetch("SELECT code_hash FROM authorization_codes")
    assert all(bytes(r["code_hash"]) != code.encode() for r in rows)
    assert len(bytes(rows[0]["code_hash"])) == 32


async def test_wrong_client_secret_is_401_invalid_client(http: aiohttp.ClientSession, base_url: str) -> None:
    for auth in (
        aiohttp.encode_basic_auth("timesheets-batch", "wrong"),
        aiohttp.encode_basic_auth("no-such-client", BATCH_SECRET),
    ):
        async with http.post(
            base_url + "/oauth/token",
            data={"grant_type": "client_credentials"},
            headers={"Authorization": auth},
        ) as response:
            assert response.status == 401
            assert (await response.json())["error"] == "invalid_client"
            assert response.headers["WWW-Authenticate"].startswith("Basic")
    data = {"grant_type": "client_credentials", "client_id": "timesheets-batch", "client_secret": "wrong"}
    async with http.post(base_url + "/oauth/token", data=data) as response:
        assert response.status == 401
        assert (await response.json())["error"] == "invalid_client"


async def test_public_client_cannot_use_client_credentials(
    http: aiohttp.ClientSession, base_url: str
) -> None:
    data = {"grant_type": "client_credentials", "client_id": "timesheets-spa"}
    async with http.post(base_url + "/oauth/token", data=data) as response:
        assert response.status in (400, 401)
        assert (await response.json())["error"] in ("invalid_client", "unauthorized_client")


async def test_client_may_only_ask_for_its_scopes(
    browser: Browser, http: aiohttp.ClientSession, base_url: str
) -> None:
    await browser.login("alice")
    params = code_request(pkce_pair()[1], scope="openid batch:upload")
    response = await browser.get("/authorize?" + urlencode(params))
    answer = params_of(response.headers["Location"])
    assert answer["error"] == "invalid_scope"
    assert "batch:upload" in answer["error_description"]
    params = code_request(pkce_pair()[1], scope="openid launch:missiles")
    response = await browser.get("/authorize?" + urlencode(params))
    assert params_of(response.headers["Location"])["error"] == "invalid_scope"
    data = {"grant_type": "client_credentials", "scope": "read:audit"}
    auth = {"Authorization": aiohttp.encode_basic_auth("timesheets-batch", BATCH_SECRET)}
    async with http.post(base_url + "/oauth/token", data=data, headers=auth) as r:
        assert r.status == 400
        assert (await r.json())["error"] == "invalid_scope"


async def test_unknown_audience_is_refused(http: aiohttp.ClientSession, base_url: str) -> None:
    data = {"grant_type": "client_credentials", "audience": "https://other.example/api"}
    auth = {"Authorization": aiohttp.encode_basic_auth("timesheets-batch", BATCH_SECRET)}
    async with http.post(base_url + "/oauth/token", data=data, headers=auth) as r:
        assert r.status == 400
        assert (await r.json())["error"] == "invalid_request"


async def test_open_redirect_through_return_to_is_refused(browser: Browser) -> None:
    await browser.login("alice")
    for client_id, target in (
        ("timesheets-spa", "https://evil.example/"),
        ("timesheets-spa", f"{SPA}/callback"),  # a redirect URI, but not a registered logout URL
        ("partner-spa", f"{SPA}/"),  # registered for another client
        ("", f"{SPA}/"),  # no client at all
    ):
        response = await browser.get("/v2/logout?" + urlencode({"client_id": client_id, "returnTo": target}))
        assert response.status == 400, target
        assert "Location" not in response.headers
    # post_logout_redirect_uri of OIDC logout is checked the same way
    response = await browser.get(
        "/oidc/logout?"
        + urlencode({"client_id": "timesheets-spa", "post_logout_redirect_uri": "https://evil.example/"})
    )
    assert "Location" not in response.headers


async def test_sign_in_return_to_cannot_leave_the_server(browser: Browser) -> None:
    for target in (
        "https://evil.example/",
        "//evil.example/authorize",
        "/\\evil.example",
        "javascript:alert(1)",
    ):
        response = await browser.login("alice", return_to=target)
        assert response.status == 303
        assert response.headers["Location"] == "/account/consents", target


async def test_csrf_on_the_sign_in_form(browser: Browser, base_url: str) -> None:
    page = await browser.get("/login")
    assert page.status == 200
    token = hidden_field(browser.last_html, "csrf_token")
    form = {"username": "alice", "password": DEMO_PASSWORD, "return_to": "/account/consents"}
    # no token, a wrong token, and a right token without the matching cookie (another browser)
    for data, session_cookies in (
        (form, True),
        ({**form, "csrf_token": "forged"}, True),
        ({**form, "csrf_token": token}, False),
    ):
        if session_cookies:
            response = await browser.post("/login", data)
        else:
            async with aiohttp.ClientSession() as stranger:
                response = await stranger.post(base_url + "/login", data=data, allow_redirects=False)
        assert response.status == 403
        assert not any(
            "tsp_idp_session" in v for k, v in response.headers.items() if k.lower() == "set-cookie"
        )
    ok = await browser.post("/login", {**form, "csrf_token": token})
    assert ok.status == 303


async def test_brute_force_is_throttled_per_user(browser: Browser, db: asyncpg.Connection) -> None:
    dave = User("local|dave", "dave", "dave@example.com", "Dave", ("employee",), hash_secret("dave-password"))
    await store.upsert_user(db, dave)
    statuses = [(await browser.login("dave", password=f"guess-{i}")).status for i in range(5)]
    assert statuses == [401] * 5
    blocked = await browser.login("dave", password="dave-password")
    assert blocked.status == 429, "the right password is refused while the account is throttled"
    assert int(blocked.headers["Retry-After"]) > 0
    assert "Too many failed attempts" in browser.last_html
    # another user from the same address is not locked out by dave's failures
    other = await browser.login("bob")
    assert other.status == 303


async def test_unsupported_token_requests_are_clear_4xx(http: aiohttp.ClientSession, base_url: str) -> None:
    async with http.post(base_url + "/oauth/token", data={"grant_type": "password"}) as r:
        assert r.status == 400
        assert (await r.json())["error"] == "unsupported_grant_type"
    async with http.post(base_url + "/oauth/token", data=b"x", headers={"Content-Type": "text/plain"}) as r:
        assert r.status == 400
        assert (await r.json())["error"] == "invalid_request"
    async with http.post(
        base_url + "/oauth/token", data=b"{", headers={"Content-Type": "application/json"}
    ) as r:
        assert r.status == 400
    async with http.get(base_url + "/userinfo") as r:
        assert r.status == 401
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    async with http.get(base_url + "/userinfo", headers={"Authorization": "Bearer not.a.jwt"}) as r:
        assert r.status == 401
        assert (await r.json())["error"] == "invalid_token"


@pytest.mark.parametrize(
    "query",
    [
        {"client_id": "timesheets-spa", "response_type": "code", "redirect_uri": 'https://evil.example/"x'},
        {"client_id": "timesheets-spa", "response_type": "code", "redirect_uri": "https://evil.example/é"},
        {"client_id": "timesheets-spa", "response_type": "code", "redirect_uri": f"{SPA}/", "scope": 'a"b'},
        {"client_id": "timesheets-spa", "response_type": "code", "redirect_uri": f"{SPA}/", "scope": "é"},
        {"client_id": "timesheets-spa", "response_type": 'bogus"', "redirect_uri": f"{SPA}/"},
        {"client_id": "\\", "response_type": "code"},
        {},
    ],
)
async def test_malformed_authorization_requests_are_400_pages(
    browser: Browser, query: dict[str, str]
) -> None:
    response = await browser.get("/authorize?" + urlencode(query))
    assert response.status == 400
    assert "Location" not in response.headers
    assert "invalid_" in browser.last_html or "unsupported_" in browser.last_html


@pytest.mark.parametrize(
    "data",
    [
        {"grant_type": '"'},
        {"grant_type": "authorization_code", "client_id": "é"},
        {
            "grant_type": "authorization_code",
            "client_id": "timesheets-spa",
            "code": '"é',
            "code_verifier": "\\",
        },
        {"grant_type": "client_credentials", "client_id": "timesheets-batch", "client_secret": "é"},
        {"grant_type": "client_credentials", "scope": "é"},
        {"grant_type": "refresh_token", "client_id": "timesheets-spa", "refresh_token": "é"},
    ],
)
async def test_malformed_token_requests_are_4xx_json(
    http: aiohttp.ClientSession, base_url: str, data: dict[str, str]
) -> None:
    async with http.post(base_url + "/oauth/token", data=data) as response:
        assert 400 <= response.status < 500
        assert (await response.json())["error"]


async def test_nul_characters_never_reach_the_database(
    browser: Browser, http: aiohttp.ClientSession, base_url: str
) -> None:
    page = await browser.get("/login?" + urlencode({"return_to": "/authorize?client_id=%00"}))
    assert page.status == 200
    for username in ("\x00", "al\x00ice"):
        response = await browser.login(username, password="x")
        assert response.status == 401
    response = await browser.get("/authorize?" + urlencode(code_request(pkce_pair()[1], nonce="\x00")))
    assert response.status == 400
    async with http.post(
        base_url + "/oauth/token", data={"grant_type": "authorization_code", "code": "\x00"}
    ) as r:
        assert r.status == 400
    response = await browser.get("/v2/logout?" + urlencode({"client_id": "\x00", "returnTo": f"{SPA}/"}))
    assert response.status == 400


@pytest.mark.parametrize(
    ("parameter", "error"),
    [("request", "request_not_supported"), ("request_uri", "request_uri_not_supported")],
)
async def test_a_request_object_is_refused_never_ignored(
    browser: Browser, parameter: str, error: str
) -> None:
    """OIDC Core §6: a provider without request objects answers with their error. Ignoring one would
    serve the outer parameters, which the client may have meant to be overridden (a narrower scope, a
    max_age) by the signed object."""
    await browser.login("alice")
    request = code_request(pkce_pair()[1], state="s1", **{parameter: "eyJhbGciOiJub25lIn0.e30."})
    response = await browser.get("/authorize?" + urlencode(request))
    assert response.status == 302
    answer = params_of(response.headers["Location"])
    assert answer["error"] == error
    assert answer["state"] == "s1"
    assert "code" not in answer
