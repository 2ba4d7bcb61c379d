"""Signing in while the identity service is frozen: its kernel still accepts the connection and takes the
code exchange's request, the process answers nothing (a pod stopped by SIGSTOP). Chromium gives a fetch
no timeout of its own, so without the SPA's (oidc-client-ts' ``requestTimeoutInSeconds``, from
config.json's ``requestTimeoutMs``) the page would say "Loading Timesheets…" for ever; with it, the
user is told within that bound that the sign-in service did not answer, and signs in with Sign in once
it answers again.

The identity service is frozen for real as the browser sends it the code exchange (SIGSTOP to its
supervisor and workers, SIGCONT after); the bound passes on the page's clock, so the test takes seconds.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import psutil
import pytest
from playwright.async_api import Route, expect

from devstack.platform import Platform
from tests.browser.support import (
    APP,
    PROVIDER,
    NewPage,
    Shots,
    continue_processes,
    eventually,
    provider_sign_in,
    stop_processes,
    through_back_off,
)

pytestmark = pytest.mark.browser

#: how far the page's clock jumps at each step of :func:`through_back_off` (every 0.1 s real): the
#: token request's bound (``requestTimeoutMs``, 43 s with the gateway's defaults) in about a second
STEP_MS = 5_000

#: In-page: from now on, notes the page's time (``window.toldAt``) when an alert saying ``text`` is
#: first shown (a mutation observer's callback runs right after the render, before any clock jump).
NOTE_WHEN_TOLD_JS = """(text) => {
  const observer = new MutationObserver(() => {
    if ([...document.querySelectorAll("[role=alert]")].some((e) => e.textContent.includes(text))) {
      window.toldAt = Date.now();
      observer.disconnect();
    }
  });
  observer.observe(document, { childList: true, subtree: true, characterData: true });
}"""


async def test_sign_in_while_the_identity_service_is_frozen(
    new_page: NewPage, shot: Shots, platform: Platform
) -> None:
    """Alice signs in; the identity service freezes as her code comes to be exchanged: within
    ``requestTimeoutMs`` she is told that the sign-in service didn't answer (never an endless
    "Loading…"), on the sign-in screen; once it answers again, Sign in signs her in."""
    page, _ = await new_page()
    bound_ms = (await (await page.request.get(f"{APP}/config.json")).json())["requestTimeoutMs"]
    await page.clock.install()
    stopped: list[psutil.Process] = []

    async def freeze_then_send(route: Route) -> None:
        # the browser is back at the app with the code: the identity service stops before it gets
        # the exchange, which then waits in its socket
        if route.request.method == "POST" and not stopped:
            stopped.extend(stop_processes(platform, "identity"))
        await route.continue_()

    await page.route(f"{PROVIDER}/oauth/token", freeze_then_send)
    try:
        await page.goto(APP + "/")
        await page.get_by_role("button", name="Sign in").click()
        await provider_sign_in(page, shot, "alice")
        await eventually(lambda: bool(stopped), "the code exchange sent to the identity service")
        message = "The sign-in service didn't answer"
        await page.evaluate(NOTE_WHEN_TOLD_JS, message)
        frozen_at = await page.evaluate("Date.now()")
        await expect(page.get_by_role("status")).to_have_text("Loading Timesheets…")
        told = page.get_by_role("alert").filter(has_text=message)
        # 8 real seconds are several minutes on the page's clock: far beyond the bound
        await through_back_off(page, expect(told).to_be_visible(timeout=8_000), STEP_MS)
        waited_ms = await page.evaluate("window.toldAt") - frozen_at
        # the exchange's timer started a moment before `frozen_at` was read; the clock jumps by steps
        assert bound_ms - 1_000 <= waited_ms <= bound_ms + STEP_MS, f"told after {waited_ms} ms"
        await expect(told).to_contain_text("sign in again")
        await expect(page.get_by_role("button", name="Sign in")).to_be_enabled()
        await shot(page, "identity-frozen")
    finally:
        continue_processes(stopped)
    await page.unroute(f"{PROVIDER}/oauth/token")

    # Continued: Sign in again goes through (the provider remembers Alice, or asks her again). The
    # page's clock back to the real time first: the new tokens are dated by the provider's.
    await page.clock.set_system_time(datetime.now(UTC))
    await page.get_by_role("button", name="Sign in").click()
    signed_in = page.get_by_role("button", name="Sign out")
    form = page.locator("input[name=username]")
    await expect(signed_in.or_(form)).to_be_visible()
    if await form.is_visible():
        await provider_sign_in(page, shot, "alice")
    await page.wait_for_url(re.compile(rf"^{re.escape(APP)}/"))
    await expect(signed_in).to_be_visible()
    await expect(page.get_by_test_id("user-name")).to_be_visible()
    await shot(page, "identity-continued")
