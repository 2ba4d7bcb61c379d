"""The signed-in user's own page: third-party apps they allowed, and withdrawing that consent."""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from . import store
from .authorize import error_page
from .browser import CSRF_COOKIE, csrf_cookie_value, set_cookie
from .context import ctx_of, signed_in_user


async def consents_page(request: Request) -> Response:
    ctx = ctx_of(request)
    user = await signed_in_user(request)
    if user is None:
        return RedirectResponse("/login?" + urlencode({"return_to": "/account/consents"}), 302)
    cookie, fresh = csrf_cookie_value(request)
    response = ctx.render(
        "consents.html",
        user_name=user.user.name,
        consents=await store.list_consents(ctx.pool, user.user.subject),
        csrf_token=ctx.csrf.token(cookie, "revoke"),
        revoke_action="/account/consents/revoke",
    )
    if fresh:
        set_cookie(response, CSRF_COOKIE, cookie, secure=ctx.settings.cookie_secure, max_age=None)
    return response


async def revoke_consent(request: Request) -> Response:
    ctx = ctx_of(request)
    form = await request.form()
    if not ctx.csrf.verify(request.cookies.get(CSRF_COOKIE), "revoke", str(form.get("csrf_token") or "")):
        return error_page(ctx, "invalid_request", "The form expired or was not sent by this site.", 403)
    user = await signed_in_user(request)
    if user is None:
        return RedirectResponse("/login?" + urlencode({"return_to": "/account/consents"}), 303)
    client_id = str(form.get("client_id") or "")
    await store.revoke_consent(ctx.pool, user.user.subject, client_id)
    return RedirectResponse("/account/consents", 303)
