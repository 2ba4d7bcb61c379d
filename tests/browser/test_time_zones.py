"""The app in its users' own time zones, not the UTC every other browser test runs in.

An entry's date is a calendar day (``YYYY-MM-DD``), the day the user worked as the user counts days;
audit records carry instants. So the week view, "today", the entry form's date, the per-day totals and
the approvals list must follow the browser's calendar, never UTC's, and the audit view must show each
record's time, and filter by day, in the browser's time zone.

A user at UTC+14 (Pacific/Kiritimati) and one at UTC-11 (Pacific/Pago_Pago) open the app when their
date is not UTC's: the browser's clock (Playwright's clock, installed before the app loads; the
services keep real time, and the SPA dates its DPoP proofs by the gateway's clock) is set back to the
last Sunday or Monday 10:30 UTC, when it is already Monday 00:30 in Kiritimati and still Sunday 23:30
in Pago Pago: even the ISO week differs from UTC's. The audit records are real-time, so whether their
day differs from UTC's depends on when the test runs; at any hour it does in at least one of the two.

Europe/Berlin's summer-time weeks (a 23-hour Sunday in March, a 25-hour one in October) guard the week
grid against day arithmetic in 24-hour steps of local time.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
from zoneinfo import ZoneInfo

import pytest
from playwright.async_api import Locator, Page, expect

from tests.browser.support import NewPage, Shots, Tokens, api_call_in_page, eventually, sign_in

pytestmark = pytest.mark.browser

RUN = secrets.token_hex(2)
UTC = dt.UTC
DASH = "\u2013"  # between a week's first and last day


def last_utc(weekday: int, hour: int, minute: int) -> dt.datetime:
    """The latest past instant that is ``weekday`` (Monday = 0) ``hour:minute`` UTC."""
    now = dt.datetime.now(UTC)
    at = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    at -= dt.timedelta(days=(at.weekday() - weekday) % 7)
    return at if at < now else at - dt.timedelta(days=7)


def month(day: dt.date) -> str:
    """A pattern for the month's en-GB abbreviation: September is "Sept" in newer ICU data."""
    return "Sept?" if day.month == 9 else f"{day:%b}"


def short(day: dt.date) -> str:
    """A pattern for how the week's range shows a day (en-GB: "30 Nov 2026")."""
    return f"{day.day} {month(day)} {day.year}"


def day_name(day: dt.date) -> str:
    """A pattern for how a day is headed and named in messages (en-GB: "Mon 30 Nov")."""
    return f"{day:%a} {day.day} {month(day)}"


def entry(page: Page, project: str) -> Locator:
    return page.locator(f'li.entry[data-project="{project}"]')


def day_total(page: Page, day: dt.date) -> Locator:
    return page.locator(f'li.day[data-date="{day.isoformat()}"] .day__total')


async def hours(locator: Locator) -> float:
    return float((await locator.inner_text()).removesuffix(" h"))


async def expect_week(page: Page, today: dt.date) -> None:
    """The week of ``today`` (Monday first), with ``today`` marked and the entry form's default date."""
    monday = today - dt.timedelta(days=today.weekday())
    days = [monday + dt.timedelta(days=i) for i in range(7)]
    await expect(page.locator(".screen__subtitle")).to_have_text(
        re.compile(f"^Week {today.isocalendar().week} · {short(days[0])} {DASH} {short(days[6])}$")
    )
    await expect(page.locator("li.day")).to_have_count(7)
    assert [await day.get_attribute("data-date") for day in await page.locator("li.day").all()] == [
        d.isoformat() for d in days
    ]
    await expect(page.locator("li.day--today")).to_have_attribute("data-date", today.isoformat())
    await expect(page.locator("li.day--today .day__name")).to_contain_text(re.compile(day_name(today)))
    await expect(page.get_by_role("button", name="This week")).to_be_disabled()
    await expect(page.get_by_text("Loading your week")).to_have_count(0)


async def add_today(page: Page, project: str, hours_text: str, today: dt.date) -> None:
    """Add an entry with the form's default date, which must be the user's today; it lands on that day."""
    form = page.locator("form.entry-form")
    await expect(form.get_by_label("Date")).to_have_value(today.isoformat())
    before = await hours(day_total(page, today))
    week_before = await hours(page.get_by_test_id("week-total"))
    await form.get_by_label("Project").fill(project)
    await form.get_by_label("Hours").fill(hours_text)
    await form.get_by_role("button", name="Add entry").click()
    await expect(
        page.locator(f'li.day[data-date="{today.isoformat()}"]').locator(entry(page, project))
    ).to_be_visible()
    await expect(day_total(page, today)).to_have_text(f"{before + float(hours_text):g} h")
    await expect(page.get_by_test_id("week-total")).to_have_text(f"{week_before + float(hours_text):g} h")


async def audit_record(page: Page, tokens: Tokens, project: str) -> dict[str, object]:
    """The audit record of ``project``'s creation, straight from the API (with the page's own token).
    The audit view's heading shows before its first API call leaves the page (and before the page's
    request event reaches this process): wait for that call's token rather than read it at once."""
    await eventually(lambda: bool(tokens.seen), "the audit view's first API call")
    for _ in range(40):
        answer = await api_call_in_page(
            page, "GET", "/api/audit/events?action=timesheet.created", tokens.last
        )
        assert answer["status"] == 200, answer["text"]
        for item in json.loads(answer["text"])["items"]:
            if item["details"].get("project") == project:
                return dict(item)
        await page.wait_for_timeout(500)
    raise AssertionError(f"no audit record of {project}")


async def filter_days(page: Page, first: dt.date, last: dt.date) -> None:
    await page.get_by_label("From").fill(first.isoformat())
    await page.get_by_label("To").fill(last.isoformat())
    await page.get_by_role("button", name="Apply filters").click()


@pytest.mark.parametrize(
    ("zone", "locale", "weekday"),
    [
        ("Pacific/Kiritimati", "en-GB", 6),  # Sunday 10:30 UTC: Monday 00:30 there, a new ISO week
        ("Pacific/Pago_Pago", "en-US", 0),  # Monday 10:30 UTC: Sunday 23:30 there, the week before
    ],
)
async def test_a_day_ahead_or_behind_utc(
    new_page: NewPage, shot: Shots, zone: str, locale: str, weekday: int
) -> None:
    instant = last_utc(weekday, 10, 30)
    today = instant.astimezone(ZoneInfo(zone)).date()
    assert today != instant.date()
    project = f"Zone {zone.rsplit('/', 1)[-1]} {RUN}"

    # --- alice: her week, her today, an entry on her today -------------------------------------
    alice, _ = await new_page(timezone_id=zone, locale=locale)
    await alice.clock.install(time=instant)
    await sign_in(alice, shot, "alice")
    await expect_week(alice, today)
    await shot(alice, "alice-week-in-her-zone")
    await add_today(alice, project, "1.25", today)
    await expect(alice.get_by_role("status").filter(has_text=re.compile(day_name(today)))).to_be_visible()
    await shot(alice, "alice-entry-on-her-today")
    # Not on UTC's day, which is in the next or the previous week.
    utc_side = "Previous week" if instant.date() < today else "Next week"
    utc_monday = instant.date() - dt.timedelta(days=instant.weekday())
    async with alice.expect_response(
        lambda r: f"/api/timesheets?from={utc_monday.isoformat()}" in r.url and r.status == 200
    ) as listed:
        await alice.get_by_role("button", name=utc_side).click()
    assert project not in [item["project"] for item in (await (await listed.value).json())["items"]]
    await expect(alice.locator(f'li.day[data-date="{instant.date().isoformat()}"]')).to_have_count(1)
    await expect(entry(alice, project)).to_have_count(0)
    await alice.get_by_role("button", name="This week").click()
    await expect_week(alice, today)
    await expect(entry(alice, project)).to_have_count(1)

    # --- bob, in the same zone (real time): the entry's date as alice chose it ------------------
    bob, _ = await new_page(timezone_id=zone, locale=locale)
    await sign_in(bob, shot, "bob")
    await bob.get_by_role("navigation", name="Main").get_by_role("link", name="Approvals").click()
    card = bob.locator("li.approval").filter(has_text=project)
    await expect(card.locator(".approval__meta")).to_contain_text(
        re.compile(rf"^{today:%A},? {today.day} {today:%B %Y} · 1\.25 h$")
    )
    await shot(bob, "bob-approvals-in-his-zone")

    # --- carol, in the same zone (real time): the record's time and day as the zone counts them ---
    carol, carol_tokens = await new_page(timezone_id=zone, locale=locale)
    await sign_in(carol, shot, "carol")
    await expect(carol.get_by_role("heading", name="Audit trail")).to_be_visible()
    record = await audit_record(carol, carol_tokens, project)
    at = dt.datetime.fromisoformat(str(record["occurred_at"]))
    local = at.astimezone(ZoneInfo(zone))
    await carol.get_by_label("Action").select_option("timesheet.created")
    rows = carol.locator("table.audit-table tbody tr").filter(has_text=project)
    # the zone's full date and time, the year and the UTC offset included (unambiguous next year and
    # in any other zone), the exact instant as the server wrote it in the tooltip and <time datetime>
    offset = local.strftime("%z")
    zone_offset = re.escape(f"UTC{offset[:3]}:{offset[3:]}")
    when = rf"^{local.day} {month(local.date())} {local.year}, {local:%H:%M:%S} {zone_offset}$"
    time_element = rows.locator('td[data-label="When"] time')
    # Its day in the zone shows it, at the zone's time; the day before and the day after (one of them
    # UTC's day when the zone's differs) do not (each checked after it was shown, so never vacuously).
    for other in (local.date() - dt.timedelta(days=1), local.date() + dt.timedelta(days=1)):
        await filter_days(carol, local.date(), local.date())
        await expect(rows.locator('td[data-label="When"]')).to_have_text(re.compile(when))
        await expect(time_element).to_have_attribute("title", str(record["occurred_at"]))
        await expect(time_element).to_have_attribute(
            "datetime", at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        )
        await filter_days(carol, other, other)
        await expect(rows).to_have_count(0)
    await filter_days(carol, local.date(), local.date())
    await expect(rows).to_have_count(1)
    await shot(carol, "carol-audit-the-zones-day")


async def test_summer_time_weeks_in_berlin(new_page: NewPage, shot: Shots) -> None:
    zone = ZoneInfo("Europe/Berlin")
    october = dt.datetime(2026, 10, 25, 10, 0, tzinfo=UTC)  # Sunday: 25 hours, clocks back at 03:00
    march = dt.datetime(2026, 3, 29, 10, 0, tzinfo=UTC)  # Sunday: 23 hours, clocks forward at 02:00
    page, _ = await new_page(timezone_id="Europe/Berlin", locale="de-DE")
    await page.clock.install(time=october)
    await sign_in(page, shot, "alice")
    await expect_week(page, october.astimezone(zone).date())
    await add_today(page, f"Long Sunday {RUN}", "2", october.astimezone(zone).date())
    await shot(page, "alice-week-of-the-25-hour-sunday")
    await page.get_by_role("button", name="Next week").click()
    await expect(page.locator(".screen__subtitle")).to_have_text(f"Week 44 · 26 Oct 2026 {DASH} 1 Nov 2026")
    await expect(page.locator("li.day").first).to_have_attribute("data-date", "2026-10-26")

    # The clock moves to March (as after a sleep: the app looks at the date again when the page is seen).
    await page.clock.set_system_time(march)
    await page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
    await page.get_by_role("button", name="This week").click()
    await expect_week(page, march.astimezone(zone).date())
    await add_today(page, f"Short Sunday {RUN}", "3", march.astimezone(zone).date())
    await shot(page, "alice-week-of-the-23-hour-sunday")
    await page.get_by_role("button", name="Next week").click()
    await expect(page.locator(".screen__subtitle")).to_have_text(f"Week 14 · 30 Mar 2026 {DASH} 5 Apr 2026")
    await page.get_by_role("button", name="Previous week").click()
    await page.get_by_role("button", name="Previous week").click()
    await expect(page.locator(".screen__subtitle")).to_have_text(f"Week 12 · 16 Mar 2026 {DASH} 22 Mar 2026")


async def test_the_week_follows_the_date_past_midnight(new_page: NewPage, shot: Shots) -> None:
    """The app left open on Sunday evening: at midnight (the user's) the new week is shown, Monday is
    "today", and the form offers Monday, not the Sunday of the page's first render (nor, once an entry
    is added, the Monday of the week before)."""
    zone = "Pacific/Kiritimati"
    sunday_evening = last_utc(6, 9, 57)  # 23:57 there
    sunday = sunday_evening.astimezone(ZoneInfo(zone)).date()
    monday = sunday + dt.timedelta(days=1)
    page, _ = await new_page(timezone_id=zone)
    await page.clock.install(time=sunday_evening)
    await sign_in(page, shot, "alice")
    await expect_week(page, sunday)
    await shot(page, "sunday-evening")

    # timers due by then run: 00:02 on Monday. The new week's days show before its entries arrive: wait
    # for them (alice's earlier tests may have written on this Monday), or the day's total read below
    # could be the empty one, the entries landing after it.
    async with page.expect_response(
        lambda r: f"/api/timesheets?from={monday.isoformat()}" in r.url and r.status == 200
    ) as listed:
        await page.clock.fast_forward("05:00")
    week = await (await listed.value).json()
    if week["next_cursor"] is None:
        recorded = sum(float(item["hours"]) for item in week["items"] if item["date"] == monday.isoformat())
        await expect(day_total(page, monday)).to_have_text(f"{recorded:g} h")
    await expect_week(page, monday)
    await expect(page.locator("form.entry-form").get_by_label("Date")).to_have_value(monday.isoformat())
    await add_today(page, f"Past midnight {RUN}", "0.5", monday)
    await expect(page.locator("form.entry-form").get_by_label("Date")).to_have_value(monday.isoformat())
    await shot(page, "monday-after-midnight")

    # A computer asleep over midnight runs no timer: the date is checked again when the page is seen.
    await page.clock.set_system_time(sunday_evening + dt.timedelta(days=1, minutes=10))
    await page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
    tuesday = monday + dt.timedelta(days=1)
    await expect_week(page, tuesday)
    await expect(page.locator("form.entry-form").get_by_label("Date")).to_have_value(tuesday.isoformat())
