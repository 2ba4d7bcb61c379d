"""The SPA while the gateway is frozen: its kernel still accepts connections and takes the requests, the
process answers nothing (a pod stopped by SIGSTOP, a hung ingress). Chromium has no fetch timeout, so
without its own the app would say "Adding…" forever; with it, every attempt ends after
``requestTimeoutMs`` (config.json), the create's retries run on their schedule, and the user is told
that the entry may not have been saved — with the entry still in the form, sent again with the same
Idempotency-Key once the gateway answers again.

The gateway is frozen for real (SIGSTOP to its supervisor and workers, SIGCONT after); the long waits
(each attempt's timeout, the back-off) pass on the page's clock, so the test takes seconds.
"""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

import pytest
from playwright.async_api import expect

from devstack.platform import Platform
from tests.browser.support import APP, NewPage, Shots, frozen, sign_in, stored, through_back_off

pytestmark = pytest.mark.browser

#: how far the page's clock jumps at each step of :func:`through_back_off` (every 0.1 s real): the
#: app's request timeout (config.json ``requestTimeoutMs``, 43 s with the gateway's defaults) times four
#: attempts plus their back-off is about three minutes of page time, passed in about two real seconds
STEP_MS = 10_000


async def test_create_while_the_gateway_is_frozen(new_page: NewPage, shot: Shots, platform: Platform) -> None:
    """Alice adds an entry while the gateway is frozen: after the attempts time out she is told that it
    may not have been saved (never an endless "Adding…"), the form keeps it; once the gateway answers
    again, Add entry stores it once."""
    page, tokens = await new_page()
    await page.clock.install()
    await sign_in(page, shot, "alice")
    await expect(page.get_by_text("Loading your week")).to_have_count(0)
    project = f"Frozen {uuid4().hex[:8]}"
    await page.get_by_label("Project").fill(project)
    await page.get_by_label("Hours", exact=True).fill("0.75")
    form_alert = page.locator("form").get_by_role("alert")
    posted: list[str | None] = []
    page.on(
        "request",
        lambda r: (
            posted.append(r.headers.get("idempotency-key"))
            if r.method == "POST" and r.url == f"{APP}/api/timesheets"
            else None
        ),
    )

    async with frozen(platform, "gateway"):
        await page.get_by_role("button", name="Add entry").click()
        await expect(page.get_by_role("button", name="Adding…")).to_be_disabled()
        # 8 real seconds are 13 minutes on the page's clock: far beyond every attempt and back-off
        told = expect(form_alert).to_contain_text("may not have been saved", timeout=8_000)
        await through_back_off(page, told, STEP_MS)
        await expect(page.get_by_role("button", name="Add entry")).to_be_enabled()
        await expect(page.get_by_label("Project")).to_have_value(project)
        await expect(page.get_by_label("Hours", exact=True)).to_have_value("0.75")
        await shot(page, "gateway-frozen")
        assert len(posted) == 4, f"attempts while frozen: {posted}"  # the first and three retries
        assert posted[0], "the create carried no Idempotency-Key"
        assert len(set(posted)) == 1, f"Idempotency-Key per attempt: {posted}"

    # Continued: the same entry again carries the same key, so it is stored once whatever the
    # attempts queued in the frozen gateway's socket did once it read them.
    await page.get_by_role("button", name="Add entry").click()
    await through_back_off(
        page, expect(page.locator(f'[data-project="{project}"]')).to_have_count(1, timeout=10_000), STEP_MS
    )
    await expect(form_alert).to_have_count(0)
    # the page's clock back to the real time: the test's own request's DPoP proof is dated by it
    await page.clock.set_system_time(datetime.now(UTC))
    assert len(await stored(page, tokens, project)) == 1
    assert set(posted) == {posted[0]}, f"Idempotency-Key per attempt: {posted}"
    await shot(page, "gateway-continued")
