"""The identity service's ASGI app: routes, lifespan (keys, Redis, housekeeping) and readiness."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.routing import Route
from svckit.app import create_service_app
from svckit.db import UNAVAILABLE_ERRORS, Database
from svckit.logs import configure_logging
from svckit.redisguard import RedisGuard
from svckit.settings import load_settings

from . import store
from .account import consents_page, revoke_consent
from .authorize import authorize, decision, login_form, login_submit
from .browser import CsrfSigner
from .context import Context
from .cors import CorsMiddleware
from .endpoints import (
    auth0_logout,
    jwks,
    oidc_logout,
    openid_configuration,
    revoke_token,
    token,
    userinfo,
)
from .keys import KeyCipher, KeyEncryptionError
from .keystore import KeyStore
from .oauth import Backend, IdentityServer
from .settings import IdentitySettings
from .throttle import FailureThrottle, LoginThrottle

log = logging.getLogger("identity.app")

HOUSEKEEPING_ERRORS: tuple[type[BaseException], ...] = (KeyEncryptionError, *UNAVAILABLE_ERRORS)

ROUTES = [
    Route("/.well-known/openid-configuration", openid_configuration, methods=["GET"]),
    Route("/.well-known/jwks.json", jwks, methods=["GET"]),
    Route("/authorize", authorize, methods=["GET", "POST"]),
    Route("/authorize/decision", decision, methods=["POST"]),
    Route("/login", login_form, methods=["GET"]),
    Route("/login", login_submit, methods=["POST"]),
    Route("/oauth/token", token, methods=["POST"]),
    Route("/oauth/revoke", revoke_token, methods=["POST"]),
    Route("/userinfo", userinfo, methods=["GET", "POST"]),
    Route("/v2/logout", auth0_logout, methods=["GET"]),
    Route("/oidc/logout", oidc_logout, methods=["GET", "POST"]),
    Route("/account/consents", consents_page, methods=["GET"]),
    Route("/account/consents/revoke", revoke_consent, methods=["POST"]),
]


def build_app(settings: IdentitySettings) -> Starlette:
    # Authlib logs whole token responses at DEBUG; keep them out of the logs whatever LOG_LEVEL says.
    logging.getLogger("authlib").setLevel(logging.INFO)
    if settings.identity_allow_insecure_http:
        os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"
    database = Database.from_settings(settings, "identity")
    keys = KeyStore(
        KeyCipher(settings.key_encryption_key), settings.signing_alg, settings.key_refresh_seconds
    )
    redis = RedisGuard.from_settings(settings)
    ctx = Context(
        settings=settings,
        database=database,
        keys=keys,
        server=IdentityServer(Backend(settings, keys, lambda: database.pool)),
        throttle=LoginThrottle(
            redis,
            max_per_user=settings.login_max_failures_per_user,
            max_per_address=settings.login_max_failures_per_address,
            window_seconds=settings.login_throttle_window_seconds,
        ),
        client_auth_throttle=FailureThrottle(
            redis,
            "client-auth-fail",
            max_per_address=settings.client_auth_max_failures_per_address,
            window_seconds=settings.login_throttle_window_seconds,
        ),
        csrf=CsrfSigner(settings.session_secret),
    )

    async def keys_ready() -> None:
        ctx.keys.signer()

    async def housekeeping() -> None:
        """Load keys once the database is up, then refresh them and purge expired rows."""
        while True:
            try:
                await database.wait_connected()
                await keys.start(database.pool)
                break
            except UNAVAILABLE_ERRORS as exc:
                log.warning("cannot load signing keys yet", extra={"error": type(exc).__name__})
                await asyncio.sleep(1)
            except KeyEncryptionError as exc:
                # Misconfiguration: stay up but not ready (``/readyz`` names signing_keys), say why.
                log.error("signing keys unusable", extra={"error": str(exc)})
                await asyncio.sleep(30)
        while True:
            await asyncio.sleep(settings.key_refresh_seconds)
            try:
                await keys.refresh(database.pool)
                await store.purge_expired(database.pool)
            except HOUSEKEEPING_ERRORS as exc:
                log.warning("housekeeping failed", extra={"error": str(exc) or type(exc).__name__})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(housekeeping(), name="identity-housekeeping")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await redis.close()

    app = create_service_app(
        settings,
        ROUTES,
        database=database,
        checks={"signing_keys": keys_ready},
        lifespan=lifespan,
        require_identity=False,
        max_body_size=64 * 1024,
        state={"ctx": ctx},
    )
    app.add_middleware(CorsMiddleware)
    return app


def create_app(settings: IdentitySettings | None = None) -> Starlette:
    """Factory for uvicorn (``python -m identity`` serves this)."""
    if settings is None:
        settings = load_settings(IdentitySettings)
        configure_logging(settings.service_name, settings.log_level)
    return build_app(settings)
