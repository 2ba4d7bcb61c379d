"""Automated accessibility checks with axe-core (WCAG 2.1 A/AA rules) on every screen of the app.

axe is injected into the page (the browser profile bypasses the app's CSP for that one script) and
any violation of serious or critical impact fails the test, with the rule and the elements named.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

import pytest
from playwright.async_api import Page, expect

from devstack.platform import ROOT
from tests.browser.support import DESKTOP, PHONE, NewPage, Shots, sign_in

pytestmark = pytest.mark.browser

AXE = ROOT / "spa" / "node_modules" / "axe-core" / "axe.min.js"
RULES = {"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]}}


async def axe_violations(page: Page) -> list[dict[str, Any]]:
    if not await page.evaluate("() => typeof window.axe !== 'undefined'"):
        await page.add_script_tag(path=str(AXE))
    result = await page.evaluate("options => window.axe.run(document, options)", RULES)
    return [v for v in result["violations"] if v["impact"] in ("serious", "critical")]


async def check(page: Page, screen: str) -> None:
    """The screen at desktop width, then at phone width (the layout changes, so do the findings)."""
    for size, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        await page.set_viewport_size(viewport)
        violations = await axe_violations(page)
        summary = [
            {"rule": v["id"], "help": v["help"], "nodes": [n["target"] for n in v["nodes"]][:5]}
            for v in violations
        ]
        assert not violations, f"{screen} ({size}): " + json.dumps(summary, indent=1)
    await page.set_viewport_size(DESKTOP)


async def test_every_screen_passes_axe(new_page: NewPage, shot: Shots) -> None:
    options: dict[str, Any] = {"bypass_csp": True}
    alice, _ = await new_page(**options)  # the platform fixture has run `npm ci` in spa/ by now
    assert AXE.exists(), f"{AXE} missing: axe-core is a devDependency of spa/ (npm ci)"
    await alice.goto("http://localhost:8080/")
    await expect(alice.get_by_role("button", name=re.compile("^Sign in"))).to_be_visible()
    await check(alice, "sign-in screen")

    await sign_in(alice, shot, "alice")
    form = alice.locator("form.entry-form")
    await form.get_by_label("Project").fill(f"A11y {secrets.token_hex(2)}")
    await form.get_by_label("Hours").fill("1.5")
    await form.get_by_role("button", name="Add entry").click()
    await expect(alice.locator("li.entry").first).to_be_visible()
    await check(alice, "my timesheets")
    await form.get_by_role("button", name="Add entry").click()  # empty: inline errors
    await expect(form.locator(".field__error").first).to_be_visible()
    await check(alice, "entry form with errors")
    await alice.locator("li.entry").first.get_by_role("button", name=re.compile("^Delete")).click()
    await expect(alice.get_by_role("dialog")).to_be_visible()
    await check(alice, "delete confirmation")
    await shot(alice, "delete-dialog-checked", full_page=False)

    bob, _ = await new_page(**options)
    await sign_in(bob, shot, "bob", path="/approvals")
    await expect(bob.locator("li.approval").first).to_be_visible()
    await check(bob, "approvals")

    carol, _ = await new_page(**options)
    await sign_in(carol, shot, "carol")
    await expect(carol.get_by_test_id("chain-status")).to_contain_text("Chain verified")
    await check(carol, "audit")
