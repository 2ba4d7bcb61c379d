"""The OAuth 2.0 Security BCP (RFC 9700) and the browser-based-apps BCP, attack by attack, where no
other test performs it (the checklist in the README names those that do). Each test plays the
attacker against the real provider process over loopback."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
import asyncpg
import pytest

from testkit.clihost import CliHost
from testkit.oidc import (
    API,
    SPA,
    Browser,
    code_request,
    hidden_field,
    hosted_cli,
    params_of,
    pkce_pair,
    refresh,
    run_cli,
    sign_in_tokens,
)

pytestmark = pytest.mark.usefixtures("identity_service")

CALLBACK = f"{SPA}/callback"


def challenge_of(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


# --- redirect URIs: exact string matching (RFC 9700 §2.1, §4.1.3) --------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        "HTTP://localhost:8080/callback",  # scheme case
        "http://LOCALHOST:8080/callback",  # host case
        "http://localhost:8080/CALLBACK",  # path case
        "http://localhost:80/callback",  # another port
        "http://localhost:8081/callback",
        "http://localhost/callback",  # no port
        "http://127.0.0.1:8080/callback",  # the loopback address for the registered name
        "http://[::1]:8080/callback",
        "https://localhost:8080/callback",  # another scheme
        "http://localhost:8080/callback/",  # a path suffix
        "http://localhost:8080/callback/evil",
        "http://localhost:8080/callback.evil.example",
        "http://localhost:8080/callback?next=https://evil.example/",  # a query added
        "http://localhost:8080/callback#x",  # a fragment
        "http://localhost:8080/callback%2F..%2Fevil",  # percent-encoding
        "http://localhost:8080/%63allback",
        "http://localhost:8080//callback",
        "http://localhost:8080/./callback",
        "http://evil.example@localhost:8080/callback",  # userinfo
        "http://localhost:8080@evil.example/callback",
        "http://localhost:8080\\@evil.example/callback",
        "http://localhost.:8080/callback",  # a trailing dot
        "http://xn--localhst-t3a:8080/callback",  # an IDN look-alike
        "http://localhost:8080/callback ",  # a space
        " http://localhost:8080/callback",
        "//localhost:8080/callback",  # scheme-relative
        "/callback",
    ],
)
async def test_a_redirect_uri_matches_only_exactly_and_is_never_redirected_to(
    browser: Browser, uri: str
) -> None:
    """RFC 9700 §4.1.3: exact string comparison; the answer is a page here, not a redirect to
    ``uri`` (no open redirector, §4.11), even for a request with a second error (no PKCE)."""
    await browser.login("alice")
    for challenge in (pkce_pair()[1], None):
        response = await browser.get("/authorize?" + urlencode(code_request(challenge, redirect_uri=uri)))
        assert response.status == 400, (uri, response.headers.get("Location"))
        assert "Location" not in response.headers
        assert response.headers["Content-Type"].startswith("text/html")


@pytest.mark.parametrize(
    "changes",
    [
        {"response_type": "bogus"},
        {"response_type": "token"},
        {"scope": "openid not-a-scope"},
        {"prompt": "none"},
        {"response_mode": "nonsense"},
    ],
)
async def test_errors_with_an_unregistered_redirect_uri_are_pages(
    browser: Browser, changes: dict[str, str]
) -> None:
    """RFC 9700 §4.11.2 / RFC 6749 §4.1.2.1: whatever else is wrong, an unregistered URI is never
    redirected to (no session here: ``prompt=none`` would otherwise be ``login_required`` there)."""
    request = code_request(pkce_pair()[1], redirect_uri="https://evil.example/cb", **changes)
    response = await browser.get("/authorize?" + urlencode(request))
    assert response.status == 400, response.headers.get("Location")
    assert "Location" not in response.headers


# --- mix-up (RFC 9207, RFC 9700 §4.4) ---------------------------------------------------------------


async def test_discovery_announces_iss_in_authorization_responses(
    http: aiohttp.ClientSession, base_url: str, issuer: str
) -> None:
    async with http.get(base_url + "/.well-known/openid-configuration") as response:
        document = await response.json()
    assert document["issuer"] == issuer
    assert document["authorization_response_iss_parameter_supported"] is True


@pytest.mark.parametrize(
    "extra",
    [
        {},  # query
        {"response_mode": "fragment"},
        {"response_mode": "form_post"},
        {"response_mode": "web_message"},
    ],
)
async def test_every_authorization_response_names_the_issuer(
    browser: Browser, issuer: str, extra: dict[str, str]
) -> None:
    """RFC 9207 §2: ``iss`` in every authorization response — a code, and an error — in each
    response mode, so that a client talking to several servers sees which one answered."""
    await browser.login("alice")
    mode = extra.get("response_mode", "query")
    for challenge in (pkce_pair()[1], None):  # a code; an error (no PKCE)
        response = await browser.get("/authorize?" + urlencode(code_request(challenge, state="s1", **extra)))
        if mode in ("query", "fragment"):
            assert response.status == 302
            location = response.headers["Location"]
            answer = params_of(location)
            assert (urlsplit(location).fragment != "") == (mode == "fragment")
        else:
            assert response.status == 200
            html = browser.last_html
            if mode == "form_post":
                answer = {name: hidden_field(html, name) for name in ("iss", "state")}
            else:
                assert f'"iss": "{issuer}"' in html, html
                answer = {"iss": issuer, "state": "s1"}
        assert answer["iss"] == issuer, answer
        assert answer["state"] == "s1"


async def test_an_implicit_answer_names_the_issuer(browser: Browser, issuer: str) -> None:
    await browser.login("alice")
    request = {
        "response_type": "id_token token",
        "client_id": "timesheets-spa",
        "redirect_uri": f"{SPA}/",
        "scope": "openid",
        "nonce": "n-" + secrets.token_hex(4),
        "state": "s2",
        "audience": API,
    }
    response = await browser.get("/authorize?" + urlencode(request))
    answer = params_of(response.headers["Location"])
    assert "access_token" in answer
    assert answer["iss"] == issuer
    assert "refresh_token" not in answer  # never through the front channel (RFC 6749 §4.2.2)


# --- PKCE (RFC 9700 §2.1.1, §4.8) -------------------------------------------------------------------


async def redeem(http: aiohttp.ClientSession, base_url: str, **data: str) -> tuple[int, dict[str, Any]]:
    body = {"grant_type": "authorization_code", "client_id": "timesheets-spa", "redirect_uri": CALLBACK}
    async with http.post(base_url + "/oauth/token", data={**body, **data}) as response:
        return response.status, await response.json()


@pytest.mark.parametrize("length", [42, 129])
async def test_a_code_verifier_outside_43_to_128_characters_is_refused(
    browser: Browser, http: aiohttp.ClientSession, base_url: str, length: int
) -> None:
    """RFC 7636 §4.1: a verifier of 43 to 128 unreserved characters; a shorter one is guessable."""
    verifier = secrets.token_urlsafe(length)[:length]
    response = await browser.sign_in_and_authorize("alice", **code_request(challenge_of(verifier)))
    code = params_of(response.headers["Location"])["code"]
    status, body = await redeem(http, base_url, code=code, code_verifier=verifier)
    assert (status, body["error"]) == (400, "invalid_request")


@pytest.mark.parametrize("challenge", ["a" * 42, "a" * 129, "a" * 42 + "+"])
async def test_a_code_challenge_of_a_bad_shape_is_refused(browser: Browser, challenge: str) -> None:
    await browser.login("alice")
    response = await browser.get("/authorize?" + urlencode(code_request(challenge)))
    answer = params_of(response.headers["Location"])
    assert answer["error"] == "invalid_request"
    assert "code" not in answer


@pytest.fixture(scope="module")
def confidential_web_app(seeded: dict[str, str], cli_host: CliHost) -> tuple[str, str]:
    """A confidential client of the code flow (a server-side web app): PKCE is optional for it."""
    secret = secrets.token_urlsafe(32)
    result = hosted_cli(
        cli_host,
        {**seeded, "BCP_WEB_SECRET": secret},
        "add-client",
        "bcp-web-app",
        "--name",
        "BCP web app",
        "--confidential",
        "--first-party",
        "--grant-type",
        "authorization_code",
        "--redirect-uri",
        f"{SPA}/web/callback",
        "--scope",
        "openid",
        "--scope",
        "read:timesheets",
        "--secret-env",
        "BCP_WEB_SECRET",
    )
    assert result.returncode == 0, result.stderr
    return "bcp-web-app", secret


async def test_pkce_downgrade_is_refused_both_ways(
    browser: Browser, http: aiohttp.ClientSession, base_url: str, confidential_web_app: tuple[str, str]
) -> None:
    """RFC 9700 §4.8.2: a code issued without a challenge is not redeemed with a verifier (an
    attacker who stripped the challenge cannot pass the victim's verifier), and a code issued with
    one is not redeemed without it."""
    client_id, secret = confidential_web_app
    auth = {"Authorization": aiohttp.encode_basic_auth(client_id, secret)}

    async def code(challenge: str | None) -> str:
        request = code_request(challenge, client_id=client_id, redirect_uri=f"{SPA}/web/callback")
        request.pop("audience")
        response = await browser.sign_in_and_authorize("alice", **request)
        assert response.status == 302, browser.last_html
        return params_of(response.headers["Location"])["code"]

    async def exchange(code_value: str, **extra: str) -> tuple[int, dict[str, Any]]:
        data = {"grant_type": "authorization_code", "code": code_value, "redirect_uri": f"{SPA}/web/callback"}
        async with http.post(base_url + "/oauth/token", data={**data, **extra}, headers=auth) as r:
            return r.status, await r.json()

    status, body = await exchange(await code(None), code_verifier=pkce_pair()[0])
    assert (status, body["error"]) == (400, "invalid_request"), body
    verifier, challenge = pkce_pair()
    status, body = await exchange(await code(challenge))
    assert (status, body["error"]) == (400, "invalid_request"), body
    status, body = await exchange(await code(challenge), code_verifier=verifier)
    assert status == 200, body


async def test_a_confidential_clients_code_is_not_redeemed_without_its_secret(
    browser: Browser, http: aiohttp.ClientSession, base_url: str, confidential_web_app: tuple[str, str]
) -> None:
    """RFC 9700 §2.5, RFC 6749 §4.1.3: a confidential client authenticates at the token endpoint;
    naming its ``client_id`` as a public client does (method ``none``) redeems nothing, and the code
    stays the client's to redeem."""
    client_id, secret = confidential_web_app
    verifier, challenge = pkce_pair()
    request = code_request(challenge, client_id=client_id, redirect_uri=f"{SPA}/web/callback")
    request.pop("audience")
    response = await browser.sign_in_and_authorize("alice", **request)
    code = params_of(response.headers["Location"])["code"]
    data = {
        "grant_type": "authorization_code",
        "client_id": client_id,
        "code": code,
        "code_verifier": verifier,
        "redirect_uri": f"{SPA}/web/callback",
    }
    async with http.post(base_url + "/oauth/token", data=data) as r:
        assert r.status == 401
        assert (await r.json())["error"] == "invalid_client"
    auth = {"Authorization": aiohttp.encode_basic_auth(client_id, secret)}
    async with http.post(base_url + "/oauth/token", data=data, headers=auth) as r:
        assert r.status == 200, await r.text()


# --- grants the BCP rules out (RFC 9700 §2.4, §2.1.2) -----------------------------------------------


async def test_the_password_grant_is_refused_even_with_right_credentials(
    http: aiohttp.ClientSession, base_url: str
) -> None:
    from testkit.oidc import DEMO_PASSWORD

    data = {
        "grant_type": "password",
        "client_id": "timesheets-spa",
        "username": "alice",
        "password": DEMO_PASSWORD,
        "scope": "openid read:timesheets",
    }
    async with http.post(base_url + "/oauth/token", data=data) as r:
        assert r.status == 400
        assert (await r.json())["error"] == "unsupported_grant_type"


@pytest.mark.parametrize("response_type", ["token", "code token", "code id_token", "code id_token token"])
async def test_response_types_that_put_an_access_token_alone_or_beside_a_code_are_refused(
    browser: Browser, response_type: str
) -> None:
    """``token`` (OAuth's implicit grant without an ID token binding it to a nonce) and the hybrid
    types are not offered; nothing is issued."""
    await browser.login("alice")
    request = code_request(pkce_pair()[1], response_type=response_type, nonce="n1", redirect_uri=f"{SPA}/")
    response = await browser.get("/authorize?" + urlencode(request))
    assert response.status == 302
    answer = params_of(response.headers["Location"])
    assert answer["error"] == "unsupported_response_type", answer
    assert "access_token" not in answer
    assert "code" not in answer


# --- refresh tokens and scopes (RFC 9700 §2.2.2, §4.14) -----------------------------------------


async def test_a_refresh_cannot_widen_the_scope(
    browser: Browser, http: aiohttp.ClientSession, base_url: str
) -> None:
    """RFC 6749 §6: a refresh may narrow, never widen, even to scopes the client and the user may
    have; the refused request leaves the refresh token usable."""
    body = await sign_in_tokens(browser, http, base_url, scope="openid offline_access read:timesheets")
    wider = "openid offline_access read:timesheets create:timesheets"
    status, refused = await refresh(http, base_url, body["refresh_token"], scope=wider)
    assert (status, refused["error"]) == (400, "invalid_scope"), refused
    status, refreshed = await refresh(http, base_url, body["refresh_token"])
    assert status == 200, refreshed
    assert refreshed["scope"] == "openid offline_access read:timesheets"


async def test_rotation_never_extends_a_refresh_family_beyond_its_absolute_expiry(
    browser: Browser, http: aiohttp.ClientSession, base_url: str, db: asyncpg.Connection
) -> None:
    """Browser-based-apps BCP (refresh token rotation): a family ends at its absolute expiry however
    often it is rotated, so a stolen family kept alive by its thief ends too; once past it, refused."""
    body = await sign_in_tokens(browser, http, base_url, scope="openid offline_access read:timesheets")
    first = hashlib.sha256(body["refresh_token"].encode()).digest()
    family_id = await db.fetchval("SELECT family_id FROM refresh_tokens WHERE token_hash = $1", first)
    await db.execute(
        "UPDATE refresh_tokens SET family_expires_at = now() + interval '90 seconds' WHERE family_id = $1",
        family_id,
    )
    token = body["refresh_token"]
    for _ in range(3):
        status, rotated = await refresh(http, base_url, token)
        assert status == 200, rotated
        token = rotated["refresh_token"]
    row = await db.fetchrow(
        "SELECT expires_at, family_expires_at, family_expires_at <= now() + interval '90 seconds' AS kept"
        " FROM refresh_tokens WHERE token_hash = $1",
        hashlib.sha256(token.encode()).digest(),
    )
    assert row is not None
    assert row["kept"], row
    assert row["expires_at"] <= row["family_expires_at"]
    await db.execute(
        "UPDATE refresh_tokens SET family_expires_at = now(), expires_at = now() WHERE family_id = $1",
        family_id,
    )
    status, refused = await refresh(http, base_url, token)
    assert (status, refused["error"]) == (400, "invalid_grant")


# --- response headers (RFC 9700 §4.16, §4.2.4; RFC 6749 §5.1) --------------------------------------


async def test_token_responses_are_not_stored(
    browser: Browser, http: aiohttp.ClientSession, base_url: str
) -> None:
    verifier, challenge = pkce_pair()
    response = await browser.sign_in_and_authorize("alice", **code_request(challenge))
    code = params_of(response.headers["Location"])["code"]
    data = {
        "grant_type": "authorization_code",
        "client_id": "timesheets-spa",
        "redirect_uri": CALLBACK,
        "code": code,
        "code_verifier": verifier,
    }
    async with http.post(base_url + "/oauth/token", data=data, headers={"Origin": SPA}) as r:
        assert r.status == 200
        assert r.headers["Cache-Control"] == "no-store"
        assert r.headers["Pragma"] == "no-cache"
        # CORS for the SPA, never with credentials (cookies) and never a wildcard
        assert r.headers["Access-Control-Allow-Origin"] == SPA
        assert "Access-Control-Allow-Credentials" not in r.headers


async def test_cors_never_allows_credentials_or_a_wildcard(
    http: aiohttp.ClientSession, base_url: str
) -> None:
    for path in ("/oauth/token", "/oauth/revoke", "/userinfo"):
        for origin in (SPA, "https://evil.example", "null"):
            preflight = {"Origin": origin, "Access-Control-Request-Method": "POST"}
            async with http.options(base_url + path, headers=preflight) as r:
                assert "Access-Control-Allow-Credentials" not in r.headers, (path, origin)
                assert r.headers.get("Access-Control-Allow-Origin") in (None, SPA), (path, origin)
                assert (r.headers.get("Access-Control-Allow-Origin") == SPA) == (origin == SPA)


async def test_every_page_with_a_form_or_a_code_is_unframable_unreferred_and_uncached(
    browser: Browser,
) -> None:
    """Clickjacking (RFC 9700 §4.16), the code or state in the page's URL leaking through Referer
    (§4.2.4), and a cached copy of a page holding a code: the sign-in, consent, logout question,
    connected-apps and form_post pages, and the error page."""
    pages: dict[str, aiohttp.ClientResponse] = {}
    pages["sign-in"] = await browser.get("/login?" + urlencode({"return_to": "/authorize?state=s"}))
    await browser.login("alice")
    pages["consent"] = await browser.get(
        "/authorize?"
        + urlencode(
            code_request(
                pkce_pair()[1],
                client_id="partner-spa",
                redirect_uri=f"{SPA}/partner/callback",
                prompt="consent",
            )
        )
    )
    assert "csrf_token" in browser.last_html
    pages["form_post"] = await browser.get(
        "/authorize?" + urlencode(code_request(pkce_pair()[1], response_mode="form_post"))
    )
    assert 'name="code"' in browser.last_html
    pages["connected apps"] = await browser.get("/account/consents")
    pages["logout question"] = await browser.get("/oidc/logout?" + urlencode({"client_id": "timesheets-spa"}))
    assert "csrf_token" in browser.last_html
    pages["error"] = await browser.get("/authorize?client_id=nobody")
    for name, response in pages.items():
        assert response.headers["X-Frame-Options"] == "DENY", name
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"], name
        assert response.headers["Referrer-Policy"] == "no-referrer", name
        assert response.headers["Cache-Control"] == "no-store", name


async def test_redirects_carrying_a_code_are_not_stored(browser: Browser) -> None:
    await browser.login("alice")
    response = await browser.get("/authorize?" + urlencode(code_request(pkce_pair()[1])))
    assert "code" in params_of(response.headers["Location"])
    assert response.headers["Cache-Control"] == "no-store"


async def test_the_consent_form_is_answered_with_a_get_redirect_never_a_307(browser: Browser) -> None:
    """RFC 9700 §4.12: a 307 after a form post makes the browser post the form again to the client
    (the sign-in's 303 is checked by test_identity_refusals.py::test_csrf_on_the_sign_in_form)."""
    await browser.login("alice")
    request = code_request(
        pkce_pair()[1], client_id="partner-spa", redirect_uri=f"{SPA}/partner/callback", prompt="consent"
    )
    await browser.get("/authorize?" + urlencode(request))
    form = {
        "csrf_token": hidden_field(browser.last_html, "csrf_token"),
        "request": hidden_field(browser.last_html, "request"),
        "decision": "allow",
    }
    answer = await browser.post("/authorize/decision", form)
    assert answer.status in (302, 303)
    assert "code" in params_of(answer.headers["Location"])


# --- Host-header poisoning (RFC 9700 §4.1, issuer) -------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Host": "evil.example"},
        {"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"},
        {"Forwarded": "host=evil.example;proto=https"},
    ],
)
async def test_the_host_header_never_moves_the_issuer_or_its_urls(
    http: aiohttp.ClientSession, base_url: str, issuer: str, headers: dict[str, str], browser: Browser
) -> None:
    async with http.get(base_url + "/.well-known/openid-configuration", headers=headers) as r:
        text = await r.text()
        document = await r.json(content_type=None)
    assert "evil.example" not in text
    assert document["issuer"] == issuer
    # the sign-in redirect and the code's redirect are the provider's own path and the registered URI
    response = await browser.get("/authorize?" + urlencode(code_request(pkce_pair()[1])), headers=headers)
    assert response.headers["Location"].startswith("/login?")
    await browser.login("alice")
    response = await browser.get("/authorize?" + urlencode(code_request(pkce_pair()[1])), headers=headers)
    location = response.headers["Location"]
    assert location.startswith(CALLBACK + "?")
    assert "evil.example" not in location
    assert params_of(location)["iss"] == issuer


# --- state and nonce ---------------------------------------------------------------------------------


async def test_state_comes_back_byte_for_byte_and_a_nonce_is_not_redeemed_twice(
    browser: Browser, http: aiohttp.ClientSession, base_url: str
) -> None:
    state = "a b&c=d#e?f/é" + secrets.token_hex(4)
    await browser.login("alice")
    response = await browser.get("/authorize?" + urlencode(code_request(pkce_pair()[1], state=state)))
    assert params_of(response.headers["Location"])["state"] == state
    # OIDC Core §3.1.2.1 / RFC 9700 §2.1.1: a nonce already used by a code of this client is refused
    nonce = "n-" + secrets.token_hex(6)
    body = await sign_in_tokens(browser, http, base_url, nonce=nonce)
    assert body["id_token"]
    response = await browser.get("/authorize?" + urlencode(code_request(pkce_pair()[1], nonce=nonce)))
    answer = params_of(response.headers["Location"])
    assert "code" not in answer, answer
    assert answer["error"] == "invalid_request"


# --- CSRF on the consent forms (the sign-in's: test_identity_refusals.py; logout's:
# test_logout_confirmation.py) -------------------------------------------------------------------


async def test_forged_consent_forms_are_refused_and_change_nothing(browser: Browser) -> None:
    """Neither consent decision nor its withdrawal is taken without this site's token for that very
    form: none, a forged one, or the other form's (a token is bound to its purpose)."""
    await browser.login("alice")
    request = code_request(
        pkce_pair()[1], client_id="partner-spa", redirect_uri=f"{SPA}/partner/callback", prompt="consent"
    )
    await browser.get("/authorize?" + urlencode(request))
    consent_token = hidden_field(browser.last_html, "csrf_token")
    consent = {"request": hidden_field(browser.last_html, "request"), "decision": "allow"}
    allowed = await browser.post("/authorize/decision", {**consent, "csrf_token": consent_token})
    assert "code" in params_of(allowed.headers["Location"])
    await browser.get("/account/consents")
    revoke_token = hidden_field(browser.last_html, "csrf_token")
    for token in ("", "forged", revoke_token):
        refused = await browser.post("/authorize/decision", {**consent, "csrf_token": token})
        assert refused.status == 403, token
        assert "Location" not in refused.headers
    for token in ("", "forged", consent_token):
        refused = await browser.post(
            "/account/consents/revoke", {"csrf_token": token, "client_id": "partner-spa"}
        )
        assert refused.status == 403, token
    silent = {**request, "prompt": "none"}
    response = await browser.get("/authorize?" + urlencode(silent))
    assert "code" in params_of(response.headers["Location"]), "the consent was withdrawn"
    done = await browser.post(
        "/account/consents/revoke", {"csrf_token": revoke_token, "client_id": "partner-spa"}
    )
    assert done.status == 303
    response = await browser.get("/authorize?" + urlencode(silent))
    assert params_of(response.headers["Location"])["error"] == "consent_required"


async def test_userinfo_takes_the_access_token_only_from_the_authorization_header(
    browser: Browser, http: aiohttp.ClientSession, base_url: str
) -> None:
    """RFC 9700 §4.3.2 (a token in a URL leaks through logs, history and Referer) and §2.5: neither
    the query (RFC 6750 §2.3) nor a form body (§2.2) carries the token here."""
    token = (await sign_in_tokens(browser, http, base_url))["access_token"]
    async with http.get(base_url + "/userinfo?" + urlencode({"access_token": token})) as r:
        assert r.status == 401
    async with http.post(base_url + "/userinfo", data={"access_token": token}) as r:
        assert r.status == 401
    async with http.get(base_url + "/userinfo", headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status == 200


# --- races (RFC 9700 §4.5, §4.14.2: "single use" must hold for concurrent presentations) ----------


async def test_a_code_redeemed_concurrently_issues_once_and_then_nothing_stays_usable(
    browser: Browser, http: aiohttp.ClientSession, base_url: str
) -> None:
    verifier, challenge = pkce_pair()
    response = await browser.sign_in_and_authorize("alice", **code_request(challenge))
    code = params_of(response.headers["Location"])["code"]
    answers = await asyncio.gather(
        *(redeem(http, base_url, code=code, code_verifier=verifier) for _ in range(6))
    )
    issued = [body for status, body in answers if status == 200]
    assert len(issued) == 1, answers
    assert all(body["error"] == "invalid_grant" for status, body in answers if status != 200)
    # the others were replays: what the one success issued is revoked
    token = issued[0]["access_token"]
    async with http.get(base_url + "/userinfo", headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status == 401


async def test_a_refresh_token_presented_concurrently_issues_once_and_ends_the_family(
    browser: Browser, http: aiohttp.ClientSession, base_url: str
) -> None:
    body = await sign_in_tokens(browser, http, base_url, scope="openid offline_access read:timesheets")
    answers = await asyncio.gather(*(refresh(http, base_url, body["refresh_token"]) for _ in range(6)))
    issued = [answer for status, answer in answers if status == 200]
    assert len(issued) == 1, answers
    status, after = await refresh(http, base_url, issued[0]["refresh_token"])
    assert (status, after["error"]) == (400, "invalid_grant")


# --- registration: no authorization response over plain HTTP (RFC 9700 §2.6) ------------------------


@pytest.mark.parametrize(
    ("option", "uri"),
    [
        ("--redirect-uri", "http://app.example.com/callback"),
        ("--redirect-uri", "http://localhost.evil.example/callback"),  # only starts like loopback
        ("--redirect-uri", "http://127.0.0.1.nip.io/callback"),
        ("--redirect-uri", "http://10.0.0.7/callback"),
        ("--logout-uri", "http://app.example.com/"),
        ("--web-origin", "http://app.example.com"),
    ],
)
def test_a_plain_http_uri_off_the_loopback_interface_is_not_registered(
    seeded: dict[str, str], option: str, uri: str, cli_host: CliHost
) -> None:
    """RFC 9700 §2.6: authorization responses (a code, tokens) never travel unencrypted, so an http
    redirect URI is for the loopback interface only; the same for logout URLs and web origins (the
    pages that read tokens). The first case runs as a real ``python -m identity`` (the refusal's exit
    2 and stderr as the process gives them), the others in the command host."""
    args = [
        "add-client",
        "bcp-plain-http",
        "--name",
        "Plain",
        "--public",
        "--redirect-uri",
        "https://app.example.com/cb",
    ]
    real = (option, uri) == ("--redirect-uri", "http://app.example.com/callback")
    result = run_cli(seeded, *args, option, uri) if real else hosted_cli(cli_host, seeded, *args, option, uri)
    assert result.returncode == 2, result.stdout
    assert "https" in result.stderr
    assert "IDENTITY_ALLOW_INSECURE_HTTP" in result.stderr


@pytest.mark.parametrize(
    "uri",
    [
        "https://app.example.com/callback",
        "http://localhost:8080/cb",
        "http://127.0.0.1:8080/cb",
        "http://[::1]:8080/cb",
    ],
)
def test_https_and_loopback_uris_are_registered(seeded: dict[str, str], uri: str, cli_host: CliHost) -> None:
    result = hosted_cli(
        cli_host,
        seeded,
        "add-client",
        "bcp-loopback",
        "--name",
        "Loopback",
        "--public",
        "--redirect-uri",
        uri,
    )
    assert result.returncode == 0, result.stderr


def test_a_plain_http_deployment_may_register_plain_http_uris(
    seeded: dict[str, str], cli_host: CliHost
) -> None:
    """As for the issuer: ``IDENTITY_ALLOW_INSECURE_HTTP`` is the one switch of a plain-HTTP test
    deployment."""
    env = {**seeded, "IDENTITY_ALLOW_INSECURE_HTTP": "true"}
    args = [
        "add-client",
        "bcp-plain-ok",
        "--name",
        "Plain",
        "--public",
        "--redirect-uri",
        "http://app.test/cb",
    ]
    result = hosted_cli(cli_host, env, *args)
    assert result.returncode == 0, result.stderr
