"""Password sign-in: the form, the throttled check, and the new session.

An attempt takes its throttle slot before the password is checked (:mod:`identity.throttle`), so
concurrent guesses cannot overrun the limits. A successful sign-in replaces any previous session
(new cookie value) and returns to ``return_to``, which may only be our own authorization endpoint or
account page (never an open redirect).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from prometheus_client import Counter
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from svckit.db import Database

from . import denials, store
from .bodies import read_form
from .browser import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    CsrfSigner,
    client_address,
    csrf_cookie_value,
    new_token,
    set_cookie,
)
from .pages import render
from .passwords import IN_FLIGHT, ClientGone, HashingBusy, HashingQueue, hash_refusals, needs_rehash
from .revocation import Revoker
from .sessions import Sessions
from .settings import IdentitySettings
from .throttle import LoginThrottle

log = logging.getLogger("identity.signin")

login_failures = Counter(
    "identity_login_failures_total",
    "Refused sign-in attempts, by reason (invalid_credentials, throttled, csrf).",
    ["reason"],
)
logins = Counter("identity_logins_total", "Successful sign-ins.")

#: at most one warning this often for the sign-ins refused because the password checks are busy
BUSY_LOG_SECONDS = 10.0
RETURN_PATHS = ("/authorize", "/account/consents")
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def safe_return_to(value: str | None) -> str:
    """Only our own authorization endpoint or account page: never an open redirect."""
    if not value or "\\" in value or any(ord(c) < 0x20 for c in value):
        return "/account/consents"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or parts.path not in RETURN_PATHS or value.startswith("//"):
        return "/account/consents"
    return value


def _disconnected(request: Request) -> Callable[[], Coroutine[Any, Any, None]]:
    """An awaitable factory that ends when the client disconnects (the form's body has been read: the
    next message of the request is ``http.disconnect``, or never comes while the client waits)."""

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    return gone


class PasswordSignIn:
    """``GET /login`` (the form) and ``POST /login`` (the attempt)."""

    def __init__(
        self,
        settings: IdentitySettings,
        database: Database,
        sessions: Sessions,
        revoker: Revoker,
        throttle: LoginThrottle,
        csrf: CsrfSigner,
    ) -> None:
        self.settings = settings
        self.database = database
        self.sessions = sessions
        self.revoker = revoker
        self.throttle = throttle
        self.csrf = csrf
        self.hashing = HashingQueue(
            settings.password_hash_max_waiting, settings.password_hash_max_wait_seconds
        )
        self._busy_logged_at = float("-inf")
        self._busy_unlogged = 0

    async def form(self, request: Request) -> Response:
        return_to = safe_return_to(request.query_params.get("return_to"))
        # OIDC login_hint (Auth0 honours it too): pre-fill the user name, nothing more.
        hint = dict(parse_qsl(urlsplit(return_to).query)).get("login_hint", "")[:200]
        return await self._page(request, return_to, error=None, username=hint, status=200)

    async def submit(self, request: Request) -> Response:
        began = time.monotonic()  # the password check's wait counts from here (HashingQueue)
        form = await read_form(request)
        return_to = safe_return_to(str(form.get("return_to") or ""))
        username = str(form.get("username") or "").strip()[:200]
        password = str(form.get("password") or "")[:1000]
        if not self.csrf.verify(request.cookies.get(CSRF_COOKIE), "login", str(form.get("csrf_token") or "")):
            login_failures.labels("csrf").inc()
            denials.deny(request, self.settings, 403, denials.CSRF)
            error = "This form expired or was not sent by this site. Please try again."
            return await self._page(request, return_to, status=403, username=username, error=error)
        if not username or not password:
            error = "Enter your user name and password."
            return await self._page(request, return_to, status=400, username=username, error=error)
        address = client_address(
            request, self.settings.trusted_proxy_networks, self.settings.identity_proxy_header
        )
        # Counted before the (slow) password check, atomically: concurrent guesses cannot overrun it.
        # A slot held by another attempt still being checked is waited for, within the check's wait.
        wait_until = began + self.hashing.max_wait_seconds
        verdict = await self.throttle.attempt(username, address, wait_until=wait_until)
        if verdict.in_flight:  # the others' checks, not failures: busy, as the hashing queue's refusal
            hash_refusals.labels(IN_FLIGHT).inc()
            self._busy_log(address, IN_FLIGHT)
            return await self._busy_page(request, return_to, username, verdict.retry_after)
        if not verdict.allowed:
            login_failures.labels("throttled").inc()
            denials.deny(request, self.settings, 429, denials.THROTTLED)
            log.warning("sign-in throttled", extra={"address": address, "limit": verdict.scope})
            return await self._page(
                request,
                return_to,
                status=429,
                username=username,
                error=f"Too many failed attempts. Try again in {verdict.retry_after} seconds.",
                headers={"Retry-After": str(verdict.retry_after)},
            )
        try:
            return await self._check(request, return_to, username, password, address, began)
        finally:
            self.throttle.settle(username, address)  # no longer in flight, whatever the outcome

    async def _check(
        self, request: Request, return_to: str, username: str, password: str, address: str, began: float
    ) -> Response:
        """The attempt, its throttle slots taken: the password checked, the session made."""
        pool = self.database.queries
        user = await store.get_user_by_username(pool, username)
        stored = user.password_hash if user and not user.disabled else None
        gone = _disconnected(request)
        try:
            ok = await self.hashing.verify(stored, password, gone=gone, since=began)
        except ClientGone:  # nobody reads an answer: the least of one, nothing queried or rendered
            await self.throttle.succeeded(username, address)  # not a failure: never checked
            return Response(status_code=503, headers={**NO_STORE, "Retry-After": "1"})
        except HashingBusy as busy:
            await self.throttle.succeeded(username, address)  # not a failure: never checked
            self._busy_log(address, busy.reason)
            return await self._busy_page(request, return_to, username, busy.retry_after)
        if not ok or user is None:
            login_failures.labels("invalid_credentials").inc()
            denials.deny(request, self.settings, 401, denials.INVALID_CREDENTIALS)
            log.info("sign-in refused", extra={"address": address, "reason": "invalid_credentials"})
            error = "Wrong user name or password."
            return await self._page(request, return_to, status=401, username=username, error=error)
        await self.throttle.succeeded(username, address)
        if needs_rehash(user.password_hash):
            # through the same admission, within the same wait (counted from the request's start): when
            # busy (or the client has gone) the old hash stays until a later sign-in, which succeeds
            with contextlib.suppress(HashingBusy, ClientGone):
                new_hash = await self.hashing.hash(password, gone=gone, since=began)
                await store.update_password_hash(pool, user.subject, new_hash)
        previous = self.sessions.cookie(request)
        if previous is not None:
            await self.revoker.replace_session(previous)
        session_id = new_token()
        await store.create_session(pool, session_id, user.subject, self.settings.session_ttl_seconds)
        logins.inc()
        log.info("signed in", extra={"subject": user.subject, "address": address})
        response = RedirectResponse(return_to, status_code=303, headers=NO_STORE)
        set_cookie(
            response,
            SESSION_COOKIE,
            session_id,
            secure=self.settings.cookie_secure,
            max_age=self.settings.session_ttl_seconds,
        )
        return response

    async def _busy_page(self, request: Request, return_to: str, username: str, retry_after: int) -> Response:
        """The sign-in page again, 503: the check could not be made now (not a failure)."""
        error = f"Many people are signing in right now. Please try again in {retry_after} seconds."
        headers = {"Retry-After": str(retry_after)}
        return await self._page(
            request, return_to, status=503, username=username, error=error, headers=headers
        )

    def _busy_log(self, address: str, reason: str) -> None:
        """A warning per :data:`BUSY_LOG_SECONDS` at most, with how many were refused since the last
        (a line per refusal would flood the log during the storm it reports)."""
        self._busy_unlogged += 1
        now = time.monotonic()
        if now - self._busy_logged_at >= BUSY_LOG_SECONDS:
            log.warning(
                "sign-ins refused: the password checks' queue is busy",
                extra={"address": address, "reason": reason, "refused_since_last_line": self._busy_unlogged},
            )
            self._busy_logged_at, self._busy_unlogged = now, 0

    async def _client_name(self, return_to: str) -> str | None:
        client_id = dict(parse_qsl(urlsplit(return_to).query)).get("client_id")
        if not client_id:
            return None
        client = await store.get_client(self.database.queries, client_id)
        return client.name if client else None

    async def _page(
        self,
        request: Request,
        return_to: str,
        *,
        error: str | None,
        username: str,
        status: int,
        headers: dict[str, str] | None = None,
    ) -> Response:
        cookie, fresh = csrf_cookie_value(request)
        response = render(
            "login.html",
            status,
            action="/login",
            csrf_token=self.csrf.token(cookie, "login"),
            return_to=return_to,
            error=error,
            username=username,
            client_name=await self._client_name(return_to),
        )
        response.headers.update(headers or {})
        if fresh:
            set_cookie(response, CSRF_COOKIE, cookie, secure=self.settings.cookie_secure, max_age=None)
        return response
