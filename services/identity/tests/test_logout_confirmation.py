"""RP-Initiated Logout asks the person before it ends their session, unless the request carries an
``id_token_hint`` for them (OpenID Connect RP-Initiated Logout 1.0 §2: the OP MUST ask when there is
no hint, or when the hint does not belong to the signed-in user).

Without that, any page can sign a visitor out: a top-level navigation to ``/oidc/logout`` carries the
SameSite=Lax session cookie. Auth0 asks the same question at its ``/oidc/logout``; its ``/v2/logout``
signs out at once as Auth0 does, but for a navigation another site started
(``Sec-Fetch-Site: cross-site``), which is asked too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlencode

import aiohttp
import pytest

from testkit.oidc import SPA, Browser, hidden_field, sign_in_tokens

pytestmark = pytest.mark.usefixtures("identity_service")

RETURN = {"client_id": "timesheets-spa", "post_logout_redirect_uri": f"{SPA}/", "state": "bye"}


@pytest.fixture
async def other_browser(base_url: str) -> AsyncIterator[Browser]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield Browser(base_url, session)


async def signed_in(browser: Browser) -> bool:
    page = await browser.get("/account/consents")
    return page.status == 200


async def confirm(browser: Browser) -> aiohttp.ClientResponse:
    """Press "Sign out" on the confirmation page just shown: its form, as the browser would post it."""
    fields = ("csrf_token", *[name for name in RETURN if f'name="{name}"' in browser.last_html])
    return await browser.post(
        "/oidc/logout", {name: hidden_field(browser.last_html, name) for name in fields}
    )


async def test_without_a_hint_the_person_is_asked_and_stays_signed_in_until_they_confirm(
    browser: Browser,
) -> None:
    await browser.login("alice")
    page = await browser.get("/oidc/logout?" + urlencode(RETURN))
    assert page.status == 200
    assert "Location" not in page.headers
    assert 'action="/oidc/logout"' in browser.last_html
    assert await signed_in(browser), "signed out by a request nobody confirmed"

    await browser.get("/oidc/logout?" + urlencode(RETURN))  # the page again (the check above left it)
    done = await confirm(browser)
    assert done.status == 302
    assert done.headers["Location"] == f"{SPA}/?state=bye"
    assert not await signed_in(browser)


async def test_a_post_without_the_confirmation_token_only_asks(browser: Browser) -> None:
    await browser.login("alice")
    for form in (RETURN, {**RETURN, "csrf_token": "forged"}):
        page = await browser.post("/oidc/logout", form)
        assert page.status == 200
        assert "Location" not in page.headers
        assert await signed_in(browser)


async def test_a_hint_for_another_person_is_not_enough(
    browser: Browser, other_browser: Browser, http: aiohttp.ClientSession, base_url: str
) -> None:
    bobs = await sign_in_tokens(other_browser, http, base_url, "bob", scope="openid")
    await browser.login("alice")
    page = await browser.get("/oidc/logout?" + urlencode({**RETURN, "id_token_hint": bobs["id_token"]}))
    assert page.status == 200
    assert "Location" not in page.headers
    assert await signed_in(browser)
    assert await signed_in(other_browser)


async def test_a_hint_for_the_signed_in_person_signs_out_at_once(
    browser: Browser, http: aiohttp.ClientSession, base_url: str
) -> None:
    tokens = await sign_in_tokens(browser, http, base_url, "alice", scope="openid")
    done = await browser.get("/oidc/logout?" + urlencode({**RETURN, "id_token_hint": tokens["id_token"]}))
    assert done.status == 302
    assert done.headers["Location"] == f"{SPA}/?state=bye"
    assert not await signed_in(browser)


async def test_an_invalid_request_is_explained_and_still_lets_the_person_sign_out(browser: Browser) -> None:
    await browser.login("alice")
    page = await browser.get("/oidc/logout?" + urlencode({**RETURN, "id_token_hint": "not.a.token"}))
    assert page.status == 400
    assert "invalid_request" in browser.last_html
    assert await signed_in(browser), "an invalid request signed the person out unasked"
    await browser.get("/oidc/logout?" + urlencode({**RETURN, "id_token_hint": "not.a.token"}))
    done = await browser.post("/oidc/logout", {"csrf_token": hidden_field(browser.last_html, "csrf_token")})
    assert done.status == 200
    assert "Signed out" in browser.last_html
    assert not await signed_in(browser)


async def test_nobody_signed_in_nothing_to_ask(browser: Browser) -> None:
    done = await browser.get("/oidc/logout?" + urlencode(RETURN))
    assert done.status == 302
    assert done.headers["Location"] == f"{SPA}/?state=bye"


AUTH0_RETURN = {"client_id": "timesheets-spa", "returnTo": f"{SPA}/"}
CROSS_SITE = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}


async def test_auth0_logout_started_by_another_site_asks_first(browser: Browser) -> None:
    """Any page could sign a visitor out through ``/v2/logout``: a cross-site top-level navigation
    carries the Lax cookie. A navigation the browser marks cross-site is now asked, and the person's
    click goes on to ``returnTo`` as before."""
    await browser.login("alice")
    page = await browser.get("/v2/logout?" + urlencode(AUTH0_RETURN), headers=CROSS_SITE)
    assert page.status == 200
    assert "Location" not in page.headers
    assert 'action="/v2/logout"' in browser.last_html
    assert await signed_in(browser), "another site signed the person out"

    await browser.get("/v2/logout?" + urlencode(AUTH0_RETURN), headers=CROSS_SITE)
    form = {name: hidden_field(browser.last_html, name) for name in ("csrf_token", *AUTH0_RETURN)}
    done = await browser.post("/v2/logout", form)
    assert done.status == 302
    assert done.headers["Location"] == f"{SPA}/"
    assert not await signed_in(browser)


async def test_auth0_logout_post_needs_the_questions_token(browser: Browser) -> None:
    await browser.login("alice")
    for form in (AUTH0_RETURN, {**AUTH0_RETURN, "csrf_token": "forged"}):
        page = await browser.post("/v2/logout", form)
        assert page.status == 200
        assert "Location" not in page.headers
        assert await signed_in(browser)


@pytest.mark.parametrize("site", ["same-origin", "same-site", "none", None])
async def test_auth0_logout_from_the_providers_site_or_no_browser_is_at_once(
    browser: Browser, site: str | None
) -> None:
    await browser.login("alice")
    headers = {"Sec-Fetch-Site": site} if site else {}
    done = await browser.get("/v2/logout?" + urlencode(AUTH0_RETURN), headers=headers)
    assert done.status == 302
    assert done.headers["Location"] == f"{SPA}/"
    assert not await signed_in(browser)
