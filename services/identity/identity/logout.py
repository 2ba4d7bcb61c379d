"""Signing out at the provider: Auth0's ``/v2/logout`` and OIDC RP-Initiated Logout.

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
from .browser import SESSION_COOKIE, clear_cookie
from .keystore import KeyStore
from .oauth import IdentityServer, unquotable_parameter
from .oauth import Request as OAuthRequest
from .pages import error_page, render
from .revocation import Revoker
from .sessions import Sessions
from .settings import IdentitySettings

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class Logout:
    """``GET /v2/logout`` and ``GET|POST /oidc/logout`` (the discovery's ``end_session_endpoint``)."""

    def __init__(
        self,
        settings: IdentitySettings,
        database: Database,
        keys: KeyStore,
        server: IdentityServer,
        revoker: Revoker,
    ) -> None:
        self.settings = settings
        self.database = database
        self.keys = keys
        self.server = server
        self.revoker = revoker

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
        """Auth0's ``/v2/logout?client_id=…&returnTo=…``: ``returnTo`` must be registered for the client."""
        return_to = request.query_params.get("returnTo")
        client_id = request.query_params.get("client_id")
        await self._end_session(request)
        if not return_to:
            return self._signed_out()
        client = await store.get_client(self.database.pool, client_id) if client_id else None
        if client is None or return_to not in client.post_logout_redirect_uris:
            page = error_page(
                "invalid_request",
                "returnTo is not an allowed logout URL for this client_id; you are signed out.",
            )
            return self._signed_out(page)
        return self._signed_out(RedirectResponse(return_to, 302, headers=NO_STORE))

    async def oidc_logout(self, request: Request) -> Response:
        """OpenID Connect RP-Initiated Logout 1.0, validated by Authlib (``id_token_hint`` by PyJWT)."""
        await self.keys.refresh_if_stale(self.database.pool)
        query = list(request.query_params.multi_items())
        form: list[tuple[str, str]] = []
        if request.method == "POST":
            form = [(k, v) for k, v in (await request.form()).multi_items() if isinstance(v, str)]
        if unquotable_parameter([*query, *form]) is not None:
            await self._end_session(request)
            page = error_page("invalid_request", "A parameter holds characters that are not allowed.")
            return self._signed_out(page)
        oreq = OAuthRequest(request.method, self.settings.url("oidc/logout"), request.headers, query, form)
        try:
            validated = await anyio.to_thread.run_sync(
                self.server.validate_endpoint_request, "end_session", oreq
            )
        except OAuth2Error as error:
            await self._end_session(request)
            page = error_page(
                error.error or "invalid_request", error.description or "Invalid logout request."
            )
            return self._signed_out(page)
        await self._end_session(request)
        if validated.redirect_uri:
            return self._signed_out(RedirectResponse(validated.redirect_uri, 302, headers=NO_STORE))
        return self._signed_out()
