"""The audit view names why the identity provider refused something: a label people read, with the
code the provider recorded beside it (what support searches the logs and metrics for)."""

from __future__ import annotations

import re

from playwright.async_api import expect

from tests.browser.support import APP, NewPage, Shots, provider_sign_in, sign_in


async def test_a_refused_sign_in_reads_as_its_reason_with_the_code(new_page: NewPage, shot: Shots) -> None:
    someone, _ = await new_page()
    await someone.goto(APP + "/")
    await someone.get_by_role("button", name=re.compile(r"^Sign in")).click()
    await provider_sign_in(someone, shot, "alice", password="not-the-password")
    await expect(someone.locator("input[name=password]")).to_be_visible()  # still at the provider
    await shot(someone, "provider-refused")

    carol, _ = await new_page()
    await sign_in(carol, shot, "carol")
    await carol.get_by_label("Action").select_option("access.denied")
    reasons = carol.locator('table.audit-table tbody tr .audit-reason[data-reason="invalid_credentials"]')
    for _ in range(40):  # the provider's denials reach the trail when their window ends, then its outbox
        await carol.get_by_role("button", name="Apply filters").click()
        await carol.wait_for_timeout(500)
        if await reasons.count():
            break
    reason = reasons.first
    await expect(reason).to_have_text("wrong user name or passwordinvalid_credentials")
    await expect(reason.locator("code")).to_have_text("invalid_credentials")
    await expect(reason).to_have_attribute("title", "Reason code: invalid_credentials")
    row = carol.locator("table.audit-table tbody tr").filter(
        has=carol.locator('.audit-reason[data-reason="invalid_credentials"]')
    )
    await expect(row.first).to_contain_text("Access denied")
    await expect(row.first).not_to_contain_text("invalid credentials")  # no longer the spaced code
    await shot(carol, "carol-audit-provider-denial")
