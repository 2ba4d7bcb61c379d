"""The signed-in user's own page: third-party apps they allowed, and withdrawing that consent.

Withdrawing consent also revokes every token the app holds for the user (refresh tokens and access
tokens, published to the gateways), and the app's refresh grant checks consent on every use.
"""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from svckit.db import Database

from . import store
from .bodies import read_form
from .browser import CSRF_COOKIE, CsrfSigner, csrf_cookie_value, set_cookie
from .pages import error_page, render
from .revocation import Revoker
from .sessions import Sessions
from .settings import IdentitySettings

LOGIN_FIRST = "/login?" + urlencode({"return_to": "/account/consents"})


class Account:
    """``GET /account/consents`` and ``POST /account/consents/revoke``."""

    def __init__(
        self,
        settings: IdentitySettings,
        database: Database,
        sessions: Sessions,
        revoker: Revoker,
        csrf: CsrfSigner,
    ) -> None:
        self.settings = settings
        self.database = database
        self.sessions = sessions
        self.revoker = revoker
        self.csrf = csrf

    async def consents_page(self, request: Request) -> Response:
        user = await self.sessions.current(request)
        if user is None:
            return RedirectResponse(LOGIN_FIRST, 302)
        cookie, fresh = csrf_cookie_value(request)
        response = render(
            "consents.html",
            user_name=user.user.name,
            consents=await store.list_consents(self.database.queries, user.user.subject),
            csrf_token=self.csrf.token(cookie, "revoke"),
            revoke_action="/account/consents/revoke",
        )
        if fresh:
            set_cookie(response, CSRF_COOKIE, cookie, secure=self.settings.cookie_secure, max_age=None)
        return response

    async def revoke_consent(self, request: Request) -> Response:
        form = await read_form(request)
        if not self.csrf.verify(
            request.cookies.get(CSRF_COOKIE), "revoke", str(form.get("csrf_token") or "")
        ):
            return error_page("invalid_request", "The form expired or was not sent by this site.", 403)
        user = await self.sessions.current(request)
        if user is None:
            return RedirectResponse(LOGIN_FIRST, 303)
        client_id = str(form.get("client_id") or "")
        await self.revoker.withdraw_consent(user.user.subject, client_id)
        return RedirectResponse("/account/consents", 303)
