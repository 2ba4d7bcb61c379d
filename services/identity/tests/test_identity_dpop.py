"""DPoP (RFC 9449) at the bundled provider: bound tokens from the code, refresh and client-credentials
grants; dpop_jkt binding the code; a public client's refresh tokens bound to the key; clients that
must use DPoP; each proof refusal at the token endpoint; /userinfo with DPoP; discovery; nonces."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import asyncpg
import jwt
import pytest
from identity import store
from identity.models import Client

from testkit.dpop import DpopKey
from testkit.oidc import BATCH_SECRET, SPA, Browser, code_request, params_of, pkce_pair

from .conftest import own_provider

pytestmark = pytest.mark.usefixtures("identity_service")


async def token_request(
    http: aiohttp.ClientSession, base_url: str, data: dict[str, str], proof: str | list[str] | None = None
) -> tuple[int, dict[str, Any], Any]:
    headers: list[tuple[str, str]] = [
        ("DPoP", value) for value in ([proof] if isinstance(proof, str) else proof or [])
    ]
    async with http.post(base_url + "/oauth/token", data=data, headers=headers) as response:
        return response.status, await response.json(), response.headers


async def authorize_code(browser: Browser, **params: str) -> tuple[str, str]:
    verifier, challenge = pkce_pair()
    request = code_request(challenge, scope="openid offline_access read:timesheets", **params)
    response = await browser.sign_in_and_authorize("alice", **request)
    assert response.status == 302, browser.last_html
    return params_of(response.headers["Location"])["code"], verifier


def code_grant(code: str, verifier: str) -> dict[str, str]:
    return {
        "grant_type": "authorization_code",
        "client_id": "timesheets-spa",
        "code": code,
        "code_verifier": verifier,
        "redirect_uri": f"{SPA}/callback",
    }


def claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


async def test_discovery_lists_the_proof_algorithms(http: aiohttp.ClientSession, base_url: str) -> None:
    async with http.get(base_url + "/.well-known/openid-configuration") as response:
        document = await response.json()
    assert document["dpop_signing_alg_values_supported"] == ["ES256", "ES384", "RS256", "PS256", "EdDSA"]


async def test_code_exchange_with_a_proof_binds_the_token_and_the_refresh_token(
    browser: Browser, http: aiohttp.ClientSession, base_url: str
) -> None:
    key = DpopKey()
    token_url = base_url + "/oauth/token"
    code, verifier = await authorize_code(browser)
    status, body, _ = await token_request(
        http, base_url, code_grant(code, verifier), key.proof("POST", token_url)
    )
    assert status == 200, body
    assert body["token_type"] == "DPoP"
    assert claims(body["access_token"])["cnf"] == {"jkt": key.jkt}

    refresh = {
        "grant_type": "refresh_token",
        "client_id": "timesheets-spa",
        "refresh_token": body["refresh_token"],
    }
    # without a proof, and with another key's: refused, and the refresh token stays usable
    status, error, _ = await token_request(http, base_url, refresh)
    assert status == 400
    assert error["error"] == "invalid_dpop_proof"
    status, error, _ = await token_request(http, base_url, refresh, DpopKey().proof("POST", token_url))
    assert status == 400
    assert error["error"] == "invalid_grant"
    assert "another DPoP key" in error["error_description"]
    status, renewed, _ = await token_request(http, base_url, refresh, key.proof("POST", token_url))
    assert status == 200, renewed
    assert renewed["token_type"] == "DPoP"
    assert claims(renewed["access_token"])["cnf"] == {"jkt": key.jkt}
    # the rotated token is bound too
    rotated = {**refresh, "refresh_token": renewed["refresh_token"]}
    status, error, _ = await token_request(http, base_url, rotated, DpopKey().proof("POST", token_url))
    assert status == 400
    assert error["error"] == "invalid_grant"


async def test_without_a_proof_tokens_stay_bearer(
    browser: Browser, http: aiohttp.ClientSession, base_url: str
) -> None:
    code, verifier = await authorize_code(browser)
    status, body, _ = await token_request(http, base_url, code_grant(code, verifier))
    assert status == 200, body
    assert body["token_type"] == "Bearer"
    assert "cnf" not in claims(body["access_token"])


async def test_dpop_jkt_binds_the_code_to_the_key(
    browser: Browser, http: aiohttp.ClientSession, base_url: str, db: asyncpg.Connection
) -> None:
    key = DpopKey()
    token_url = base_url + "/oauth/token"
    code, verifier = await authorize_code(browser, dpop_jkt=key.jkt)
    grant = code_grant(code, verifier)
    status, error, _ = await token_request(http, base_url, grant)  # no proof: refused, code left unused
    assert status == 400
    assert error["error"] == "invalid_dpop_proof"
    status, error, _ = await token_request(http, base_url, grant, DpopKey().proof("POST", token_url))
    assert status == 400
    assert error["error"] == "invalid_grant"
    status, body, _ = await token_request(http, base_url, grant, key.proof("POST", token_url))
    assert status == 200, body
    assert claims(body["access_token"])["cnf"] == {"jkt": key.jkt}
    # both refusals are on their way to the audit trail: in the provider's outbox (no audit service
    # runs here), anonymous, with nothing of the code in them
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        records = [
            json.loads(row[0])
            for row in await db.fetch(
                "SELECT payload::text FROM outbox WHERE payload->'details'->>'reason' = 'dpop_binding_code'"
            )
        ]
        if sum(record["details"]["count"] for record in records) >= 2:
            break
        assert asyncio.get_running_loop().time() < deadline, records
        await asyncio.sleep(0.1)
    for record in records:
        assert record["action"] == "access.denied"
        assert record["source"] == "identity"
        assert record["actor"]["kind"] == "anonymous"
        assert (record["details"]["status"], record["details"]["route"]) == (400, "/oauth/token")
        assert code not in json.dumps(record)


async def test_a_malformed_dpop_jkt_is_refused_at_authorize(browser: Browser) -> None:
    _, challenge = pkce_pair()
    response = await browser.sign_in_and_authorize(
        "alice", **code_request(challenge, dpop_jkt="not-a-thumbprint")
    )
    assert response.status == 302
    assert params_of(response.headers["Location"])["error"] == "invalid_request"


async def test_client_credentials_with_a_proof(http: aiohttp.ClientSession, base_url: str) -> None:
    key = DpopKey()
    data = {
        "grant_type": "client_credentials",
        "client_id": "timesheets-batch",
        "client_secret": BATCH_SECRET,
        "audience": "https://timesheets.abc.example/api",
    }
    status, body, _ = await token_request(http, base_url, data, key.proof("POST", base_url + "/oauth/token"))
    assert status == 200, body
    assert body["token_type"] == "DPoP"
    assert claims(body["access_token"])["cnf"] == {"jkt": key.jkt}


async def test_a_client_registered_for_dpop_must_send_proofs(
    http: aiohttp.ClientSession, base_url: str, db: asyncpg.Connection
) -> None:
    await store.upsert_client(
        db,
        Client(
            client_id="dpop-only",
            name="DPoP only",
            first_party=True,
            secret_hash=None,
            redirect_uris=(f"{SPA}/callback",),
            post_logout_redirect_uris=(),
            web_origins=(),
            grant_types=("authorization_code", "refresh_token"),
            response_types=("code",),
            allowed_scopes=("openid", "read:timesheets"),
            dpop_bound_access_tokens=True,
        ),
    )
    data = {
        "grant_type": "authorization_code",
        "client_id": "dpop-only",
        "code": "x",
        "code_verifier": "y" * 43,
        "redirect_uri": f"{SPA}/callback",
    }
    status, error, _ = await token_request(http, base_url, data)
    assert status == 400
    assert error["error"] == "invalid_dpop_proof"
    assert "must send a DPoP proof" in error["error_description"]


@pytest.mark.parametrize(
    ("change", "reason_text"),
    [
        ({"htm": "GET"}, "method"),
        ({"htu": "http://elsewhere.example/oauth/token"}, "URL"),
        ({"iat": 1}, "too old"),
        ({"typ": "JWT"}, "typ"),
        ({"replay": True}, "used before"),
        ({"twice": True}, "exactly one"),
    ],
)
async def test_each_bad_proof_is_refused_before_the_code_is_used(
    browser: Browser, http: aiohttp.ClientSession, base_url: str, change: dict[str, Any], reason_text: str
) -> None:
    key = DpopKey()
    token_url = base_url + "/oauth/token"
    code, verifier = await authorize_code(browser)
    headers = {"typ": change["typ"]} if "typ" in change else None
    extra = {name: value for name, value in change.items() if name in ("htm", "htu", "iat")}
    proof: str | list[str] = key.proof("POST", token_url, headers=headers, **extra)
    if "replay" in change:
        used = key.proof("POST", token_url)
        status, _, _ = await token_request(
            http,
            base_url,
            {"grant_type": "refresh_token", "client_id": "timesheets-spa", "refresh_token": "x"},
            used,
        )
        assert status == 400
        proof = used
    if "twice" in change:
        proof = [key.proof("POST", token_url), key.proof("POST", token_url)]
    status, error, _ = await token_request(http, base_url, code_grant(code, verifier), proof)
    assert status == 400, error
    assert error["error"] == "invalid_dpop_proof"
    assert reason_text in error["error_description"]
    # the code was not used up: a good proof still redeems it
    status, body, _ = await token_request(
        http, base_url, code_grant(code, verifier), key.proof("POST", token_url)
    )
    assert status == 200, body


async def test_userinfo_takes_a_bound_token_only_with_its_proof(
    browser: Browser, http: aiohttp.ClientSession, base_url: str
) -> None:
    key = DpopKey()
    token_url, userinfo = base_url + "/oauth/token", base_url + "/userinfo"
    code, verifier = await authorize_code(browser)
    _, body, _ = await token_request(http, base_url, code_grant(code, verifier), key.proof("POST", token_url))
    token = body["access_token"]
    async with http.get(userinfo, headers={"Authorization": f"Bearer {token}"}) as response:
        assert response.status == 401
        assert "DPoP-bound" in (await response.json())["error_description"]
    stolen = {"Authorization": f"DPoP {token}", "DPoP": DpopKey().proof("GET", userinfo, access_token=token)}
    async with http.get(userinfo, headers=stolen) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("DPoP ")
    good = {"Authorization": f"DPoP {token}", "DPoP": key.proof("GET", userinfo, access_token=token)}
    async with http.get(userinfo, headers=good) as response:
        assert response.status == 200
        assert (await response.json())["sub"] == "local|alice"


async def test_nonces_use_dpop_nonce_then_the_retry_passes(
    seeded: dict[str, str], browser: Browser, http: aiohttp.ClientSession
) -> None:
    """With DPOP_NONCES the first proof is answered use_dpop_nonce (nothing used up), the retry works."""
    with own_provider(seeded, DPOP_NONCES="true") as issuer:
        key = DpopKey()
        token_url = issuer + "/oauth/token"
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            code, verifier = await authorize_code(Browser(issuer, session))
        grant = code_grant(code, verifier)
        status, error, headers = await token_request(http, issuer, grant, key.proof("POST", token_url))
        assert status == 400
        assert error["error"] == "use_dpop_nonce"
        nonce = headers["DPoP-Nonce"]
        status, body, headers = await token_request(
            http, issuer, grant, key.proof("POST", token_url, nonce=nonce)
        )
        assert status == 200, body
        assert headers["DPoP-Nonce"]
        # revoking the bound refresh token takes a proof by its key (with the nonce) too; the nonce
        # step revokes nothing: the refresh token still refreshes
        revoke_url = issuer + "/oauth/revoke"
        form = {"client_id": "timesheets-spa", "token": body["refresh_token"]}
        async with http.post(revoke_url, data=form, headers={"DPoP": key.proof("POST", revoke_url)}) as r:
            assert (r.status, (await r.json())["error"]) == (400, "use_dpop_nonce")
            nonce = r.headers["DPoP-Nonce"]
        refresh = {"grant_type": "refresh_token", "client_id": "timesheets-spa"}
        status, renewed, _ = await token_request(
            http,
            issuer,
            {**refresh, "refresh_token": body["refresh_token"]},
            key.proof("POST", token_url, nonce=nonce),
        )
        assert status == 200, renewed
        form["token"] = renewed["refresh_token"]
        proof = key.proof("POST", revoke_url, nonce=nonce)
        async with http.post(revoke_url, data=form, headers={"DPoP": proof}) as r:
            assert r.status == 200, await r.text()
            assert r.headers["DPoP-Nonce"]
        status, error, _ = await token_request(
            http,
            issuer,
            {**refresh, "refresh_token": renewed["refresh_token"]},
            key.proof("POST", token_url, nonce=nonce),
        )
        assert (status, error["error"]) == (400, "invalid_grant"), error


async def test_cors_lets_a_browser_send_proofs_and_read_nonces(
    http: aiohttp.ClientSession, base_url: str
) -> None:
    headers = {
        "Origin": SPA,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, dpop",
    }
    async with http.options(base_url + "/oauth/token", headers=headers) as response:
        assert response.status == 204
        assert "dpop" in response.headers["Access-Control-Allow-Headers"]
    async with http.post(base_url + "/oauth/token", data={}, headers={"Origin": SPA}) as response:
        assert "DPoP-Nonce" in response.headers["Access-Control-Expose-Headers"]
