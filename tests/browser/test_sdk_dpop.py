"""Third-party SDKs with DPoP on: Auth0's SPA SDK (``useDpop: true``) and oidc-client-ts (its ``dpop``
settings) sign in against the bundled provider and call the API through the gateway, in Chromium.

The harness (``testkit.sdkcompat``) is served on its own origin (``SDK_ORIGIN``, listed in the
gateway's ``CORS_ORIGINS``): its API calls go cross-origin to the real gateway (CORS lets the ``DPoP``
header through and exposes ``DPoP-Nonce``/``WWW-Authenticate``), its token requests to the real
provider. Both clients are registered as requiring DPoP (``dpop_bound_access_tokens``), so a token
request without a proof would fail. Each SDK gets bound tokens (``token_type`` DPoP, ``cnf.jkt``), its
API call passes with the SDK's own proof, the same token without the key is refused, and silent
renewal keeps the key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import jwt
import pytest
from identity import store
from identity.models import Client
from playwright.async_api import Page, Request
from starlette.applications import Starlette
from starlette.requests import Request as HttpRequest
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Route

from devstack.platform import Platform
from testkit.fixtures import serve_app
from testkit.sdkcompat import BUNDLES, build_bundles, harness_html, provider_allows_origin
from tests.browser.support import APP, SDK_ORIGIN, NewPage, Shots, provider_sign_in

pytestmark = pytest.mark.browser

CLIENTS = {
    "auth0": ("sdk-auth0-dpop", ("/auth0/",)),
    "oidc": ("sdk-oidc-dpop", ("/oidc/", "/oidc/silent.html")),
}


@pytest.fixture(scope="module")
async def harness(platform: Platform) -> AsyncIterator[dict[str, str]]:
    """The bundles built and served on SDK_ORIGIN; the two SDK clients registered, DPoP required."""
    dist = build_bundles()
    conn = await asyncpg.connect(platform.env["DATABASE_URL"], server_settings={"search_path": "identity"})
    try:
        for client_id, paths in CLIENTS.values():
            uris = tuple(SDK_ORIGIN + path for path in paths)
            await store.upsert_client(
                conn,
                Client(
                    client_id=client_id,
                    name=client_id,
                    first_party=True,
                    secret_hash=None,
                    redirect_uris=uris,
                    post_logout_redirect_uris=uris,
                    web_origins=(),
                    grant_types=("authorization_code", "refresh_token"),
                    response_types=("code",),
                    allowed_scopes=("openid", "profile", "email", "offline_access", "read:timesheets"),
                    dpop_bound_access_tokens=True,
                ),
            )
    finally:
        await conn.close()
    config = {"issuer": platform.env["IDENTITY_ISSUER"], "audience": platform.env["OIDC_AUDIENCE"]}
    await provider_allows_origin(config["issuer"], SDK_ORIGIN)
    async with serve_app(harness_app(dist, config), port=urlsplit(SDK_ORIGIN).port):
        yield config


def harness_app(dist: Path, config: dict[str, str]) -> Starlette:
    """``/auth0/`` and ``/oidc/`` (and its silent.html) with DPoP on, the bundles under ``/dist/``."""

    async def page(request: HttpRequest) -> Response:
        sdk = request.url.path.split("/")[1]
        client_id = CLIENTS[sdk][0]
        extra = {"useDpop": True} if sdk == "auth0" else {"dpop": True}
        settings = {**config, "clientId": client_id, "apiBase": f"{APP}/api", **extra}
        return HTMLResponse(harness_html(sdk, settings))

    async def bundle(request: HttpRequest) -> Response:
        name = request.path_params["name"]
        if name not in BUNDLES:
            return Response(status_code=404)
        return FileResponse(dist / name, media_type="text/javascript")

    routes = [Route(path, page) for _, paths in CLIENTS.values() for path in paths]
    return Starlette(routes=[*routes, Route("/dist/{name}", bundle)])


async def open_harness(new_page: NewPage, sdk: str) -> Page:
    page, _ = await new_page()
    await page.goto(f"{SDK_ORIGIN}/{sdk}/")
    await page.wait_for_function("window.harnessReady === true")
    return page


async def sign_in_through(page: Page, shot: Shots, sdk: str, username: str) -> None:
    await page.evaluate("setTimeout(() => window.harness.login(), 0)")
    await provider_sign_in(page, shot, username)
    await page.wait_for_url(f"{SDK_ORIGIN}/{sdk}/?*code=*")
    await page.wait_for_function("window.harnessReady === true")


def api_calls(page: Page) -> list[Request]:
    seen: list[Request] = []
    page.on("request", lambda r: seen.append(r) if r.url.startswith(f"{APP}/api/") else None)
    return seen


def sent_token(call: Request) -> str:
    """The token of an API call, which must have gone as DPoP with a proof."""
    scheme, _, token = call.headers["authorization"].partition(" ")
    assert scheme == "DPoP", call.headers
    assert call.headers.get("dpop"), "no DPoP proof"
    return token


def cnf_jkt(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["cnf"]["jkt"])


async def refused_without_the_key(token: str) -> None:
    """The SDK's token copied out and sent from another client: as Bearer and under DPoP, no key."""
    async with aiohttp.ClientSession() as http:
        for scheme in ("Bearer", "DPoP"):
            headers = {"Authorization": f"{scheme} {token}"}
            async with http.get(f"{APP}/api/timesheets", headers=headers) as response:
                assert response.status == 401, scheme
                assert (await response.json())["reason"] in ("dpop_bearer_bound", "dpop_missing")


async def test_auth0_spa_js_with_use_dpop_calls_the_api_through_the_gateway(
    new_page: NewPage, harness: dict[str, str], shot: Shots
) -> None:
    page = await open_harness(new_page, "auth0")
    calls = api_calls(page)
    await sign_in_through(page, shot, "auth0", "alice")
    await page.evaluate("window.harness.callback()")

    token = await page.evaluate("window.harness.token()")
    assert await page.evaluate("window.harness.tokenType()") == "DPoP"
    jkt = cnf_jkt(token)
    answer = await page.evaluate("window.harness.api('/timesheets')")
    assert answer["status"] == 200, answer
    sent = sent_token(calls[-1])
    assert cnf_jkt(sent) == jkt
    await refused_without_the_key(sent)

    # silent renewal (hidden iframe, web_message): a new token bound to the same key, still accepted
    renewed = await page.evaluate("window.harness.token({cacheMode: 'off'})")
    assert renewed != token
    assert cnf_jkt(renewed) == jkt
    answer = await page.evaluate("window.harness.api('/timesheets')")
    assert answer["status"] == 200, answer
    assert cnf_jkt(sent_token(calls[-1])) == jkt
    await shot(page, "auth0-dpop-api-called")


async def test_oidc_client_ts_with_dpop_calls_the_api_through_the_gateway(
    new_page: NewPage, harness: dict[str, str], shot: Shots
) -> None:
    page = await open_harness(new_page, "oidc")
    calls = api_calls(page)
    await sign_in_through(page, shot, "oidc", "bob")
    user = await page.evaluate("window.harness.callback()")
    assert user["token_type"] == "DPoP"
    assert user["profile"]["sub"] == "local|bob"  # from the ID token: the library's /userinfo is Bearer-only
    jkt = cnf_jkt(user["access_token"])
    answer = await page.evaluate("window.harness.api('/timesheets')")
    assert answer["status"] == 200, answer
    assert sent_token(calls[-1]) == user["access_token"]
    await refused_without_the_key(user["access_token"])

    renewed = await page.evaluate("window.harness.silent()")
    assert renewed["access_token"] != user["access_token"]
    assert cnf_jkt(renewed["access_token"]) == jkt
    answer = await page.evaluate("window.harness.api('/timesheets')")
    assert answer["status"] == 200, answer
    await shot(page, "oidc-client-ts-dpop-api-called")
