"""Helpers of the browser tests: where things are, screenshots, the provider's sign-in form."""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import re
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page, Request, ViewportSize
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from devstack.platform import ROOT, SERVICES, Platform

APP = "http://localhost:8080"
PROVIDER = "http://localhost:9000"
# the SDK harness's own origin (tests/browser/test_sdk_dpop.py): a browser app on another origin than
# the gateway's, which the gateway's CORS_ORIGINS lists beside the SPA's
SDK_ORIGIN = "http://localhost:8090"
PASSWORD = "demo"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
OUTPUT = ROOT / "test-output"
SCREENSHOTS = OUTPUT / "screenshots"
DESKTOP: ViewportSize = {"width": 1280, "height": 860}
PHONE: ViewportSize = {"width": 390, "height": 844}


class Shots:
    """Numbered screenshots of one test: ``01-alice-signed-in.png``, ``02-…``."""

    def __init__(self, folder: Path) -> None:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        self.folder = folder
        self.count = 0

    async def __call__(self, page: Page, name: str, *, full_page: bool = True) -> Path:
        self.count += 1
        path = self.folder / f"{self.count:02d}-{name}.png"
        await page.wait_for_load_state("load")
        try:
            await page.screenshot(
                path=str(path), full_page=full_page, animations="disabled", caret="initial", timeout=10_000
            )
        except PlaywrightError as exc:
            # Headless Chromium on a starved machine sometimes never hands over the frame of a page
            # that has just navigated (CI saw a 15 s hang after "fonts loaded", and once "Unable to
            # capture screenshot" right after a sign-out's redirect). A screenshot is evidence, not
            # the check: ask once more for a fresh frame, with more time.
            if not isinstance(exc, PlaywrightTimeoutError) and "Unable to capture screenshot" not in str(exc):
                raise
            await page.bring_to_front()
            await page.wait_for_load_state("load")
            await page.screenshot(path=str(path), full_page=full_page, caret="initial", timeout=30_000)
        return path


@dataclass(frozen=True)
class SentCall:
    """One API request as the page sent it: what a token thief could copy out of it."""

    method: str
    url: str
    scheme: str  # Bearer or DPoP
    token: str
    proof: str | None


class Tokens:
    """Access tokens the page sent to the API, in order (for renewal checks and direct API probes),
    and every call's authorisation (scheme, token and DPoP proof)."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.calls: list[SentCall] = []

    def on_request(self, request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if request.url.startswith(APP + "/api/") and scheme in ("Bearer", "DPoP") and token:
            self.calls.append(
                SentCall(request.method, request.url, scheme, token, request.headers.get("dpop"))
            )
            if not self.seen or self.seen[-1] != token:
                self.seen.append(token)

    @property
    def last(self) -> str:
        assert self.seen, "the page has not called the API with a token yet"
        return self.seen[-1]


NewPage = Callable[..., Awaitable[tuple[Page, Tokens]]]


async def provider_sign_in(page: Page, shot: Shots, username: str, password: str = PASSWORD) -> None:
    """Fill the identity service's sign-in form (inputs `username`/`password`, one submit button)."""
    await page.wait_for_url(re.compile(rf"^{re.escape(PROVIDER)}/login"))
    await page.locator("input[name=username]").wait_for()
    await shot(page, f"provider-sign-in-{username}")
    await page.fill("input[name=username]", username)
    await page.fill("input[name=password]", password)
    await page.locator("form button[type=submit]").first.click()


async def sign_in(page: Page, shot: Shots, username: str, path: str = "/") -> None:
    """From the app's sign-in screen through the provider and back, signed in."""
    await page.goto(APP + path)
    button = page.get_by_role("button", name=re.compile(r"^Sign in"))
    await button.wait_for()
    await shot(page, f"signed-out-{username}")
    await button.click()
    await provider_sign_in(page, shot, username)
    await page.wait_for_url(re.compile(rf"^{re.escape(APP)}/"))
    await page.get_by_role("button", name="Sign out").wait_for()


# In-page: the SPA's DPoP key pair as oidc-client-ts keeps it in IndexedDB (database "oidc", object
# store "dpop", keyed by client id), or null. Page scripts can use the key but never read it out.
DPOP_KEYS_JS = """async (clientId) => {
  const db = await new Promise((resolve, reject) => {
    const request = indexedDB.open("oidc");
    request.onupgradeneeded = () => request.result.createObjectStore("dpop");
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
  const state = await new Promise((resolve, reject) => {
    const request = db.transaction("dpop", "readonly").objectStore("dpop").get(clientId);
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
  db.close();
  return state && state.keys;
}"""

# In-page: an API call authorised like the SPA's, with a proof signed by its IndexedDB key (what
# script running in the page, the app's own or an injected one, can do while the page is open).
API_CALL_JS = """async ([clientId, method, path, token, body]) => {
  const keys = await (KEYS)(clientId);
  const b64 = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes)))
    .replace(/[+]/g, "-").replace(/[/]/g, "_").replace(/=+$/, "");
  const json = (value) => b64(new TextEncoder().encode(JSON.stringify(value)));
  const jwk = await crypto.subtle.exportKey("jwk", keys.publicKey);
  const url = new URL(path, location.href);
  const ath = b64(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(token)));
  const publicJwk = { kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y };
  const send = async (nonce) => {
    const claims = { jti: crypto.randomUUID(), htm: method, htu: url.origin + url.pathname,
                     iat: Math.floor(Date.now() / 1000), ath, ...(nonce ? { nonce } : {}) };
    const input = json({ typ: "dpop+jwt", alg: "ES256", jwk: publicJwk }) + "." + json(claims);
    const signature = await crypto.subtle.sign({ name: "ECDSA", hash: "SHA-256" }, keys.privateKey,
                                               new TextEncoder().encode(input));
    const headers = { authorization: "DPoP " + token, dpop: input + "." + b64(signature) };
    if (body !== null) headers["content-type"] = "application/json";
    return fetch(url, { method, headers, body: body === null ? null : JSON.stringify(body) });
  };
  let response = await send(null);
  const nonce = response.headers.get("dpop-nonce");
  if (response.status === 401 && nonce) response = await send(nonce);  /* use_dpop_nonce */
  return { status: response.status, contentType: response.headers.get("content-type"),
           text: await response.text() };
}""".replace("KEYS", DPOP_KEYS_JS)


async def api_call_in_page(
    page: Page, method: str, path: str, token: str, body: Any = None, client_id: str = "timesheets-spa"
) -> dict[str, Any]:
    """``method path`` through the gateway from inside the page, with ``token`` and a proof from the
    SPA's own DPoP key: a direct API probe with the user's credentials (a DPoP-bound token is useless
    from anywhere else)."""
    answer: dict[str, Any] = await page.evaluate(API_CALL_JS, [client_id, method, path, token, body])
    return answer


async def assert_no_tokens_stored(page: Page, tokens: Tokens) -> None:
    """Tokens live in memory only: neither Web Storage area holds the access token."""
    stored = await page.evaluate(
        "() => JSON.stringify([Object.entries(localStorage), Object.entries(sessionStorage)])"
    )
    for token in tokens.seen:
        assert token not in stored
        assert token.split(".")[1] not in stored


async def eventually(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Wait until ``check()`` holds (for conditions observed through page events)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.1)


def write_gallery(folder: Path = SCREENSHOTS) -> Path:
    """``index.html`` showing every screenshot, grouped by test, for a reviewer's browser."""
    parts = [
        "<!doctype html><meta charset=utf-8><title>Timesheets SPA screenshots</title>",
        "<style>body{font-family:system-ui;margin:24px;background:#f5f6fa}figure{display:inline-block;"
        "margin:8px;vertical-align:top}img{max-width:420px;border:1px solid #ccd;background:#fff}"
        "figcaption{font-size:13px;color:#444}</style><h1>Timesheets SPA — screens visited by the tests</h1>",
    ]
    for test in sorted(p for p in folder.iterdir() if p.is_dir()):
        parts.append(f"<h2>{html.escape(test.name)}</h2>")
        for image in sorted(test.glob("*.png")):
            src = html.escape(f"{test.name}/{image.name}")
            parts.append(
                f'<figure><a href="{src}"><img src="{src}" loading="lazy" alt=""></a>'
                f"<figcaption>{html.escape(image.stem)}</figcaption></figure>"
            )
    index = folder / "index.html"
    index.write_text("\n".join(parts), encoding="utf-8")
    return index


async def stop_service(platform: Platform, name: str) -> None:
    """The platform's ``name`` process stopped (SIGTERM, as ``kill`` would)."""
    process = platform.processes[name]
    process.terminate()
    await asyncio.to_thread(process.wait, 25)


async def start_service(platform: Platform, name: str, extra: Mapping[str, str] | None = None) -> None:
    """``name`` started again with the platform's environment (``extra`` over it) once it answers
    /readyz; nothing when it is running."""
    spec = next(s for s in SERVICES if s.name == name)
    if platform.processes[name].poll() is None:
        return
    platform.spawn(name, [sys.executable, "-m", name], {**platform.service_env(spec), **(extra or {})})
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as session:
        while True:
            assert platform.processes[name].poll() is None, f"{name} exited on restart (see its log)"
            try:
                async with session.get(f"http://127.0.0.1:{spec.port}/readyz") as reply:
                    if reply.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, f"{name} not ready after restart"
            await asyncio.sleep(0.3)


def stop_processes(platform: Platform, name: str) -> list[psutil.Process]:
    """``name``'s processes (uvicorn's supervisor and its workers) stopped by SIGSTOP: their listening
    socket still accepts, nothing answers (a frozen pod). Workers are stopped first, so the supervisor
    never sees one not answering its health pings; :func:`continue_processes` continues them."""
    supervisor = psutil.Process(platform.processes[name].pid)
    stopped = [*supervisor.children(recursive=True), supervisor]
    for process in stopped:
        process.send_signal(signal.SIGSTOP)
    return stopped


def continue_processes(stopped: list[psutil.Process]) -> None:
    """SIGCONT to what :func:`stop_processes` stopped, in the reverse order: the supervisor first, the
    workers last."""
    for process in reversed(stopped):
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGCONT)


@contextlib.asynccontextmanager
async def frozen(platform: Platform, name: str) -> AsyncIterator[None]:
    """``name`` stopped by SIGSTOP (:func:`stop_processes`) while the block runs, continued after."""
    stopped = stop_processes(platform, name)
    try:
        yield
    finally:
        continue_processes(stopped)


#: how far :func:`through_back_off` moves the page's clock, and how often (real seconds): ten times
#: faster than real time, so the SPA's longest back-off (three waits of MAX_RETRY_WAIT_MS, 15 s)
#: passes in about 1.5 s
BACK_OFF_STEP_MS = 1_000
BACK_OFF_EVERY = 0.1


async def through_back_off(page: Page, outcome: Awaitable[None], step_ms: int = BACK_OFF_STEP_MS) -> None:
    """Await ``outcome`` (an ``expect`` on ``page``) while moving the page's clock forward, so the
    SPA's retry back-off (spa/src/api/client.ts ``retrying``: CREATE_RETRY_DELAYS_MS, longer when an
    answer's Retry-After asks, at most MAX_RETRY_WAIT_MS a wait) passes in a fraction of its real time.

    Why the clock and not shorter delays: the waits are the product's own (its schedule, its reading of
    Retry-After), and every attempt is still sent to the real services and answered by them; only the
    time between attempts is skipped, as ``setTimeout`` is. The page's clock must have been installed
    (``page.clock.install()``) before the page loaded. Only around a wait for the outcome of failing
    attempts: the clock's jumps also fire other timers (a toast leaves after 5 s), so an expectation on
    a toast stays outside."""
    waiting = asyncio.ensure_future(outcome)
    try:
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=BACK_OFF_EVERY)
            if done:
                break
            await page.clock.fast_forward(step_ms)
    finally:
        if not waiting.done():
            waiting.cancel()
    await waiting


async def stored(page: Page, tokens: Tokens, project: str) -> list[dict[str, object]]:
    """Alice's stored entries of ``project`` around today (the weeks the tests add to)."""
    today = datetime.now(UTC).date()
    window = f"from={today - timedelta(days=7)}&to={today + timedelta(days=14)}&limit=100"
    answer = await api_call_in_page(page, "GET", f"/api/timesheets?{window}", tokens.last)
    assert answer["status"] == 200, answer
    return [e for e in json.loads(answer["text"])["items"] if e["project"] == project]
