"""Browser proofs: Auth0's own SPA SDK and oidc-client-ts sign in against the identity service unchanged.

A small npm project (``sdk_compat/``, built by ``testkit.sdkcompat``) holds the two
SDKs; a loopback page server hosts them on their own origin; headless Chromium drives sign-in, silent
renewal in a hidden iframe (Auth0's ``web_message`` and oidc-client-ts' silent redirect) and logout.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import jwt
import pytest
from identity import store
from identity.models import Client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Route

from testkit.fixtures import free_port, serve_app
from testkit.oidc import API, DEMO_PASSWORD
from testkit.sdkcompat import BUNDLES, build_bundles, harness_html, provider_allows_origin

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("identity_service")]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def page_app(dist: Path, issuer: str, clients: dict[str, str]) -> Starlette:
    def html(bundle: str, client_id: str, **extra: Any) -> str:
        return harness_html(bundle, {"issuer": issuer, "clientId": client_id, "audience": API, **extra})

    async def auth0(request: Request) -> Response:
        return HTMLResponse(html("auth0", clients["auth0"]))

    async def auth0_refresh(request: Request) -> Response:
        return HTMLResponse(html("auth0", clients["auth0"], useRefreshTokens=True))

    async def oidc(request: Request) -> Response:
        return HTMLResponse(html("oidc", clients["oidc"]))

    async def bundle(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in BUNDLES:
            return Response(status_code=404)
        return FileResponse(dist / name, media_type="text/javascript")

    return Starlette(
        routes=[
            Route("/auth0/", auth0),
            Route("/auth0-rt/", auth0_refresh),
            Route("/oidc/", oidc),
            Route("/oidc/silent.html", oidc),
            Route("/dist/{name}", bundle),
        ]
    )


@pytest.fixture(scope="module")
async def harness(seeded: dict[str, str], issuer: str, database_url: str) -> AsyncIterator[str]:
    dist = build_bundles()
    port = free_port()
    origin = f"http://localhost:{port}"
    conn = await asyncpg.connect(database_url, server_settings={"search_path": "identity"})
    try:
        for client_id, path, extra in (
            ("sdk-auth0", "/auth0/", (f"{origin}/auth0-rt/",)),
            ("sdk-oidc", "/oidc/", (f"{origin}/oidc/silent.html",)),
        ):
            client = Client(
                client_id=client_id,
                name=client_id,
                first_party=True,
                secret_hash=None,
                redirect_uris=(origin + path, *extra),
                post_logout_redirect_uris=(origin + path, *extra),
                web_origins=(),
                grant_types=("authorization_code", "refresh_token"),
                response_types=("code",),
                allowed_scopes=("openid", "profile", "email", "offline_access", "read:timesheets"),
            )
            await store.upsert_client(conn, client)
    finally:
        await conn.close()
    await provider_allows_origin(issuer, origin)  # the clients registered just now
    app = page_app(dist, issuer, {"auth0": "sdk-auth0", "oidc": "sdk-oidc"})
    async with serve_app(app, port=port):
        yield origin


@pytest.fixture
async def page(harness: str) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = await browser.new_context()
        page = await context.new_page()
        page.set_default_timeout(20_000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            yield page
        finally:
            await context.close()
            await browser.close()


async def sign_in(page: Any, username: str, password: str = DEMO_PASSWORD) -> None:
    await page.wait_for_selector("input[name=username]")
    await page.fill("input[name=username]", username)
    await page.fill("input[name=password]", password)
    await page.click("button[type=submit]")


def claims_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


async def test_auth0_spa_js_signs_in_renews_silently_and_logs_out(
    page: Any, harness: str, issuer: str
) -> None:
    await page.goto(harness + "/auth0/")
    await page.wait_for_function("window.harnessReady === true")
    await page.evaluate("setTimeout(() => window.harness.login(), 0)")
    await sign_in(page, "alice")
    await page.wait_for_url(f"{harness}/auth0/?*code=*")
    await page.wait_for_function("window.harnessReady === true")
    await page.evaluate("window.harness.callback()")

    user = await page.evaluate("window.harness.user()")
    assert user["sub"] == "local|alice"
    assert user["name"] == "Alice Employee"
    first = await page.evaluate("window.harness.token()")
    claims = claims_of(first)
    assert claims["iss"] == issuer
    assert claims["permissions"] == ["read:timesheets"]
    assert claims["aud"][0] == API

    # silent renewal: a hidden iframe with prompt=none and response_mode=web_message
    renewed = await page.evaluate("window.harness.token({cacheMode: 'off'})")
    assert renewed != first
    assert claims_of(renewed)["sub"] == "local|alice"

    await page.evaluate("setTimeout(() => window.harness.logout(), 0)")
    await page.wait_for_url(f"{harness}/auth0/")
    await page.wait_for_function("window.harnessReady === true")
    error = await page.evaluate(
        "window.harness.token({cacheMode: 'off'}).then(() => 'no error', e => e.error || String(e))"
    )
    assert error == "login_required"


async def test_oidc_client_ts_signs_in_renews_silently_and_logs_out(page: Any, harness: str) -> None:
    await page.goto(harness + "/oidc/")
    await page.wait_for_function("window.harnessReady === true")
    await page.evaluate("setTimeout(() => window.harness.login(), 0)")
    await sign_in(page, "bob")
    await page.wait_for_url(f"{harness}/oidc/?*code=*")
    await page.wait_for_function("window.harnessReady === true")
    signed_in = await page.evaluate("window.harness.callback()")
    assert signed_in["profile"]["sub"] == "local|bob"
    assert signed_in["profile"]["name"] == "Bob Manager"  # from /userinfo (loadUserInfo)
    assert claims_of(signed_in["access_token"])["permissions"] == ["read:timesheets"]

    renewed = await page.evaluate("window.harness.silent()")
    assert renewed["access_token"] != signed_in["access_token"]
    assert renewed["profile"]["sub"] == "local|bob"

    await page.evaluate("setTimeout(() => window.harness.logout(), 0)")
    await page.wait_for_url(f"{harness}/oidc/")
    await page.wait_for_function("window.harnessReady === true")
    error = await page.evaluate("window.harness.silent().then(() => 'no error', e => e.error || String(e))")
    assert error == "login_required"


async def test_auth0_spa_js_with_rotating_refresh_tokens(page: Any, harness: str) -> None:
    """``useRefreshTokens: true``: the SDK asks for offline_access and renews with the refresh grant."""
    await page.goto(harness + "/auth0-rt/")
    await page.wait_for_function("window.harnessReady === true")
    await page.evaluate("setTimeout(() => window.harness.login(), 0)")
    await sign_in(page, "carol")
    await page.wait_for_url(f"{harness}/auth0-rt/?*code=*")
    await page.wait_for_function("window.harnessReady === true")
    grants: list[str] = []
    page.on(
        "request",
        lambda request: (
            grants.append(request.post_data or "") if request.url.endswith("/oauth/token") else None
        ),
    )
    await page.evaluate("window.harness.callback()")
    first = await page.evaluate("window.harness.token()")
    renewed = await page.evaluate("window.harness.token({cacheMode: 'off'})")
    again = await page.evaluate("window.harness.token({cacheMode: 'off'})")
    assert len({first, renewed, again}) == 3
    assert claims_of(again)["sub"] == "local|carol"
    assert claims_of(again)["permissions"] == ["read:timesheets"]
    assert sum("grant_type=refresh_token" in body for body in grants) == 2, grants
