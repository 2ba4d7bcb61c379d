"""The issue's main story in a real browser, one user per browser profile.

alice signs in, adds entries (a bad one first: the API's 422 lands next to the field) and deletes one
after confirming; bob approves one of alice's entries, rejects another with a comment, and cannot
approve his own (not offered in his queue, and refused by the API); alice sees the statuses and the
API refuses to delete the approved entry (409, explained); carol sees every one of these actions in
the audit view and the hash chain verifies.
"""

from __future__ import annotations

import re
import secrets

import pytest
from playwright.async_api import Locator, Page, expect

from tests.browser.support import (
    APP,
    PHONE,
    NewPage,
    Shots,
    api_call_in_page,
    assert_no_tokens_stored,
    sign_in,
)

pytestmark = pytest.mark.browser

RUN = secrets.token_hex(2)
APOLLO = f"Apollo {RUN}"  # approved by bob
BOREALIS = f"Borealis {RUN}"  # rejected by bob
CYGNUS = f"Cygnus {RUN}"  # deleted by alice
DELTA = f"Delta {RUN}"  # bob's own entry
FOCUSED = "() => document.activeElement?.getAttribute('name') || document.activeElement?.textContent"
REJECTION = "Please split this into design and review hours."


def entry(page: Page, project: str) -> Locator:
    return page.locator(f'li.entry[data-project="{project}"]')


async def add_entry(page: Page, project: str, hours: str, notes: str = "") -> None:
    form = page.locator("form.entry-form")
    await form.get_by_label("Project").fill(project)
    await form.get_by_label("Hours").fill(hours)
    await form.get_by_label("Notes (optional)").fill(notes)
    await form.get_by_role("button", name="Add entry").click()
    await expect(entry(page, project)).to_be_visible()


async def wait_for_audit(page: Page, rows: Locator, expected: list[tuple[str, str]]) -> None:
    """Audit records arrive through the services' outboxes, a moment after the change: re-query."""
    for _ in range(40):
        missing = [
            (project, label)
            for project, label in expected
            if await rows.filter(has_text=project).filter(has_text=label).count() == 0
        ]
        if not missing:
            return
        await page.wait_for_timeout(500)
        await page.get_by_role("button", name="Apply filters").click()
    raise AssertionError(f"not in the audit view: {missing}")


async def test_employee_manager_auditor_workday(new_page: NewPage, shot: Shots) -> None:
    # --- alice: sign in, add entries, see validation, delete one -------------------------------
    alice, alice_tokens = await new_page()
    await sign_in(alice, shot, "alice")
    await expect(alice.get_by_role("heading", name="My timesheets")).to_be_visible()
    await expect(alice.get_by_test_id("user-name")).to_have_text("Alice Employee")
    nav = alice.get_by_role("navigation", name="Main")
    await expect(nav.get_by_role("link")).to_have_text(["My timesheets"])  # no approvals, no audit
    await expect(alice.get_by_text("Loading your week")).to_have_count(0)
    await shot(alice, "alice-week")
    # Other tests of this session may have added entries for alice this week: count from here.
    baseline = float((await alice.get_by_test_id("week-total").inner_text()).removesuffix(" h"))

    form = alice.locator("form.entry-form")
    # Client-side check: nothing typed.
    await form.get_by_role("button", name="Add entry").click()
    await expect(form.get_by_text("Enter the project you worked on.")).to_be_visible()
    await expect(form.get_by_label("Project")).to_be_focused()
    await expect(form.get_by_label("Project")).to_have_attribute("aria-invalid", "true")
    # Server-side check (422 from the timesheets service), shown at the field.
    await form.get_by_label("Project").fill(APOLLO)
    await form.get_by_label("Hours").fill("30")
    await form.get_by_role("button", name="Add entry").click()
    hours_error = alice.locator("#entry-hours-error")
    await expect(hours_error).to_be_visible()
    await expect(hours_error).to_contain_text("24")
    await expect(form.get_by_label("Hours")).to_have_attribute(
        "aria-describedby", re.compile("entry-hours-error")
    )
    await shot(alice, "alice-hours-rejected-inline")

    await add_entry(alice, APOLLO, "7.5", "Sprint planning and API review")
    await add_entry(alice, BOREALIS, "2", "Customer workshop")
    await add_entry(alice, CYGNUS, "1.25", "Typo: wrong project")
    await expect(entry(alice, APOLLO).locator(".badge")).to_have_text("Submitted")
    await shot(alice, "alice-three-entries")
    # A day holds at most 24 hours: a 24-hour entry on top of these is the service's 422, its detail
    # in the banner (the day, the hours recorded) and its message at the hours field.
    await form.get_by_label("Project").fill(f"Overtime {RUN}")
    await form.get_by_label("Hours").fill("24")
    await form.get_by_role("button", name="Add entry").click()
    await expect(alice.get_by_role("alert")).to_contain_text("A day holds at most 24 hours")
    await expect(alice.get_by_role("alert")).to_contain_text("hours are already recorded on")
    await expect(hours_error).to_contain_text("already recorded, at most 24 a day")
    await expect(entry(alice, f"Overtime {RUN}")).to_have_count(0)
    await shot(alice, "alice-day-full")
    await form.get_by_label("Project").fill("")
    await form.get_by_label("Hours").fill("")

    await entry(alice, CYGNUS).get_by_role("button", name=re.compile("^Delete")).click()
    dialog = alice.get_by_role("dialog", name="Delete this entry?")
    await expect(dialog).to_be_visible()
    await expect(dialog).to_contain_text(CYGNUS)
    await shot(alice, "alice-confirm-delete", full_page=False)
    await dialog.get_by_role("button", name="Delete entry").click()
    await expect(entry(alice, CYGNUS)).to_have_count(0)
    await expect(alice.get_by_role("status").filter(has_text="Deleted")).to_be_visible()
    await shot(alice, "alice-after-delete")
    await assert_no_tokens_stored(alice, alice_tokens)

    # --- bob: his own entry, the queue, approve, reject with a comment ---------------------------
    bob, bob_tokens = await new_page()
    await sign_in(bob, shot, "bob")
    await add_entry(bob, DELTA, "3", "Team one-to-ones")
    delta_id = await entry(bob, DELTA).get_attribute("data-entry-id")
    assert delta_id
    await shot(bob, "bob-own-week")
    await bob.get_by_role("navigation", name="Main").get_by_role("link", name="Approvals").click()
    await expect(bob).to_have_url(f"{APP}/approvals")
    queue = bob.locator("li.approval")
    await expect(queue.filter(has_text=APOLLO)).to_have_count(1)
    await expect(queue.filter(has_text=BOREALIS)).to_have_count(1)
    await expect(queue.filter(has_text=CYGNUS)).to_have_count(0)  # deleted
    await expect(queue.filter(has_text=DELTA)).to_have_count(0)  # his own: never offered
    await shot(bob, "bob-approval-queue")

    # The API refuses too, whatever the UI shows (through the gateway, with bob's own DPoP-bound token
    # and a proof from his browser's key).
    answer = await api_call_in_page(
        bob,
        "PUT",
        f"/api/approvals/{delta_id}",
        bob_tokens.last,
        {"decision": "approved", "comment": "self-service"},
    )
    assert answer["status"] in (403, 409), answer["text"]
    assert answer["contentType"].startswith("application/problem+json")

    apollo_card = queue.filter(has_text=APOLLO)
    await apollo_card.get_by_label("Comment").fill("Thanks, looks right.")
    await apollo_card.get_by_role("button", name="Approve").click()
    await expect(queue.filter(has_text=APOLLO)).to_have_count(0)

    borealis_card = queue.filter(has_text=BOREALIS)
    await borealis_card.get_by_role("button", name="Reject").click()  # no comment yet
    await expect(borealis_card.get_by_text("Say why you're rejecting it")).to_be_visible()
    await shot(bob, "bob-reject-needs-comment")
    await borealis_card.get_by_label("Comment").fill(REJECTION)
    await borealis_card.get_by_role("button", name="Reject").click()
    await expect(queue.filter(has_text=BOREALIS)).to_have_count(0)
    await shot(bob, "bob-after-decisions")

    # --- alice: still showing the old page; deleting the approved entry is refused (409) ---------
    await entry(alice, APOLLO).get_by_role("button", name=re.compile("^Delete")).click()
    await alice.get_by_role("dialog").get_by_role("button", name="Delete entry").click()
    refusal = alice.get_by_role("alert").filter(has_text="You can't delete this entry")
    await expect(refusal).to_be_visible()
    await expect(entry(alice, APOLLO).locator(".badge")).to_have_text("Approved")
    await expect(entry(alice, APOLLO).get_by_role("button", name=re.compile("^Delete"))).to_have_count(0)
    await expect(entry(alice, BOREALIS).locator(".badge")).to_have_text("Rejected")
    await expect(entry(alice, BOREALIS)).to_contain_text(REJECTION)
    await expect(entry(alice, BOREALIS)).to_contain_text("Bob Manager")
    await expect(alice.get_by_test_id("week-total")).to_have_text(f"{baseline + 9.5:g} h")
    await shot(alice, "alice-statuses-and-409")

    # --- carol: the audit trail and its verification --------------------------------------------
    carol, _ = await new_page()
    await sign_in(carol, shot, "carol")
    await expect(carol.get_by_role("heading", name="Audit trail")).to_be_visible()
    nav = carol.get_by_role("navigation", name="Main")
    await expect(nav.get_by_role("link")).to_have_text(["My timesheets", "Audit"])  # no approvals
    chain = carol.get_by_test_id("chain-status")
    await expect(chain).to_contain_text("Chain verified")
    await expect(chain).to_have_attribute("data-ok", "true")
    rows = carol.locator("table.audit-table tbody tr")
    expected = [(p, "Entry added") for p in (APOLLO, BOREALIS, CYGNUS, DELTA)] + [
        (CYGNUS, "Entry deleted"),
        (APOLLO, "Entry approved"),
        (BOREALIS, "Entry rejected"),
    ]
    await wait_for_audit(carol, rows, expected)
    refused = rows.filter(has_text="Decision refused").filter(has_text="Bob Manager")
    await expect(refused.filter(has_text="cannot decide their own").first).to_be_visible()
    await shot(carol, "carol-audit-trail")

    # Filters: only bob's actions.
    await carol.get_by_label("Who").fill("local|bob")
    await carol.get_by_role("button", name="Apply filters").click()
    await expect(rows.filter(has_text="Alice Employee")).to_have_count(0)
    await expect(rows.filter(has_text=APOLLO).filter(has_text="Entry approved").first).to_be_visible()
    await shot(carol, "carol-audit-filtered-bob")
    await carol.get_by_role("button", name="Verify again").click()
    await expect(chain).to_contain_text("Chain verified")

    # The chain is held to its signed checkpoints (signed every second on this platform): the newest
    # one, whether its signature is valid, whether the events still match what it signed.
    checkpoint = carol.get_by_test_id("checkpoint-status")
    for _ in range(30):
        if "Checkpoint #" in await checkpoint.inner_text():
            break
        await carol.wait_for_timeout(500)
        await carol.get_by_role("button", name="Verify again").click()
        await expect(chain).to_contain_text("Chain verified")
    await expect(checkpoint).to_contain_text(re.compile(r"Checkpoint #\d+ covers events 1\u2013\d+, signed"))
    await expect(checkpoint).to_contain_text("signature valid")
    await expect(checkpoint).to_contain_text("chain matches")
    await expect(checkpoint).to_have_attribute("data-matches", "true")
    await shot(carol, "carol-audit-checkpoint")

    # A screen her permissions do not cover says which permission is missing.
    await carol.goto(f"{APP}/approvals")
    missing = carol.get_by_role("alert").filter(has_text="You don't have permission")
    await expect(missing).to_contain_text("approve:timesheets")
    await shot(carol, "carol-approvals-not-permitted")


async def test_phone_width_and_keyboard(new_page: NewPage, shot: Shots) -> None:
    """The week view and the form work at phone width, and the form is reachable in a sensible order."""
    page, _ = await new_page(viewport=PHONE, is_mobile=True, has_touch=True)
    await sign_in(page, shot, "alice")
    await expect(page.get_by_role("heading", name="My timesheets")).to_be_visible()
    await add_entry(page, f"Phone {RUN}", "0.5", "Added on the train")
    await shot(page, "phone-week")
    width = await page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"horizontal scrolling at phone width ({width}px)"

    form = page.locator("form.entry-form")
    await form.get_by_label("Project").focus()
    order = []
    for _ in range(3):
        await page.keyboard.press("Tab")
        order.append(
            await page.evaluate(
                "() => document.activeElement?.getAttribute('name') || document.activeElement?.textContent"
            )
        )
    assert order == ["hours", "notes", "Add entry"], order
    outline = await page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none", "keyboard focus must be visible"
    await shot(page, "phone-keyboard-focus", full_page=False)

    bob, _ = await new_page(viewport=PHONE, is_mobile=True, has_touch=True)
    await sign_in(bob, shot, "bob", path="/approvals")
    await expect(bob.get_by_role("heading", name="Approvals")).to_be_visible()
    await expect(bob.locator("li.approval").filter(has_text=f"Phone {RUN}")).to_be_visible()
    await shot(bob, "phone-approvals")
    assert await bob.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]

    carol, _ = await new_page(viewport=PHONE, is_mobile=True, has_touch=True)
    await sign_in(carol, shot, "carol")
    await expect(carol.get_by_test_id("chain-status")).to_contain_text("Chain verified")
    await shot(carol, "phone-audit")
    assert await carol.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]
