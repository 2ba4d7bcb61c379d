"""Machine-facing endpoints: discovery, JWKS, token, userinfo; and logout (Auth0's and OIDC's)."""

from __future__ import annotations

from typing import Any

from authlib.oauth2.rfc6749 import OAuth2Error
from prometheus_client import Counter
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from svckit.body import NotAccepted, parse_json

from . import store
from .authorize import RESPONSE_MODES, error_page
from .browser import SESSION_COOKIE, clear_cookie, client_address
from .context import Context, ctx_of
from .oauth import Request as OAuthRequest
from .oauth import Result, unquotable_parameter, user_info
from .scopes import ALL_SCOPES
from .tokens import InvalidAccessToken, verify_access_token

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

client_auth_throttled = Counter(
    "identity_client_auth_throttled_total",
    "Token requests refused because their address failed client authentication too often.",
)


def discovery_document(ctx: Context) -> dict[str, Any]:
    s = ctx.settings
    return {
        "issuer": s.identity_issuer,
        "authorization_endpoint": s.url("authorize"),
        "token_endpoint": s.url("oauth/token"),
        "userinfo_endpoint": s.url("userinfo"),
        "jwks_uri": s.url(".well-known/jwks.json"),
        "end_session_endpoint": s.url("oidc/logout"),
        "revocation_endpoint": s.url("oauth/revoke"),
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "scopes_supported": list(ALL_SCOPES),
        "response_types_supported": ["code", "id_token token", "token id_token", "id_token"],
        "response_modes_supported": list(RESPONSE_MODES),
        "grant_types_supported": ["authorization_code", "implicit", "client_credentials", "refresh_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [s.signing_alg],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": [
            "sub",
            "iss",
            "aud",
            "exp",
            "iat",
            "auth_time",
            "nonce",
            "azp",
            "at_hash",
            "name",
            "nickname",
            "preferred_username",
            "email",
            "email_verified",
        ],
        "prompt_values_supported": ["none", "login", "consent"],
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
        "claims_parameter_supported": False,
        "frontchannel_logout_supported": False,
    }


async def openid_configuration(request: Request) -> Response:
    ctx = ctx_of(request)
    return JSONResponse(discovery_document(ctx), headers={"Cache-Control": "public, max-age=300"})


async def jwks(request: Request) -> Response:
    ctx = ctx_of(request)
    await ctx.keys.refresh_if_stale(ctx.pool)
    return JSONResponse(ctx.keys.jwks(), headers={"Cache-Control": "public, max-age=60"})


def oauth_error(status: int, error: str, description: str, headers: dict[str, str] | None = None) -> Response:
    body = {"error": error, "error_description": description}
    return JSONResponse(body, status_code=status, headers={**NO_STORE, **(headers or {})})


async def _token_params(request: Request) -> list[tuple[str, str]] | Response:
    """Form (RFC 6749) or JSON (as Auth0 also accepts) body to parameter pairs."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type == "application/x-www-form-urlencoded":
        form = await request.form()
        return [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
    if media_type == "application/json":
        try:
            document = parse_json(await request.body())
        except NotAccepted:
            return oauth_error(400, "invalid_request", "The body is not valid JSON.")
        if not isinstance(document, dict) or not all(
            isinstance(v, str | int) and not isinstance(v, bool) for v in document.values()
        ):
            return oauth_error(400, "invalid_request", "The JSON body must be an object of strings.")
        return [(str(k), str(v)) for k, v in document.items()]
    return oauth_error(
        400,
        "invalid_request",
        "Send the parameters as application/x-www-form-urlencoded (or application/json).",
    )


async def token(request: Request) -> Response:
    ctx = ctx_of(request)
    await ctx.keys.refresh_if_stale(ctx.pool)
    params = await _token_params(request)
    if isinstance(params, Response):
        return params
    bad = unquotable_parameter(params) or next((k for k, v in params if not store.storable(v)), None)
    if bad is not None:
        return oauth_error(
            400, "invalid_request", f"The {bad} parameter holds characters that are not allowed."
        )
    address = client_address(request, ctx.settings.trusted_proxy_networks)
    verdict = await ctx.client_auth_throttle.check(address)
    if not verdict.allowed:
        client_auth_throttled.inc()
        return oauth_error(
            429,
            "too_many_attempts",
            f"Too many failed client authentications; retry in {verdict.retry_after} seconds.",
            {"Retry-After": str(verdict.retry_after)},
        )
    oreq = OAuthRequest("POST", ctx.settings.url("oauth/token"), request.headers, [], params)  # type: ignore[arg-type]
    result: Result = await ctx.in_thread(ctx.server.create_token_response, oreq)
    if isinstance(result.body, dict) and result.body.get("error") == "invalid_client":
        await ctx.client_auth_throttle.failed(address)
    headers = {**NO_STORE, **dict(result.headers)}
    headers.pop("Content-Type", None)
    return JSONResponse(result.body, status_code=result.status, headers=headers)


async def revoke_token(request: Request) -> Response:
    """RFC 7009 token revocation, through Authlib's endpoint."""
    ctx = ctx_of(request)
    await ctx.keys.refresh_if_stale(ctx.pool)
    params = await _token_params(request)
    if isinstance(params, Response):
        return params
    if any(not store.storable(v) for _, v in params) or unquotable_parameter(params):
        return oauth_error(400, "invalid_request", "A parameter holds characters that are not allowed.")
    oreq = OAuthRequest("POST", ctx.settings.url("oauth/revoke"), request.headers, [], params)  # type: ignore[arg-type]
    result: Result = await ctx.in_thread(ctx.server.create_endpoint_response, "revocation", oreq)
    headers = {**NO_STORE, **dict(result.headers)}
    headers.pop("Content-Type", None)
    return JSONResponse(result.body, status_code=result.status, headers=headers)


def _bearer_challenge(error: str | None = None, description: str | None = None) -> dict[str, str]:
    value = 'Bearer realm="userinfo"'
    if error:
        value += f', error="{error}"'
    if description:
        value += f', error_description="{description}"'
    return {"WWW-Authenticate": value}


async def userinfo(request: Request) -> Response:
    ctx = ctx_of(request)
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return oauth_error(
            401, "invalid_request", "Send the access token as a Bearer token.", _bearer_challenge()
        )
    await ctx.keys.refresh_if_stale(ctx.pool)
    try:
        claims = verify_access_token(ctx.settings, ctx.keys, credentials.strip())
    except InvalidAccessToken:
        description = "The access token is invalid or expired"
        return oauth_error(401, "invalid_token", description, _bearer_challenge("invalid_token", description))
    if await store.token_revoked(ctx.pool, str(claims["jti"])):
        description = "The access token was revoked"
        return oauth_error(401, "invalid_token", description, _bearer_challenge("invalid_token", description))
    user = await store.get_user(ctx.pool, str(claims["sub"]))
    if user is None or user.disabled:
        description = "The user no longer exists"
        return oauth_error(401, "invalid_token", description, _bearer_challenge("invalid_token", description))
    return JSONResponse(dict(user_info(user, str(claims.get("scope", "")))), headers=NO_STORE)


# --- logout ------------------------------------------------------------------------------------


async def _end_session(ctx: Context, request: Request) -> None:
    session_id = request.cookies.get(SESSION_COOKIE)
    if session_id and len(session_id) <= 100:
        await store.delete_session(ctx.pool, session_id)


def _signed_out(ctx: Context, response: Response | None = None) -> Response:
    response = response or ctx.render(
        "message.html", title="Signed out", text="You are signed out. You can close this window."
    )
    clear_cookie(response, SESSION_COOKIE, secure=ctx.settings.cookie_secure)
    return response


async def auth0_logout(request: Request) -> Response:
    """Auth0's ``/v2/logout?client_id=…&returnTo=…``: ``returnTo`` must be registered for the client."""
    ctx = ctx_of(request)
    return_to = request.query_params.get("returnTo")
    client_id = request.query_params.get("client_id")
    await _end_session(ctx, request)
    if not return_to:
        return _signed_out(ctx)
    client = await store.get_client(ctx.pool, client_id) if client_id else None
    if client is None or return_to not in client.post_logout_redirect_uris:
        page = error_page(
            ctx,
            "invalid_request",
            "returnTo is not an allowed logout URL for this client_id; you are signed out.",
        )
        return _signed_out(ctx, page)
    return _signed_out(ctx, RedirectResponse(return_to, 302, headers=NO_STORE))


async def oidc_logout(request: Request) -> Response:
    """OpenID Connect RP-Initiated Logout 1.0 (``end_session_endpoint``), through Authlib."""
    ctx = ctx_of(request)
    await ctx.keys.refresh_if_stale(ctx.pool)
    query = list(request.query_params.multi_items())
    form: list[tuple[str, str]] = []
    if request.method == "POST":
        form = [(k, v) for k, v in (await request.form()).multi_items() if isinstance(v, str)]
    if unquotable_parameter([*query, *form]) is not None:
        await _end_session(ctx, request)
        return _signed_out(
            ctx, error_page(ctx, "invalid_request", "A parameter holds characters that are not allowed.")
        )
    oreq = OAuthRequest(request.method, ctx.settings.url("oidc/logout"), request.headers, query, form)  # type: ignore[arg-type]
    try:
        validated = await ctx.in_thread(ctx.server.validate_endpoint_request, "end_session", oreq)
    except OAuth2Error as error:
        await _end_session(ctx, request)
        page = error_page(
            ctx, error.error or "invalid_request", error.description or "Invalid logout request."
        )
        return _signed_out(ctx, page)
    await _end_session(ctx, request)
    if validated.redirect_uri:
        return _signed_out(ctx, RedirectResponse(validated.redirect_uri, 302, headers=NO_STORE))
    return _signed_out(ctx)
