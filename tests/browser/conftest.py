"""Browser end-to-end fixtures: the whole platform as `make dev` runs it, and headless Chromium.

The platform is started once per session with ``devstack.Platform`` on its fixed ports (the SPA's
redirect URIs are registered for ``http://localhost:8080``), against this session's own database,
and an embedded Redis as ``make dev`` starts it (under the state dir: each service as its own ACL
user, the default user PING-only). Every screen a test visits is saved as a PNG under
``test-output/screenshots/<test name>/`` so a reviewer can see the app without running it.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import AsyncIterator, Generator
from pathlib import Path
from typing import Any

import pytest
from _pytest.reports import TestReport
from playwright.async_api import Browser, BrowserContext, Page, ViewportSize, async_playwright

from devstack.backing import port_is_free
from devstack.platform import SERVICES, Platform
from testkit.fixtures import IsolatedEnv
from tests.browser.support import (
    APP,
    CHROMIUM,
    CHROMIUM_ARGS,
    DESKTOP,
    OUTPUT,
    SCREENSHOTS,
    SDK_ORIGIN,
    NewPage,
    Shots,
    Tokens,
    write_gallery,
)


@pytest.fixture(scope="package")
async def platform(isolated_env: IsolatedEnv) -> AsyncIterator[Platform]:
    """The five services, migrated and seeded, with the SPA built, exactly as ``make dev`` runs them."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make system-deps` (Debian package chromium)")
    busy = [f"{s.name} :{s.port}" for s in SERVICES if not port_is_free(s.port)]
    if busy:
        pytest.fail("ports in use, stop `make dev` first: " + ", ".join(busy))
    state = OUTPUT / "browser-platform"
    shutil.rmtree(state, ignore_errors=True)
    env = isolated_env("browser")
    stack = Platform(
        {
            # no REDIS_URL: devstack's embedded Redis, each service as its own user (svckit.redisacl)
            **{key: env[key] for key in ("DATABASE_URL", "REDIS_KEY_PREFIX", "DB_ROLE_PREFIX")},
            "AUDIT_CHECKPOINT_INTERVAL_SECONDS": "1",  # the audit page shows a checkpoint within seconds
            # denials reach the trail a couple of seconds after they happen, not a minute (the default)
            "AUDIT_DENIAL_WINDOW_SECONDS": "2",
            "CORS_ORIGINS": f"{APP},{SDK_ORIGIN}",  # the SDK harness calls the API from its own origin
            # DPoP server nonces on, at the provider and the gateway: every client here (the SPA, the
            # SDKs) must follow use_dpop_nonce / DPoP-Nonce (RFC 9449 §8, §9)
            "DPOP_NONCES": "true",
            "DPOP_NONCE_SECRET": "browser-tests-gateway-dpop-nonce-secret",
        },
        state_dir=state,
        sink=lambda name, line: None,  # logs are kept in test-output/browser-platform/logs/
    )
    try:
        await asyncio.to_thread(stack.start, 120.0)
        await asyncio.sleep(0.5)
        # A service that lost the race for its fixed port exits while a stranger answers /readyz there.
        dead = [f"{n} (exit {p.returncode})" for n, p in stack.processes.items() if p.poll() is not None]
        if dead:
            pytest.fail(
                "platform services exited after start-up (is something else using ports 8080/9000/"
                f"8101-8103?): {', '.join(dead)}; logs in {state / 'logs'}"
            )
        yield stack
    finally:
        await asyncio.to_thread(stack.stop)


#: where each service's log stood when the running test started (the platform's logs/ folder)
LOG_MARKS = pytest.StashKey[dict[Path, int]]()
#: lines of each service's log a failed test's report shows at most (the last ones it wrote)
LOG_LINES_ON_FAILURE = 40


def mark_platform_logs(item: pytest.Item, platform: Platform) -> None:
    """Note where each log ends, so a failure's report can show what the platform logged during it."""
    item.stash[LOG_MARKS] = {
        path: path.stat().st_size for path in sorted((platform.state_dir / "logs").glob("*.log"))
    }


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, TestReport, TestReport]:
    """A failed browser test's report carries what the services logged while it ran: CI keeps the
    printed report, not test-output/, and a renewal that timed out under load is otherwise a bare
    "timed out" with nothing to say which hop was slow or what it answered."""
    report: TestReport = yield
    marks = item.stash.get(LOG_MARKS, None)
    if report.failed and report.when == "call" and marks:
        for path, start in marks.items():
            with path.open("rb") as log:
                log.seek(start)
                lines = log.read().decode("utf-8", "replace").splitlines()
            shown = "\n".join(lines[-LOG_LINES_ON_FAILURE:]) or "(nothing logged during the test)"
            report.sections.append(
                (f"{path.stem} log during the test (last {LOG_LINES_ON_FAILURE} lines)", shown)
            )
    return report


@pytest.fixture(scope="package")
async def browser(platform: Platform) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()
            if SCREENSHOTS.exists():
                write_gallery()


@pytest.fixture
def shot(request: pytest.FixtureRequest) -> Shots:
    return Shots(SCREENSHOTS / re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name))


@pytest.fixture
async def new_page(
    browser: Browser, platform: Platform, request: pytest.FixtureRequest
) -> AsyncIterator[NewPage]:
    """A fresh browser profile per user (own cookies at the provider), desktop size by default, in
    British English and UTC unless a test names another ``locale`` or ``timezone_id`` (the user's own
    time zone: tests/browser/test_time_zones.py). A failure's report shows the platform's logs of the
    test (:func:`pytest_runtest_makereport`)."""
    mark_platform_logs(request.node, platform)
    contexts: list[BrowserContext] = []
    errors: list[str] = []

    async def make(viewport: ViewportSize = DESKTOP, **options: Any) -> tuple[Page, Tokens]:
        options.setdefault("locale", "en-GB")
        options.setdefault("timezone_id", "UTC")
        context = await browser.new_context(viewport=viewport, **options)
        context.set_default_timeout(15_000)
        contexts.append(context)
        page = await context.new_page()
        tokens = Tokens()
        page.on("request", tokens.on_request)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on(
            "console",
            lambda message: (
                errors.append(message.text)
                if message.type == "error" and "Content Security Policy" in message.text
                else None
            ),
        )
        return page, tokens

    yield make
    for context in contexts:
        await context.close()
    assert not errors, f"uncaught errors or CSP violations in the page: {errors}"
