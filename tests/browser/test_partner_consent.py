"""The third-party client `partner-spa` (the same app under /partner/): consent, and consent remembered.

The provider shows a consent page listing the scopes the partner asks for; Deny brings the user back
signed out with a clear message; Allow signs in; after signing out and in again the consent page is
not shown a second time.
"""

from __future__ import annotations

import re

import pytest
from playwright.async_api import Page, expect

from tests.browser.support import APP, PROVIDER, NewPage, Shots, provider_sign_in

pytestmark = pytest.mark.browser

PARTNER = f"{APP}/partner/"


async def start_sign_in(page: Page) -> None:
    await page.get_by_role("button", name=re.compile("^Sign in")).click()


async def consent_page(page: Page) -> None:
    await page.wait_for_url(re.compile(rf"^{re.escape(PROVIDER)}/(authorize|login)"))
    await expect(page.get_by_role("heading", name=re.compile("wants to access your account"))).to_be_visible()


async def test_partner_consent_is_asked_once_and_remembered(new_page: NewPage, shot: Shots) -> None:
    page, tokens = await new_page()
    authorize_requests: list[str] = []
    page.on(
        "request",
        lambda r: authorize_requests.append(r.url) if r.url.startswith(f"{PROVIDER}/authorize") else None,
    )
    await page.goto(PARTNER)
    await expect(page.get_by_role("heading", name=re.compile("partner app", re.I))).to_be_visible()
    await shot(page, "partner-signed-out")

    # First visit: sign in, then the consent page lists exactly what the partner asks for.
    await start_sign_in(page)
    await provider_sign_in(page, shot, "alice")
    await consent_page(page)
    scopes = page.locator("ul.scopes li")
    listed = " ".join(await scopes.all_inner_texts())
    for scope in ("read:timesheets", "create:timesheets"):
        assert scope in listed, listed
    for scope in ("approve:timesheets", "read:audit", "delete:timesheets"):
        assert scope not in listed, listed
    assert "client_id=partner-spa" in authorize_requests[0]
    await shot(page, "partner-consent-page")

    # Deny: back at the partner app, not signed in, told why.
    await page.get_by_role("button", name="Deny").click()
    await page.wait_for_url(PARTNER)
    await expect(page.get_by_role("alert")).to_contain_text("Access was not granted")
    await expect(page.get_by_role("button", name="Sign out")).to_have_count(0)
    await shot(page, "partner-denied")

    # Ask again and allow: signed in with the partner's scopes only.
    await start_sign_in(page)
    await consent_page(page)  # still signed in at the provider: straight to consent
    await shot(page, "partner-consent-page-again")
    await page.get_by_role("button", name="Allow").click()
    await page.wait_for_url(re.compile(rf"^{re.escape(PARTNER)}"))
    await expect(page.get_by_role("heading", name="My timesheets")).to_be_visible()
    nav = page.get_by_role("navigation", name="Main")
    await expect(nav.get_by_role("link")).to_have_text(["My timesheets"])
    await expect(page.locator("footer")).to_contain_text("read:timesheets, create:timesheets")
    await expect(page.locator("form.entry-form")).to_be_visible()
    # delete:timesheets was not granted to the partner: no delete buttons.
    await expect(page.get_by_role("button", name=re.compile("^Delete"))).to_have_count(0)
    await shot(page, "partner-signed-in")
    assert tokens.seen, "the partner app called the API"

    # Sign out at the provider, sign in again: the remembered consent skips the consent page.
    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url(PARTNER)
    await expect(page.get_by_role("button", name=re.compile("^Sign in"))).to_be_visible()
    await shot(page, "partner-signed-out-again")
    await start_sign_in(page)
    await provider_sign_in(page, shot, "alice")
    await page.wait_for_url(re.compile(rf"^{re.escape(PARTNER)}"))
    await expect(page.get_by_role("heading", name="My timesheets")).to_be_visible()
    await shot(page, "partner-signed-in-again-without-consent")
