"""DPoP end to end (RFC 9449): the SPA's tokens are bound to a key its browser cannot export.

The bundled provider advertises DPoP, so the SPA turns it on by itself: a non-extractable ES256 key in
IndexedDB, ``dpop_jkt`` on the authorization request, a proof on the code exchange and on every API
call. A token copied out of the page is then refused from anywhere else — as Bearer, under DPoP
without a proof, with a proof from another key (with and without the gateway's nonce), and with the
very proof the page sent (replayed). Server nonces are on (the browser platform's ``DPOP_NONCES``):
the SPA follows ``use_dpop_nonce`` at the provider and at the gateway.
Silent renewal keeps the same key (the page's clock is moved 16 minutes ahead, so the proofs are only
accepted because the SPA dates them by the gateway's clock); sign-out forgets the key.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import jwt
import pytest
from playwright.async_api import Page, Request, Route, expect
from svckit.dpop import thumbprint

from testkit.dpop import DpopKey
from tests.browser.support import (
    APP,
    DPOP_KEYS_JS,
    PROVIDER,
    NewPage,
    SentCall,
    Shots,
    assert_no_tokens_stored,
    eventually,
    sign_in,
)

pytestmark = pytest.mark.browser

PAST_EXPIRY = "16:00"  # the provider's access tokens live 15 minutes
CLIENT_ID = "timesheets-spa"


def claims_of(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


def proof_key(proof: str) -> dict[str, Any]:
    header = proof.split(".")[0]
    return dict(json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["jwk"])


async def refetch_week(page: Page) -> None:
    await page.get_by_role("button", name="Next week").click()
    await page.get_by_role("button", name="This week").click()
    await expect(page.get_by_text("Loading your week")).to_have_count(0)


async def replay(
    http: aiohttp.ClientSession, call: SentCall, scheme: str, proof: str | None
) -> tuple[int, str, list[str], str | None]:
    """The stolen token (and maybe a proof) sent from another client, as the page sent it: status,
    problem reason, challenges and the gateway's DPoP-Nonce (nonces are on in the browser platform)."""
    headers = {"Authorization": f"{scheme} {call.token}"}
    if proof is not None:
        headers["DPoP"] = proof
    async with http.request(call.method, call.url, headers=headers) as response:
        body = await response.json(content_type=None)
        challenges = response.headers.getall("WWW-Authenticate", [])
        return response.status, str(body.get("reason")), challenges, response.headers.get("DPoP-Nonce")


async def test_dpop_bound_session_and_a_stolen_token_is_useless(new_page: NewPage, shot: Shots) -> None:
    page, tokens = await new_page()
    await page.clock.install()
    authorize: list[str] = []
    token_requests: list[Request] = []
    page.on(
        "request", lambda r: authorize.append(r.url) if r.url.startswith(f"{PROVIDER}/authorize") else None
    )
    page.on(
        "request",
        lambda r: (
            token_requests.append(r)
            if r.url.startswith(PROVIDER) and r.method == "POST" and "token" in r.url
            else None
        ),
    )

    # --- sign-in: the code is bound to the key, the exchange carries a proof, the token cnf.jkt -----
    await sign_in(page, shot, "alice")
    await refetch_week(page)
    await shot(page, "alice-signed-in-with-dpop")
    calls = [call for call in tokens.calls if call.url.startswith(f"{APP}/api/timesheets")]
    assert calls
    assert all(call.scheme == "DPoP" and call.proof for call in calls), tokens.calls
    jkt = claims_of(calls[-1].token)["cnf"]["jkt"]
    assert thumbprint(proof_key(calls[-1].proof or "")) == jkt
    assert parse_qs(urlsplit(authorize[0]).query)["dpop_jkt"] == [jkt]
    assert token_requests
    assert all(request.headers.get("dpop") for request in token_requests), "a token request without a proof"
    assert thumbprint(proof_key(token_requests[-1].headers["dpop"])) == jkt
    # with nonces on: the first proof had none, the provider answered use_dpop_nonce, the retry had it
    assert "nonce" in claims_of(token_requests[-1].headers["dpop"])
    jtis = [claims_of(call.proof or "")["jti"] for call in calls]
    assert len(set(jtis)) == len(jtis), "a proof was sent twice"

    # --- the key: in IndexedDB, usable by the page, never exportable --------------------------------
    exported = await page.evaluate(
        f"""async () => {{
          const keys = await ({DPOP_KEYS_JS})({json.dumps(CLIENT_ID)});
          const key = keys.privateKey;
          const outcome = await crypto.subtle.exportKey("jwk", key).then(() => "exported", e => e.name);
          return {{ extractable: key.extractable, algorithm: key.algorithm, outcome }};
        }}"""
    )
    assert exported == {
        "extractable": False,
        "algorithm": {"name": "ECDSA", "namedCurve": "P-256"},
        "outcome": "InvalidAccessError",
    }
    await assert_no_tokens_stored(page, tokens)

    # --- the token copied out of the page and replayed from another client: refused every way ------
    stolen = calls[-1]
    async with aiohttp.ClientSession() as http:
        status, reason, challenges, _ = await replay(http, stolen, "Bearer", None)
        assert (status, reason) == (401, "dpop_bearer_bound")
        assert any('error="invalid_token"' in value for value in challenges if value.startswith("DPoP "))
        status, reason, _, _ = await replay(http, stolen, "DPoP", None)
        assert (status, reason) == (401, "dpop_missing")
        # the thief's own key: the gateway hands out its nonce to anyone (use_dpop_nonce) ...
        thief = DpopKey()
        forged = thief.proof(stolen.method, stolen.url, access_token=stolen.token)
        status, reason, challenges, nonce = await replay(http, stolen, "DPoP", forged)
        assert (status, reason) == (401, "dpop_nonce")
        assert any('error="use_dpop_nonce"' in value for value in challenges)
        assert nonce
        # ... but a proof with it is still from the wrong key
        forged = thief.proof(stolen.method, stolen.url, access_token=stolen.token, nonce=nonce)
        status, reason, challenges, _ = await replay(http, stolen, "DPoP", forged)
        assert (status, reason) == (401, "dpop_key_mismatch")
        assert any('error="invalid_dpop_proof"' in value for value in challenges)
        status, reason, _, _ = await replay(http, stolen, "DPoP", stolen.proof)  # the page's own proof
        assert (status, reason) == (401, "dpop_replay")
        # a proof of the thief's own for another token cannot be re-aimed either (ath)
        status, reason, _, _ = await replay(
            http, stolen, "DPoP", thief.proof(stolen.method, stolen.url, access_token="other", nonce=nonce)
        )
        assert status == 401
        assert reason in ("dpop_ath", "dpop_key_mismatch")

    # --- silent renewal (page clock 16 minutes fast): same key, a new bound token, calls work ------
    first = stolen.token
    exchanges = len(token_requests)
    await page.clock.fast_forward(PAST_EXPIRY)
    await eventually(lambda: len(token_requests) > exchanges, "the renewal's code exchange")
    await expect(page.get_by_test_id("user-name")).to_have_text("Alice Employee")
    await refetch_week(page)
    await eventually(lambda: tokens.last != first, "the API called with the renewed token")
    await expect(page.get_by_role("alert")).to_have_count(0)
    renewed = [call for call in tokens.calls if call.token == tokens.last]
    assert renewed
    assert all(call.scheme == "DPoP" for call in renewed)
    assert claims_of(tokens.last)["cnf"]["jkt"] == jkt
    assert thumbprint(proof_key(token_requests[-1].headers["dpop"])) == jkt
    silent = [url for url in authorize if "prompt=none" in url]
    assert silent
    assert parse_qs(urlsplit(silent[-1]).query)["dpop_jkt"] == [jkt]
    await shot(page, "renewed-with-the-same-key")

    # --- sign-out: the key is gone with the session ------------------------------------------------
    async with page.expect_navigation(url=f"{APP}/", wait_until="load"):  # back from the provider
        await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("button", name=re.compile("^Sign in"))).to_be_visible()
    assert await page.evaluate(f"({DPOP_KEYS_JS})({json.dumps(CLIENT_ID)})") is None
    await shot(page, "signed-out-key-forgotten")


async def test_a_provider_without_dpop_gets_bearer_tokens_from_the_same_spa(
    new_page: NewPage, shot: Shots
) -> None:
    """Discovery without ``dpop_signing_alg_values_supported`` (a provider, or an Auth0 application,
    without DPoP): the SPA signs in and calls the API with Bearer tokens, and keeps no key."""
    page, tokens = await new_page()

    async def without_dpop(route: Route) -> None:
        response = await route.fetch()
        document = await response.json()
        document.pop("dpop_signing_alg_values_supported")
        await route.fulfill(response=response, json=document)

    await page.route(f"{PROVIDER}/.well-known/openid-configuration", without_dpop)
    authorize: list[str] = []
    page.on(
        "request", lambda r: authorize.append(r.url) if r.url.startswith(f"{PROVIDER}/authorize") else None
    )
    await sign_in(page, shot, "alice")
    await refetch_week(page)
    assert tokens.calls
    assert all(call.scheme == "Bearer" and call.proof is None for call in tokens.calls), tokens.calls
    assert "cnf" not in claims_of(tokens.last)
    assert "dpop_jkt" not in parse_qs(urlsplit(authorize[0]).query)
    assert await page.evaluate(f"({DPOP_KEYS_JS})({json.dumps(CLIENT_ID)})") is None
    await shot(page, "alice-signed-in-with-bearer")


async def test_a_lost_key_is_replaced_by_a_silent_renewal(new_page: NewPage, shot: Shots) -> None:
    """Site data cleared while signed in (the IndexedDB key gone): the next call goes out as Bearer,
    the gateway refuses the bound token, and the one silent renewal binds a new token to a new key."""
    page, tokens = await new_page()
    await sign_in(page, shot, "bob")
    await refetch_week(page)
    first = tokens.last
    old_jkt = claims_of(first)["cnf"]["jkt"]
    await page.evaluate(
        """() => new Promise((resolve, reject) => {
          const request = indexedDB.open("oidc");
          request.onsuccess = () => {
            const tx = request.result.transaction("dpop", "readwrite");
            tx.objectStore("dpop").clear();
            tx.oncomplete = () => { request.result.close(); resolve(null); };
            tx.onerror = () => reject(tx.error);
          };
          request.onerror = () => reject(request.error);
        })"""
    )
    await refetch_week(page)
    await eventually(lambda: tokens.last != first, "the API called with a renewed token")
    await expect(page.get_by_role("alert")).to_have_count(0)
    new_jkt = claims_of(tokens.last)["cnf"]["jkt"]
    assert new_jkt != old_jkt
    keys = await page.evaluate(f"({DPOP_KEYS_JS})({json.dumps(CLIENT_ID)})")
    assert keys is not None
    last = tokens.calls[-1]
    assert last.scheme == "DPoP"
    assert thumbprint(proof_key(last.proof or "")) == new_jkt
    await shot(page, "bob-with-a-new-key")
