"""The authorization endpoint and what the browser sees on the way: sign-in and consent.

``GET /authorize`` validates the request with Authlib (client, exact redirect URI, response type,
scopes, nonce, PKCE, ``prompt``), sends the user to sign in or to consent when needed, and delivers
the response in the requested ``response_mode``: ``query`` (code), ``fragment`` (implicit, or code on
request), ``form_post``, or Auth0's ``web_message`` (a page that ``postMessage``s the result to the
window that framed it, for silent renewal). Errors that cannot be tied to a registered redirect URI
are shown as a page here and never redirected (RFC 6749 §4.1.2.1).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from authlib.common.urls import add_params_to_uri
from authlib.oauth2.rfc6749 import OAuth2Error
from authlib.oauth2.rfc6749.errors import InvalidRequestError
from authlib.oidc.core.errors import ConsentRequiredError, LoginRequiredError
from prometheus_client import Counter
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from . import store
from .browser import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    client_address,
    csrf_cookie_value,
    new_token,
    set_cookie,
)
from .context import Context, ctx_of, signed_in_user
from .models import Client, SignedInUser, origin_of
from .oauth import Request as OAuthRequest
from .oauth import Result, unquotable_parameter
from .passwords import hash_secret, needs_rehash, verify_secret
from .scopes import describe, split_scope
from .tokens import granted_scopes

log = logging.getLogger("identity.signin")

login_failures = Counter(
    "identity_login_failures_total",
    "Refused sign-in attempts, by reason (invalid_credentials, throttled, csrf).",
    ["reason"],
)
logins = Counter("identity_logins_total", "Successful sign-ins.")

RESPONSE_MODES = ("query", "fragment", "form_post", "web_message")
RETURN_PATHS = ("/authorize", "/account/consents")


def _is_implicit(response_type: str | None) -> bool:
    return "token" in (response_type or "").split() or (response_type or "").strip() == "id_token"


def _json_for_script(value: Any) -> str:
    """JSON safe to place inside a <script> element."""
    text = json.dumps(value)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


class Delivery:
    """How the authorization response reaches the client, fixed by ``response_type``/``response_mode``."""

    def __init__(self, params: dict[str, str]) -> None:
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

    def respond(self, ctx: Context, result: Result, client: Client | None) -> Response:
        location = result.location
        if result.status != 302 or location is None:
            body = result.body if isinstance(result.body, dict) else {}
            return error_page(
                ctx,
                str(body.get("error", "invalid_request")),
                str(body.get("error_description", "The request is not valid.")),
                status=result.status if 400 <= result.status < 500 else 400,
            )
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
            return ctx.render("form_post.html", action=base, params=params, script=True)
        return ctx.render(
            "web_message.html",
            response_json=_json_for_script(dict(params)),
            target_origin_json=_json_for_script(origin_of(base)),
            frame_ancestors=origins,
            script=True,
        )


def _no_store() -> dict[str, str]:
    return {"Cache-Control": "no-store", "Pragma": "no-cache"}


def error_page(ctx: Context, error: str, description: str, status: int = 400) -> Response:
    return ctx.render(
        "error.html",
        status,
        title="This sign-in link cannot be used",
        error=error,
        description=description,
    )


def _oauth_request(ctx: Context, request: Request, pairs: list[tuple[str, str]]) -> OAuthRequest:
    uri = ctx.settings.url("authorize") + ("?" + urlencode(pairs) if pairs else "")
    return OAuthRequest("GET", uri, dict(request.headers), pairs, [])


def _deliver_error(ctx: Context, delivery: Delivery, error: OAuth2Error, client: Client | None) -> Response:
    status, body, headers = error(None)
    return delivery.respond(ctx, Result(status, body, list(headers)), client)


def _login_redirect(pairs: list[tuple[str, str]]) -> Response:
    """To the sign-in page, returning afterwards to this request without ``prompt=login``."""
    kept = [(k, v) for k, v in pairs if k not in ("prompt", "max_age")]
    return_to = "/authorize?" + urlencode(kept)
    return RedirectResponse("/login?" + urlencode({"return_to": return_to}), 302, headers=_no_store())


async def authorize(request: Request) -> Response:
    ctx = ctx_of(request)
    await ctx.keys.refresh_if_stale(ctx.pool)
    pairs = list(request.query_params.multi_items())
    if request.method == "POST":  # OIDC Core §3.1.2.1: the endpoint also accepts form-encoded POST
        form = await request.form()
        pairs += [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
    return await _authorize(ctx, request, pairs, decision=None)


async def _authorize(
    ctx: Context, request: Request, pairs: list[tuple[str, str]], decision: str | None
) -> Response:
    params = dict(pairs)
    bad = unquotable_parameter(pairs) or next((k for k, v in pairs if not store.storable(v)), None)
    if bad is not None:
        return error_page(
            ctx, "invalid_request", f"The {bad} parameter holds characters that are not allowed."
        )
    delivery = Delivery(params)
    user = await signed_in_user(request)
    oreq = _oauth_request(ctx, request, pairs)
    try:
        grant = await ctx.in_thread(ctx.server.get_consent_grant, oreq, user)
    except OAuth2Error as error:
        return _deliver_error(ctx, delivery, error, None)
    client: Client = oreq.client
    # Validated by Authlib at this point (OpenIDImplicitGrant does not keep it on grant.redirect_uri).
    redirect_uri = grant.redirect_uri or params.get("redirect_uri") or client.get_default_redirect_uri()
    prompts = split_scope(params.get("prompt"))
    state = params.get("state")

    def fail(error: OAuth2Error) -> Response:
        error.redirect_uri = redirect_uri
        error.redirect_fragment = delivery.implicit
        error.state = state
        return _deliver_error(ctx, delivery, error, client)

    try:
        delivery.validate(redirect_uri)
    except OAuth2Error as error:
        delivery.mode = delivery.default_mode
        return fail(error)

    if user is not None and _too_old(user, params.get("max_age")):
        user = None
    if user is None or ("login" in prompts and decision is None):
        if "none" in prompts:
            return fail(LoginRequiredError())
        return _login_redirect(pairs)

    if not client.first_party:
        scopes = granted_scopes(client, user, oreq.scope)
        if decision == "allow":
            await store.add_consent(ctx.pool, user.user.subject, client.client_id, scopes)
        elif decision is None:
            remembered = await store.get_consent(ctx.pool, user.user.subject, client.client_id)
            if "consent" in prompts or any(s not in remembered for s in scopes):
                if "none" in prompts:
                    return fail(ConsentRequiredError())
                return _consent_page(ctx, request, client, user, scopes, pairs)

    grant_user = None if decision == "deny" else user
    oreq = _oauth_request(ctx, request, pairs)
    oreq.user = user
    result = await ctx.in_thread(ctx.server.create_authorization_response, oreq, grant_user, grant)
    return delivery.respond(ctx, result, client)


def _too_old(user: SignedInUser, max_age: str | None) -> bool:
    if max_age is None or not max_age.isdigit():
        return False
    return time.time() - user.auth_time > int(max_age)


def _consent_page(
    ctx: Context,
    request: Request,
    client: Client,
    user: SignedInUser,
    scopes: list[str],
    pairs: list[tuple[str, str]],
) -> Response:
    cookie, fresh = csrf_cookie_value(request)
    response = ctx.render(
        "consent.html",
        client_name=client.name,
        user_name=user.user.name,
        scopes=describe(scopes),
        consents_url="/account/consents",
        action="/authorize/decision",
        csrf_token=ctx.csrf.token(cookie, "consent"),
        request_query=urlencode(pairs),
    )
    if fresh:
        set_cookie(response, CSRF_COOKIE, cookie, secure=ctx.settings.cookie_secure, max_age=None)
    return response


async def decision(request: Request) -> Response:
    """The consent form's answer: remember the consent (allow) or tell the client ``access_denied``."""
    ctx = ctx_of(request)
    form = await request.form()
    token = form.get("csrf_token")
    if not ctx.csrf.verify(request.cookies.get(CSRF_COOKIE), "consent", str(token or "")):
        login_failures.labels("csrf").inc()
        return error_page(ctx, "invalid_request", "The form expired or was not sent by this site.", 403)
    answer = str(form.get("decision") or "")
    if answer not in ("allow", "deny"):
        return error_page(ctx, "invalid_request", "decision must be allow or deny.", 400)
    pairs = parse_qsl(str(form.get("request") or ""), keep_blank_values=True)
    if not pairs:
        return error_page(ctx, "invalid_request", "The authorization request is missing.", 400)
    if await signed_in_user(request) is None:
        return _login_redirect(pairs)
    return await _authorize(ctx, request, pairs, decision=answer)


# --- sign-in -----------------------------------------------------------------------------------


def safe_return_to(value: str | None) -> str:
    """Only our own authorization endpoint or account page: never an open redirect."""
    if not value or "\\" in value or any(ord(c) < 0x20 for c in value):
        return "/account/consents"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or parts.path not in RETURN_PATHS or value.startswith("//"):
        return "/account/consents"
    return value


async def _client_name(ctx: Context, return_to: str) -> str | None:
    query = dict(parse_qsl(urlsplit(return_to).query))
    client_id = query.get("client_id")
    if not client_id:
        return None
    client = await store.get_client(ctx.pool, client_id)
    return client.name if client else None


async def login_form(request: Request) -> Response:
    ctx = ctx_of(request)
    return_to = safe_return_to(request.query_params.get("return_to"))
    # OIDC login_hint (Auth0 honours it too): pre-fill the user name, nothing more.
    hint = dict(parse_qsl(urlsplit(return_to).query)).get("login_hint", "")[:200]
    return await _login_page(ctx, request, return_to, error=None, username=hint, status=200)


async def _login_page(
    ctx: Context,
    request: Request,
    return_to: str,
    *,
    error: str | None,
    username: str,
    status: int,
    headers: dict[str, str] | None = None,
) -> Response:
    cookie, fresh = csrf_cookie_value(request)
    response = ctx.render(
        "login.html",
        status,
        action="/login",
        csrf_token=ctx.csrf.token(cookie, "login"),
        return_to=return_to,
        error=error,
        username=username,
        client_name=await _client_name(ctx, return_to),
    )
    response.headers.update(headers or {})
    if fresh:
        set_cookie(response, CSRF_COOKIE, cookie, secure=ctx.settings.cookie_secure, max_age=None)
    return response


async def login_submit(request: Request) -> Response:
    ctx = ctx_of(request)
    form = await request.form()
    return_to = safe_return_to(str(form.get("return_to") or ""))
    username = str(form.get("username") or "").strip()[:200]
    password = str(form.get("password") or "")[:1000]
    if not ctx.csrf.verify(request.cookies.get(CSRF_COOKIE), "login", str(form.get("csrf_token") or "")):
        login_failures.labels("csrf").inc()
        return await _login_page(
            ctx,
            request,
            return_to,
            status=403,
            username=username,
            error="This form expired or was not sent by this site. Please try again.",
        )
    if not username or not password:
        return await _login_page(
            ctx,
            request,
            return_to,
            status=400,
            username=username,
            error="Enter your user name and password.",
        )
    address = client_address(request, ctx.settings.trusted_proxy_networks)
    # Counted before the (slow) password check, atomically: concurrent guesses cannot overrun it.
    verdict = await ctx.throttle.attempt(username, address)
    if not verdict.allowed:
        login_failures.labels("throttled").inc()
        log.warning("sign-in throttled", extra={"address": address, "limit": verdict.scope})
        return await _login_page(
            ctx,
            request,
            return_to,
            status=429,
            username=username,
            error=f"Too many failed attempts. Try again in {verdict.retry_after} seconds.",
            headers={"Retry-After": str(verdict.retry_after)},
        )
    user = await store.get_user_by_username(ctx.pool, username)
    stored = user.password_hash if user and not user.disabled else None
    ok = await ctx.in_thread(verify_secret, stored, password)
    if not ok or user is None:
        login_failures.labels("invalid_credentials").inc()
        log.info("sign-in refused", extra={"address": address, "reason": "invalid_credentials"})
        return await _login_page(
            ctx,
            request,
            return_to,
            status=401,
            username=username,
            error="Wrong user name or password.",
        )
    await ctx.throttle.succeeded(username, address)
    if needs_rehash(user.password_hash):
        await store.update_password_hash(ctx.pool, user.subject, await ctx.in_thread(hash_secret, password))
    previous = request.cookies.get(SESSION_COOKIE)
    if previous and len(previous) <= 100:
        await store.delete_session(ctx.pool, previous)
    session_id = new_token()
    await store.create_session(ctx.pool, session_id, user.subject, ctx.settings.session_ttl_seconds)
    logins.inc()
    log.info("signed in", extra={"subject": user.subject, "address": address})
    response = RedirectResponse(return_to, status_code=303, headers=_no_store())
    set_cookie(
        response,
        SESSION_COOKIE,
        session_id,
        secure=ctx.settings.cookie_secure,
        max_age=ctx.settings.session_ttl_seconds,
    )
    return response
