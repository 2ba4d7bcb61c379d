"""The authorization endpoint and the consent decision (password sign-in is :mod:`identity.signin`).

``GET /authorize`` validates the request with Authlib (client, exact redirect URI, response type,
scopes, nonce, PKCE, ``prompt``), sends the user to sign in or to consent when needed, and delivers
the response in the requested ``response_mode``: ``query`` (code), ``fragment`` (implicit, or code on
request), ``form_post``, or Auth0's ``web_message`` (a page that ``postMessage``s the result to the
window that framed it, for silent renewal). Errors that cannot be tied to a registered redirect URI
are shown as a page here and never redirected (RFC 6749 §4.1.2.1).

``prompt=login`` and ``max_age`` demand a sign-in newer than the request. The sign-in page returns to
the request with those replaced by ``login_after`` (unix seconds): a session older than that counts as
no session, so opening the ``return_to`` link without signing in leads to the sign-in page again, never
to a code. The ID token's ``auth_time`` proves the fresh sign-in to the client.

What a signed-in user has issued here — codes, implicit answers — is limited per user and window
(``AUTHORIZE_MAX_CODES_PER_USER``, :class:`identity.throttle.IssueLimit`): beyond it the client gets
``temporarily_unavailable`` (RFC 6749 §4.1.2.1, §4.2.2.1) at its redirect URI, in the requested
response mode, and the refusal is counted and recorded for the audit trail under the user's name.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import anyio.to_thread
from authlib.common.urls import add_params_to_uri
from authlib.oauth2.rfc6749 import OAuth2Error
from authlib.oauth2.rfc6749.errors import InvalidRequestError
from authlib.oidc.core.errors import (
    ConsentRequiredError,
    LoginRequiredError,
    RequestNotSupportedError,
    RequestURINotSupportedError,
)
from prometheus_client import Counter as MetricCounter
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from svckit.db import Database
from svckit.dpop import is_thumbprint
from svckit.identity import Identity

from . import denials, store
from .bodies import read_form
from .browser import CSRF_COOKIE, CsrfSigner, csrf_cookie_value, set_cookie
from .keystore import KeyStore
from .models import Client, SignedInUser, origin_of
from .oauth import IdentityServer, Result, unquotable_parameter
from .oauth import Request as OAuthRequest
from .pages import error_page, render
from .scopes import describe, split_scope
from .sessions import Sessions
from .settings import IdentitySettings
from .signin import login_failures
from .throttle import IssueLimit
from .tokens import granted_scopes

log = logging.getLogger("identity.authorize")

RESPONSE_MODES = ("query", "fragment", "form_post", "web_message")

authorize_throttled = MetricCounter(
    "identity_authorize_throttled_total",
    "Authorization requests refused because the signed-in user had AUTHORIZE_MAX_CODES_PER_USER codes "
    "(or implicit answers) issued in the window.",
)


class TemporarilyUnavailableError(OAuth2Error):  # type: ignore[misc]
    """RFC 6749 §4.1.2.1: the server cannot handle the request now (here: the user's budget of
    issued codes is spent until its window ends); the client may retry later."""

    error = "temporarily_unavailable"


#: Internal parameter of the return_to link: the sign-in must be newer than this (unix seconds).
LOGIN_AFTER = "login_after"


def _is_implicit(response_type: str | None) -> bool:
    return "token" in (response_type or "").split() or (response_type or "").strip() == "id_token"


def _json_for_script(value: Any) -> str:
    """JSON safe to place inside a <script> element."""
    text = json.dumps(value)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


class Delivery:
    """How the authorization response reaches the client, fixed by ``response_type``/``response_mode``.

    Every response that reaches the client — a code, tokens, an error — names this provider in
    ``iss`` (RFC 9207, RFC 9700 §4.4.2): a client that talks to more than one authorization server
    (the gateway trusts a list of issuers) can then tell which one answered, and a mix-up attack,
    where an attacker's server has the client send an honest server's code to it, is detectable.
    Authlib does not add it; it is added here, once, for every response mode."""

    def __init__(self, params: dict[str, str], issuer: str) -> None:
        self.issuer = issuer
        self.implicit = _is_implicit(params.get("response_type"))
        self.default_mode = "fragment" if self.implicit else "query"
        requested = params.get("response_mode")
        self.valid = requested is None or requested in RESPONSE_MODES
        if self.implicit and requested == "query":
            self.valid = False  # tokens never travel in a query string
        self.mode = requested if self.valid and requested else self.default_mode

    def validate(self, redirect_uri: str | None) -> None:
        if not self.valid:
            raise InvalidRequestError(
                "Unsupported response_mode for this response_type",
                redirect_uri=redirect_uri,
                redirect_fragment=self.implicit,
            )

    def respond(self, result: Result, client: Client | None) -> Response:
        location = result.location
        if result.status != 302 or location is None:
            body = result.body if isinstance(result.body, dict) else {}
            return error_page(
                str(body.get("error", "invalid_request")),
                str(body.get("error_description", "The request is not valid.")),
                status=result.status if 400 <= result.status < 500 else 400,
            )
        in_fragment = bool(urlsplit(location).fragment)
        location = add_params_to_uri(location, [("iss", self.issuer)], fragment=in_fragment)
        if self.mode == self.default_mode and self.mode in ("query", "fragment"):
            return RedirectResponse(location, status_code=302, headers=_no_store())
        parts = urlsplit(location)
        base = location.split("#", 1)[0] if parts.fragment else location
        if parts.fragment:
            params = parse_qsl(parts.fragment, keep_blank_values=True)
        else:
            base_parts = urlsplit(base)
            redirect_uri = base.split("?", 1)[0]
            params = parse_qsl(base_parts.query, keep_blank_values=True)
            base = redirect_uri
        # ``base`` is now the client's redirect URI (registered URIs carry no query of their own).
        origins = client.allowed_origins if client else frozenset({origin_of(base)})
        if self.mode == "query":
            return RedirectResponse(add_params_to_uri(base, params), 302, headers=_no_store())
        if self.mode == "fragment":
            uri = add_params_to_uri(base, params, fragment=True)
            return RedirectResponse(uri, 302, headers=_no_store())
        if self.mode == "form_post":
            return render("form_post.html", action=base, params=params, script=True)
        return render(
            "web_message.html",
            response_json=_json_for_script(dict(params)),
            target_origin_json=_json_for_script(origin_of(base)),
            frame_ancestors=origins,
            script=True,
        )


def _no_store() -> dict[str, str]:
    return {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _deliver_error(delivery: Delivery, error: OAuth2Error, client: Client | None) -> Response:
    status, body, headers = error(None)
    return delivery.respond(Result(status, body, list(headers)), client)


MAX_AGE_DIGITS = 12


def login_after(pairs: list[tuple[str, str]], now: float) -> float | None:
    """The instant the sign-in must be newer than, from ``prompt=login``, ``max_age`` or ``login_after``."""
    params = dict(pairs)
    bounds: list[float] = []
    if "login" in split_scope(params.get("prompt")):
        bounds.append(now)
    max_age = params.get("max_age")
    if max_age is not None and max_age.isascii() and max_age.isdigit():
        # bounded before int(): a longer number (beyond Python's 4,300-digit limit, too) is as good
        # as "any sign-in" anyway
        bounds.append(now - (int(max_age) if len(max_age) <= MAX_AGE_DIGITS else 10**MAX_AGE_DIGITS))
    elif max_age is not None:  # "-1", "1e3", "+1": still a demand for a recent sign-in; be strict
        bounds.append(now)
    carried = params.get(LOGIN_AFTER)
    if carried is not None:
        try:
            instant = float(carried[:32])
        except ValueError:
            instant = math.nan
        bounds.append(instant if math.isfinite(instant) else now)  # unreadable: be strict
    return max(bounds) if bounds else None


def _login_redirect(pairs: list[tuple[str, str]], after: float | None) -> Response:
    """To the sign-in page, returning afterwards to this request with ``prompt=login``/``max_age``
    replaced by ``login_after``: the way back demands the sign-in that the request demanded."""
    kept = [(k, v) for k, v in pairs if k not in ("prompt", "max_age", LOGIN_AFTER)]
    if after is not None:
        kept.append((LOGIN_AFTER, f"{after:.6f}"))
    return_to = "/authorize?" + urlencode(kept)
    return RedirectResponse("/login?" + urlencode({"return_to": return_to}), 302, headers=_no_store())


class AuthorizationEndpoint:
    """``GET|POST /authorize`` and ``POST /authorize/decision`` (the consent form's answer)."""

    def __init__(
        self,
        settings: IdentitySettings,
        database: Database,
        keys: KeyStore,
        server: IdentityServer,
        sessions: Sessions,
        csrf: CsrfSigner,
        issue_limit: IssueLimit,
    ) -> None:
        self.settings = settings
        self.database = database
        self.keys = keys
        self.server = server
        self.sessions = sessions
        self.csrf = csrf
        self.issue_limit = issue_limit

    async def authorize(self, request: Request) -> Response:
        await self.keys.refresh_if_stale(self.database.queries)
        pairs = list(request.query_params.multi_items())
        if request.method == "POST":  # OIDC Core §3.1.2.1: the endpoint also accepts form-encoded POST
            form = await read_form(request)
            pairs += [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
        return await self._authorize(request, pairs, decision=None)

    async def decision(self, request: Request) -> Response:
        """Remember the consent (allow) or tell the client ``access_denied``."""
        form = await read_form(request)
        token = form.get("csrf_token")
        if not self.csrf.verify(request.cookies.get(CSRF_COOKIE), "consent", str(token or "")):
            login_failures.labels("csrf").inc()
            denials.deny(request, self.settings, 403, denials.CSRF)
            return error_page("invalid_request", "The form expired or was not sent by this site.", 403)
        answer = str(form.get("decision") or "")
        if answer not in ("allow", "deny"):
            return error_page("invalid_request", "decision must be allow or deny.", 400)
        pairs = parse_qsl(str(form.get("request") or ""), keep_blank_values=True)
        if not pairs:
            return error_page("invalid_request", "The authorization request is missing.", 400)
        if await self.sessions.current(request) is None:
            return _login_redirect(pairs, login_after(pairs, time.time()))
        return await self._authorize(request, pairs, decision=answer)

    def _oauth_request(self, request: Request, pairs: list[tuple[str, str]]) -> OAuthRequest:
        uri = self.settings.url("authorize") + ("?" + urlencode(pairs) if pairs else "")
        return OAuthRequest("GET", uri, dict(request.headers), pairs, [])

    async def _authorize(
        self, request: Request, pairs: list[tuple[str, str]], decision: str | None
    ) -> Response:
        params = dict(pairs)
        if len(params) != len(pairs):  # RFC 6749 §3.1: none more than once (shown here, not redirected:
            # which redirect_uri, state or dpop_jkt is meant, Authlib and this code would read differently)
            twice = next(name for name, count in Counter(k for k, _ in pairs).items() if count > 1)
            return error_page("invalid_request", f"The {twice} parameter is sent more than once.")
        bad = unquotable_parameter(pairs) or next((k for k, v in pairs if not store.storable(v)), None)
        if bad is not None:
            return error_page(
                "invalid_request", f"The {bad} parameter holds characters that are not allowed."
            )
        delivery = Delivery(params, self.settings.identity_issuer)
        user = await self.sessions.current(request)
        oreq = self._oauth_request(request, pairs)
        try:
            grant = await anyio.to_thread.run_sync(self.server.get_consent_grant, oreq, user)
        except OAuth2Error as error:
            return _deliver_error(delivery, error, None)
        client: Client = oreq.client
        # Validated by Authlib at this point (OpenIDImplicitGrant does not keep it on grant.redirect_uri).
        redirect_uri = grant.redirect_uri or params.get("redirect_uri") or client.get_default_redirect_uri()
        prompts = split_scope(params.get("prompt"))
        state = params.get("state")

        def fail(error: OAuth2Error) -> Response:
            error.redirect_uri = redirect_uri
            error.redirect_fragment = delivery.implicit
            error.state = state
            return _deliver_error(delivery, error, client)

        try:
            delivery.validate(redirect_uri)
        except OAuth2Error as error:
            delivery.mode = delivery.default_mode
            return fail(error)
        # OIDC Core §6: unsupported (discovery says so), so refused; ignoring one would serve the outer
        # parameters where the client meant the signed object's (a narrower scope, a max_age) to count
        if "request" in params:
            return fail(RequestNotSupportedError())
        if "request_uri" in params:
            return fail(RequestURINotSupportedError())
        # RFC 9449 §10: the code will be redeemable only with a proof by this key
        if "dpop_jkt" in params and (delivery.implicit or not is_thumbprint(params["dpop_jkt"])):
            return fail(InvalidRequestError("dpop_jkt must be a JWK SHA-256 thumbprint, with a code flow"))

        # (The consent form's copy of the request has no prompt/max_age/login_after: the session
        # shown that form had already satisfied them.)
        after = login_after(pairs, time.time())
        if user is not None and after is not None and user.signed_in_at < after:
            user = None  # signed in before the request demanded: not good enough
        if user is None:
            if "none" in prompts:
                return fail(LoginRequiredError())
            return _login_redirect(pairs, after)

        if not client.first_party:
            scopes = granted_scopes(client, user, oreq.scope)
            pool = self.database.queries
            if decision == "allow":
                await store.add_consent(pool, user.user.subject, client.client_id, scopes)
            elif decision is None:
                remembered = await store.get_consent(pool, user.user.subject, client.client_id)
                if "consent" in prompts or any(s not in remembered for s in scopes):
                    if "none" in prompts:
                        return fail(ConsentRequiredError())
                    return self._consent_page(request, client, user, scopes, pairs)

        grant_user = None if decision == "deny" else user
        if grant_user is not None:  # a code or tokens will be issued: within the user's budget
            # a page on another site navigating the person's browser here spends its own budget only
            cross_site = request.headers.get("sec-fetch-site", "").strip().lower() == "cross-site"
            verdict = await self.issue_limit.take(user.user.subject, cross_site=cross_site)
            if not verdict.allowed:
                authorize_throttled.inc()
                caller = Identity(self.settings.identity_issuer, user.user.subject, "user", client.client_id)
                denials.deny(request, self.settings, 429, denials.CODE_LIMIT, caller)
                description = (
                    f"Too many authorization requests for this user; retry in {verdict.retry_after} seconds."
                )
                return fail(TemporarilyUnavailableError(description))
        oreq = self._oauth_request(request, pairs)
        oreq.user = user
        result = await anyio.to_thread.run_sync(
            self.server.create_authorization_response, oreq, grant_user, grant
        )
        return delivery.respond(result, client)

    def _consent_page(
        self,
        request: Request,
        client: Client,
        user: SignedInUser,
        scopes: list[str],
        pairs: list[tuple[str, str]],
    ) -> Response:
        cookie, fresh = csrf_cookie_value(request)
        # prompt/max_age were satisfied by the session just checked; login_after is not carried on.
        kept = [(k, v) for k, v in pairs if k not in ("prompt", "max_age", LOGIN_AFTER)]
        response = render(
            "consent.html",
            client_name=client.name,
            user_name=user.user.name,
            scopes=describe(scopes),
            consents_url="/account/consents",
            action="/authorize/decision",
            csrf_token=self.csrf.token(cookie, "consent"),
            request_query=urlencode(kept),
        )
        if fresh:
            set_cookie(response, CSRF_COOKIE, cookie, secure=self.settings.cookie_secure, max_age=None)
        return response
