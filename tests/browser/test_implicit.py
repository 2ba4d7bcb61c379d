"""The scenario's Implicit Grant (`response_type=id_token token`), selected by configuration.

The app asks for `id_token token` with a nonce, validates the ID token, clears the tokens from the
address bar and calls the API with the access token. `?flow=implicit` is the safe, secret-free
override of the `SPA_AUTH_FLOW` setting the gateway serves in /config.json.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.async_api import Route, expect

from tests.browser.support import (
    APP,
    PROVIDER,
    NewPage,
    Shots,
    Tokens,
    assert_no_tokens_stored,
    provider_sign_in,
    sign_in,
)

pytestmark = pytest.mark.browser


async def test_implicit_grant_signs_in_and_calls_the_api(new_page: NewPage, shot: Shots) -> None:
    page, tokens = await new_page()
    authorize: list[str] = []
    page.on(
        "request", lambda r: authorize.append(r.url) if r.url.startswith(f"{PROVIDER}/authorize") else None
    )
    callbacks: list[str] = []
    page.on("framenavigated", lambda f: callbacks.append(f.url) if "/callback" in f.url else None)
    api_answers: list[int] = []
    page.on("response", lambda r: api_answers.append(r.status) if r.url.startswith(f"{APP}/api/") else None)

    await page.goto(f"{APP}/?flow=implicit")
    await expect(page.get_by_text("Implicit Grant")).to_be_visible()
    await shot(page, "implicit-signed-out")
    await page.get_by_role("button", name=re.compile("^Sign in")).click()
    await provider_sign_in(page, shot, "bob")
    await page.wait_for_url(re.compile(rf"^{re.escape(APP)}/"))
    await expect(page.get_by_role("heading", name="My timesheets")).to_be_visible()
    await expect(page.get_by_test_id("user-name")).to_have_text("Bob Manager")

    request = parse_qs(urlsplit(authorize[0]).query)
    assert request["response_type"] == ["id_token token"]
    assert request["nonce"][0]
    assert request["state"][0]
    assert request["audience"] == ["https://timesheets.abc.example/api"]
    assert "code_challenge" not in request
    # The tokens arrived in the fragment and were removed from the address bar.
    assert any("access_token=" in url for url in callbacks), callbacks
    assert "#" not in page.url
    assert "access_token" not in page.url
    assert await page.evaluate("() => window.location.hash") == ""

    # The API was called with the implicit access token, and answered.
    await expect(page.get_by_text("Loading your week")).to_have_count(0)
    await shot(page, "implicit-signed-in-week")
    assert tokens.seen
    assert 200 in api_answers, api_answers
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Approvals").click()
    await expect(page.get_by_role("heading", name="Approvals")).to_be_visible()
    await expect(page.get_by_text("Loading the approval queue")).to_have_count(0)
    await expect(page.get_by_role("alert")).to_have_count(0)
    await shot(page, "implicit-signed-in-approvals")
    await assert_no_tokens_stored(page, tokens)

    # A replayed fragment (the same state) is refused: state is single-use.
    replay = next(url for url in callbacks if "access_token=" in url)
    await page.goto(replay)
    await expect(page.get_by_role("alert")).to_contain_text("Sign-in could not be completed")
    assert "#" not in page.url
    await shot(page, "implicit-replayed-answer-refused")


async def test_implicit_answer_with_a_swapped_access_token_is_refused(new_page: NewPage, shot: Shots) -> None:
    """Token substitution: the ID token's at_hash no longer matches, so nothing is used."""
    first, _ = await new_page()
    await sign_in(first, shot, "alice")  # a provider session, so /authorize answers at once
    page = await first.context.new_page()  # a new tab: no app session in it
    tokens = Tokens()
    page.on("request", tokens.on_request)
    swapped: list[str] = []

    async def swap_access_token(route: Route) -> None:
        response = await route.fetch(max_redirects=0)
        location = response.headers.get("location", "")
        if "#" in location and "access_token=" in location:
            location = location.replace("access_token=", "access_token=eyJzd2FwcGVkIjp0cnVlfQ", 1)
            swapped.append(location)
        await route.fulfill(response=response, headers={**response.headers, "location": location})

    await page.route(f"{PROVIDER}/authorize*", swap_access_token)
    await page.goto(f"{APP}/?flow=implicit")
    await page.get_by_role("button", name=re.compile("^Sign in")).click()
    alert = page.get_by_role("alert")
    await expect(alert).to_contain_text("Sign-in answer rejected")
    assert swapped, "the provider's answer was intercepted and altered"
    await expect(page.get_by_role("button", name="Sign out")).to_have_count(0)
    assert "#" not in page.url
    assert not tokens.seen, "the swapped token must never reach the API"
    await shot(page, "implicit-swapped-token-refused")
