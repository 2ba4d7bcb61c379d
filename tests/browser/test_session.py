"""Session lifetime: silent renewal before the access token expires, and sign-out at the provider.

The browser's clock is moved past the access token's lifetime (Playwright's clock: the SPA's timers
and `Date` jump forward; the provider and gateway keep real time). The app must renew silently with
`prompt=none` in a hidden iframe and keep working with a new token; when the provider session is gone
it must say so and offer to sign in again. Sign-out must end the provider session, not just the app's.
"""

from __future__ import annotations

import re
from datetime import date, timedelta

import pytest
from playwright.async_api import Page, Request, Response, Route, expect

from tests.browser.support import APP, PROVIDER, NewPage, Shots, eventually, provider_sign_in, sign_in

pytestmark = pytest.mark.browser

PAST_EXPIRY = "16:00"  # minutes:seconds; the identity service's access tokens live 15 minutes


# the page's own week: Monday of its today in UTC (the contexts' time zone), by the page's clock
THIS_MONDAY_JS = """() => {
  const day = new Date();
  day.setUTCDate(day.getUTCDate() - ((day.getUTCDay() + 6) % 7));
  return day.toISOString().slice(0, 10);
}"""


async def refetch_week(page: Page) -> None:
    """The next week shown, then this one again, each once its own fetch was answered. Not only once
    "Loading your week" is gone: back at this week the page shows the entries it already had while
    the fetches run, so the next week's GET could still be on its way when a test goes on (and be
    answered while the test counts answers)."""
    this_monday = date.fromisoformat(await page.evaluate(THIS_MONDAY_JS))
    for name, monday in (("Next week", this_monday + timedelta(days=7)), ("This week", this_monday)):
        sent: list[Request] = []

        def track(request: Request, sent: list[Request] = sent, week: str = f"from={monday}") -> None:
            if "/api/timesheets" in request.url and week in request.url:
                sent.append(request)

        # the answer that loads the week (a 401 asking for the gateway's DPoP nonce is retried)
        def loads(response: Response, sent: list[Request] = sent) -> bool:
            return response.request in sent and response.ok

        page.on("request", track)
        try:
            async with page.expect_response(loads):
                await page.get_by_role("button", name=name).click()
        finally:
            page.remove_listener("request", track)
    await expect(page.get_by_text("Loading your week")).to_have_count(0)


def silent_authorize(page: Page) -> list[str]:
    seen: list[str] = []
    page.on(
        "request",
        lambda r: (
            seen.append(r.url)
            if r.url.startswith(f"{PROVIDER}/authorize") and "prompt=none" in r.url
            else None
        ),
    )
    return seen


@pytest.mark.parametrize("flow", ["code", "implicit"])
async def test_expired_session_renews_silently(new_page: NewPage, shot: Shots, flow: str) -> None:
    page, tokens = await new_page()
    await page.clock.install()
    silent = silent_authorize(page)
    await sign_in(page, shot, "alice", path=f"/?flow={flow}")
    await refetch_week(page)
    first = tokens.last
    await shot(page, f"signed-in-{flow}")

    await page.clock.fast_forward(PAST_EXPIRY)
    await eventually(lambda: len(silent) > 0, "a prompt=none request in the hidden iframe")
    assert "response_mode=web_message" in silent[0]
    await expect(page.get_by_test_id("user-name")).to_have_text("Alice Employee")
    await refetch_week(page)
    await eventually(lambda: tokens.last != first, "the API called with a new access token")
    await expect(page.get_by_role("alert")).to_have_count(0)
    assert len(tokens.seen) >= 2
    await shot(page, "renewed-silently-still-signed-in")


async def test_renewal_without_provider_session_asks_to_sign_in_again(new_page: NewPage, shot: Shots) -> None:
    page, _ = await new_page()
    await page.clock.install()
    await sign_in(page, shot, "alice")
    # The provider session ends elsewhere (another tab of the same browser).
    other = await page.context.new_page()
    await other.goto(f"{PROVIDER}/v2/logout")
    await expect(other.get_by_role("heading", name="Signed out")).to_be_visible()
    await shot(other, "provider-signed-out-in-another-tab")
    await other.close()

    await page.clock.fast_forward(PAST_EXPIRY)
    alert = page.get_by_role("alert")
    await expect(alert).to_contain_text("Please sign in again")
    await expect(alert).to_contain_text("session at the sign-in service has ended")
    await shot(page, "session-ended-sign-in-again")
    await page.get_by_role("button", name=re.compile("^Sign in")).click()
    await page.wait_for_url(re.compile(rf"^{re.escape(PROVIDER)}/login"))
    await shot(page, "provider-asks-for-password")


async def test_api_401_renews_once_then_asks_to_sign_in_again(new_page: NewPage, shot: Shots) -> None:
    """The gateway refuses the token (401): one silent renewal and a retry, then a clear message."""
    page, tokens = await new_page()
    await sign_in(page, shot, "alice")
    await refetch_week(page)
    first = tokens.last
    silent = silent_authorize(page)
    # per URL, the token each refused request carried as the app sent it, and what the gateway
    # answered: the answers of these requests only, not of one the page sent before the route was in
    # place (an answer to it is not an answer to a refused request, however its URL reads)
    carried: dict[str, list[str]] = {}
    answered: dict[str, list[int]] = {}
    refused: list[Request] = []

    async def spoil_token(route: Route) -> None:
        refused.append(route.request)
        carried.setdefault(route.request.url, []).append(route.request.headers["authorization"].split()[-1])
        headers = {**route.request.headers, "authorization": "Bearer not.a.token"}
        await route.continue_(headers=headers)

    def note(response: Response) -> None:
        if response.request in refused:
            answered.setdefault(response.url, []).append(response.status)

    page.on("response", note)
    await page.route(f"{APP}/api/timesheets*", spoil_token)
    await page.get_by_role("button", name="Next week").click()
    alert = page.get_by_role("alert").filter(has_text="Please sign in again")
    await expect(alert).to_be_visible()
    # the alert follows the next week's last answer; another call's retry may still be on its way
    await eventually(
        lambda: all(len(answered.get(url, [])) == len(sent) for url, sent in carried.items()),
        "an answer to every refused request",
    )
    # One renewal, however the refusals interleave with it. Should a fetch of the current week still
    # be on its way when the route is set (sign_in does not wait for it), two calls can be refused
    # for the first token:
    # whichever 401 comes first renews; the other call, refused before or after the renewal finished,
    # shares it and retries with the new token. A call first sent with the new token is refused once
    # and not renewed again: a token that a 401's renewal brought and the gateway refuses is final.
    assert len(silent) == 1, silent
    renewed = {token for sequence in carried.values() for token in sequence} - {first}
    assert len(renewed) == 1, carried
    [second] = renewed
    assert len(carried) <= 2, carried
    for url, sequence in carried.items():
        assert sequence in ([first, second], [second]), (url, carried)
        assert answered[url] == [401] * len(sequence), (url, answered)
    await shot(page, "api-401-sign-in-again")

    await page.unroute(f"{APP}/api/timesheets*")
    await alert.get_by_role("button", name="Sign in again").click()
    # Still signed in at the provider: straight back, working again.
    await page.wait_for_url(re.compile(rf"^{re.escape(APP)}/"))
    await expect(page.get_by_role("heading", name="My timesheets")).to_be_visible()
    await expect(page.get_by_role("alert")).to_have_count(0)
    await shot(page, "signed-in-again")


async def test_sign_out_ends_the_provider_session(new_page: NewPage, shot: Shots) -> None:
    page, _ = await new_page()
    await sign_in(page, shot, "bob")
    await shot(page, "bob-signed-in")
    # Wait for the provider's logout itself: the SPA shows "Sign in" as soon as it forgets the tokens,
    # and a signed-in page may already be at APP/, so neither of those says the browser went there.
    async with page.expect_request(lambda r: "logout" in r.url) as went:
        await page.get_by_role("button", name="Sign out").click()
    assert (await went.value).url.startswith(f"{PROVIDER}/"), (await went.value).url
    await page.wait_for_url(f"{APP}/")
    await expect(page.get_by_role("button", name=re.compile("^Sign in"))).to_be_visible()
    await shot(page, "signed-out")

    # A reload does not bring the session back, and signing in asks for the password again.
    await page.reload()
    await expect(page.get_by_role("button", name=re.compile("^Sign in"))).to_be_visible()
    await page.get_by_role("button", name=re.compile("^Sign in")).click()
    await page.wait_for_url(re.compile(rf"^{re.escape(PROVIDER)}/login"))
    await expect(page.locator("input[name=password]")).to_be_visible()
    await shot(page, "provider-asks-for-password-again")


async def test_reload_restores_the_session_silently(new_page: NewPage, shot: Shots) -> None:
    page, _ = await new_page()
    await sign_in(page, shot, "carol")
    await expect(page.get_by_role("heading", name="Audit trail")).to_be_visible()
    await page.reload()
    await expect(page.get_by_role("heading", name="Audit trail")).to_be_visible()
    await expect(page.get_by_test_id("user-name")).to_have_text("Carol Auditor")
    await shot(page, "carol-after-reload")


@pytest.mark.parametrize("flow", ["code", "implicit"])
async def test_a_sign_in_answer_naming_another_provider_is_refused(
    new_page: NewPage, shot: Shots, flow: str
) -> None:
    # a mix-up (RFC 9207, RFC 9700 4.4): the answer reaching the app names another authorization
    # server than the one it asked. The provider's answer (a query for a code, a fragment for the
    # implicit tokens) is rewritten on its way; the app must refuse it before using it (no code
    # redeemed, no API call) and say why. The browser follows the provider's redirects without
    # routing them, so the sign-in form's POST is answered here: it goes on to /authorize as the
    # browser would (same cookies), and the answer's redirect comes back with its iss replaced
    page, tokens = await new_page()
    redeemed: list[str] = []
    page.on(
        "request", lambda r: redeemed.append(r.url) if r.url.startswith(f"{PROVIDER}/oauth/token") else None
    )
    swapped: list[str] = []

    async def swap_issuer(route: Route) -> None:
        signed_in = await route.fetch(max_redirects=0)
        location = signed_in.headers.get("location", "")
        if route.request.method != "POST" or not location.startswith("/authorize"):
            await route.fulfill(response=signed_in)
            return
        answer = await page.context.request.get(PROVIDER + location, max_redirects=0)
        callback = answer.headers.get("location", "")
        assert callback.startswith(f"{APP}/callback"), callback
        assert "iss=" in callback, callback
        swapped.append(callback)
        forged = re.sub(r"iss=[^&]*", "iss=https%3A%2F%2Fidentity.attacker.example%2F", callback)
        await route.fulfill(status=303, headers={"location": forged, "cache-control": "no-store"})

    await page.route(re.compile(rf"^{re.escape(PROVIDER)}/login"), swap_issuer)
    await page.goto(f"{APP}/?flow={flow}")
    await page.get_by_role("button", name=re.compile(r"^Sign in")).click()
    await provider_sign_in(page, shot, "alice")
    alert = page.get_by_role("alert")
    await expect(alert).to_contain_text("Sign-in answer rejected")
    await shot(page, f"mix-up-refused-{flow}")
    assert swapped, "the provider's answer did not carry iss"
    assert redeemed == [], "the code was redeemed"
    assert tokens.seen == [], "the API was called"
    await expect(page.get_by_role("button", name="Sign out")).to_have_count(0)
