"""Signing out at the provider: Auth0's ``/v2/logout`` and OIDC RP-Initiated Logout.

RP-Initiated Logout ends a session at once only for a request carrying an ``id_token_hint`` of the
signed-in person; otherwise it asks them first (§2 of the specification: the OP MUST ask), on a page
whose form carries a CSRF token. Without that question any page could sign a visitor out, since a
top-level navigation carries the SameSite=Lax session cookie. Auth0's ``/v2/logout`` keeps Auth0's
behaviour (no question) for what the browser does not mark ``Sec-Fetch-Site: cross-site`` — an app on
the provider's site, a bookmark, a non-browser client — as its SDKs expect; a navigation from another
site, which any page can start, is asked the same question (its form posts back to ``/v2/logout``),
and after the click goes on to ``returnTo`` as before.

Either way the browser's session ends and every token issued through it (refresh tokens and the
access tokens they and the session's code exchanges produced) is revoked and published to the
gateways (:class:`identity.revocation.Revoker`), so an API call with such a token is refused within
seconds, not at its ``exp``.
"""

from __future__ import annotations

import anyio.to_thread
from authlib.oauth2.rfc6749 import OAuth2Error
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from svckit.db import Database

from . import store
from .bodies import read_form
from .browser import CSRF_COOKIE, SESSION_COOKIE, CsrfSigner, clear_cookie, csrf_cookie_value, set_cookie
from .keystore import KeyStore
from .models import Client, SignedInUser
from .oauth import IdentityServer, unquotable_parameter
from .oauth import Request as OAuthRequest
from .pages import error_page, render
from .revocation import Revoker
from .sessions import Sessions
from .settings import IdentitySettings

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
LOGOUT_PURPOSE = "logout"  # the CSRF token's purpose: a sign-in or consent form's token is not this one's


class Logout:
    """``GET /v2/logout`` and ``GET|POST /oidc/logout`` (the discovery's ``end_session_endpoint``)."""

    def __init__(
        self,
        settings: IdentitySettings,
        database: Database,
        keys: KeyStore,
        server: IdentityServer,
        revoker: Revoker,
        sessions: Sessions,
        csrf: CsrfSigner,
    ) -> None:
        self.settings = settings
        self.database = database
        self.keys = keys
        self.server = server
        self.revoker = revoker
        self.sessions = sessions
        self.csrf = csrf

    async def _end_session(self, request: Request) -> None:
        session_id = Sessions.cookie(request)
        if session_id is not None:
            await self.revoker.end_session(session_id)

    def _signed_out(self, response: Response | None = None) -> Response:
        response = response or render(
            "message.html", title="Signed out", text="You are signed out. You can close this window."
        )
        clear_cookie(response, SESSION_COOKIE, secure=self.settings.cookie_secure)
        return response

    async def auth0_logout(self, request: Request) -> Response:
        """Auth0's ``/v2/logout?client_id=…&returnTo=…``: ``returnTo`` must be registered for the client.

        ``GET`` signs out at once unless another site started the navigation (then it asks); ``POST``
        is the question's form, which signs out only with its CSRF token (else it asks again)."""
        if request.method == "POST":
            form = await read_form(request)
            fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
            token = fields.get("csrf_token")
            confirmed = self.csrf.verify(request.cookies.get(CSRF_COOKIE), LOGOUT_PURPOSE, token)
        else:
            fields = dict(request.query_params)
            site = request.headers.get("sec-fetch-site", "").strip().lower()
            confirmed = site != "cross-site"
        return_to = fields.get("returnTo") or None
        client_id = fields.get("client_id") or None
        if not confirmed:
            user = await self.sessions.current(request)
            if user is not None:
                client = await store.get_client(self.database.queries, client_id) if client_id else None
                params = [(k, v) for k, v in (("client_id", client_id), ("returnTo", return_to)) if v]
                return self._ask(request, user, params, client, action="/v2/logout")
        await self._end_session(request)
        if not return_to:
            return self._signed_out()
        client = await store.get_client(self.database.queries, client_id) if client_id else None
        if client is None or return_to not in client.post_logout_redirect_uris:
            page = error_page(
                "invalid_request",
                "returnTo is not an allowed logout URL for this client_id; you are signed out.",
            )
            return self._signed_out(page)
        return self._signed_out(RedirectResponse(return_to, 302, headers=NO_STORE))

    async def oidc_logout(self, request: Request) -> Response:
        """OpenID Connect RP-Initiated Logout 1.0, validated by Authlib (``id_token_hint`` by PyJWT)."""
        await self.keys.refresh_if_stale(self.database.queries)
        query = list(request.query_params.multi_items())
        form: list[tuple[str, str]] = []
        if request.method == "POST":
            form = [(k, v) for k, v in (await read_form(request)).multi_items() if isinstance(v, str)]
        confirmed = self.csrf.verify(
            request.cookies.get(CSRF_COOKIE), LOGOUT_PURPOSE, dict(form).get("csrf_token")
        )
        params = [(k, v) for k, v in [*query, *form] if k != "csrf_token"]
        if unquotable_parameter(params) is not None:
            problem = ("invalid_request", "A parameter holds characters that are not allowed.")
            return await self._refused(request, problem, confirmed)
        oreq = OAuthRequest(request.method, self.settings.url("oidc/logout"), request.headers, query, form)
        try:
            validated = await anyio.to_thread.run_sync(
                self.server.validate_endpoint_request, "end_session", oreq
            )
        except OAuth2Error as error:
            problem = (error.error or "invalid_request", error.description or "Invalid logout request.")
            return await self._refused(request, problem, confirmed)
        if not confirmed:
            user = await self.sessions.current(request)
            hinted = (validated.id_token_claims or {}).get("sub")
            if user is not None and hinted != user.user.subject:
                return self._ask(request, user, params, validated.client)
        await self._end_session(request)
        if validated.redirect_uri:
            return self._signed_out(RedirectResponse(validated.redirect_uri, 302, headers=NO_STORE))
        return self._signed_out()

    async def _refused(self, request: Request, problem: tuple[str, str], confirmed: bool) -> Response:
        """An invalid request is shown, never redirected. It signs out only a confirmed form (this
        page's own, which carries nothing else); otherwise the page offers that form."""
        error, description = problem
        if confirmed:
            await self._end_session(request)
            return self._signed_out(error_page(error, description + " You are signed out."))
        user = await self.sessions.current(request)
        if user is None:
            return self._signed_out(error_page(error, description))
        return self._ask(request, user, [], None, problem)

    def _ask(
        self,
        request: Request,
        user: SignedInUser,
        params: list[tuple[str, str]],
        client: Client | None,
        problem: tuple[str, str] | None = None,
        action: str = "/oidc/logout",
    ) -> Response:
        cookie, fresh = csrf_cookie_value(request)
        error, description = problem or ("", "")
        response = render(
            "logout.html",
            400 if problem else 200,
            user_name=user.user.name,
            client_name=client.name if client is not None else "",
            action=action,
            csrf_token=self.csrf.token(cookie, LOGOUT_PURPOSE),
            params=params,
            error=error,
            description=description,
        )
        if fresh:
            set_cookie(response, CSRF_COOKIE, cookie, secure=self.settings.cookie_secure, max_age=None)
        return response
