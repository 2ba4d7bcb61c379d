"""The identity service's ASGI app: its parts wired together, routes, lifespan and readiness.

Every handler is a method of a small object that receives exactly what it uses (settings, database,
keys, the Authlib server, throttles, the revocation publisher) here, in one place.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.routing import Route
from svckit.app import create_service_app
from svckit.db import UNAVAILABLE_ERRORS, Database, DatabaseUnavailable
from svckit.dpop import ReplayGuard
from svckit.http import HttpClient
from svckit.logs import configure_logging
from svckit.outbox import DB_ERRORS, OutboxRelay
from svckit.redisguard import RedisGuard
from svckit.settings import load_settings
from svckit.tasks import PeriodicTask, stop_all

from . import outage, store
from .account import Account
from .authorize import AuthorizationEndpoint
from .browser import CsrfSigner
from .cors import ClientOrigins, CorsMiddleware
from .endpoints import ProtocolEndpoints
from .keys import KeyCipher, KeyEncryptionError
from .keystore import KeyStore, NoSigningKey
from .logout import Logout
from .oauth import Backend, IdentityServer
from .revocation import GATEWAY_LEEWAY_SECONDS, RevocationPublisher, Revoker
from .sessions import Sessions
from .settings import IdentitySettings
from .signin import PasswordSignIn
from .throttle import FailureThrottle, IssueLimit, LoginThrottle
from .tokens import IdTokenMinter

log = logging.getLogger("identity.app")

SCHEMA = "identity"
HOUSEKEEPING_ERRORS: tuple[type[BaseException], ...] = (KeyEncryptionError, *UNAVAILABLE_ERRORS)


def build_app(settings: IdentitySettings) -> Starlette:
    # Authlib logs whole token responses at DEBUG; keep them out of the logs whatever LOG_LEVEL says.
    logging.getLogger("authlib").setLevel(logging.INFO)
    if settings.identity_allow_insecure_http:
        os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"
    database = Database.from_settings(settings, SCHEMA)
    # the provider's denials (identity.denials) go through its outbox to the audit service, signed with
    # the identity → audit pair's key (svckit.identity.PAIRS), like every writer's events
    http = HttpClient()
    relay = OutboxRelay.for_service(settings, database, SCHEMA, http)
    keys = KeyStore(
        KeyCipher(settings.key_encryption_keys), settings.signing_alg, settings.key_refresh_seconds
    )
    redis = RedisGuard.from_settings(settings)
    server = IdentityServer(Backend(settings, keys, database, IdTokenMinter(settings, keys)))
    publisher = RevocationPublisher(
        redis,
        database,
        settings.identity_issuer,
        retention_seconds=settings.access_token_ttl_seconds + GATEWAY_LEEWAY_SECONDS,
    )
    revoker = Revoker(database, publisher)
    sessions = Sessions(database)
    csrf = CsrfSigner(settings.session_keys)
    throttle = LoginThrottle(
        redis,
        max_per_user=settings.login_max_failures_per_user,
        max_per_user_all_addresses=settings.login_max_failures_per_user_all_addresses,
        max_per_address=settings.login_max_failures_per_address,
        window_seconds=settings.login_throttle_window_seconds,
    )
    client_auth_throttle = FailureThrottle(
        redis,
        "client-auth-fail",
        max_per_address=settings.client_auth_max_failures_per_address,
        window_seconds=settings.login_throttle_window_seconds,
    )
    # failed token and revocation requests per address, spent before a DPoP proof is remembered
    token_failures = FailureThrottle(
        redis,
        "token-fail",
        max_per_address=settings.token_max_failures_per_address,
        window_seconds=settings.token_failure_window_seconds,
    )
    issue_limit = IssueLimit(
        redis,
        settings.identity_issuer,
        max_per_user=settings.authorize_max_codes_per_user,
        window_seconds=settings.authorize_code_window_seconds,
    )
    proofs = settings.proof_verifier(settings.dpop_nonce_keys)
    # DPoP proofs' jti, once across every replica (Redis), in process while Redis is unavailable
    replays = ReplayGuard(redis, "identity-dpop-jti", proofs.window_seconds)
    protocol = ProtocolEndpoints(
        settings, database, keys, server, client_auth_throttle, token_failures, publisher, proofs, replays
    )
    authorization = AuthorizationEndpoint(settings, database, keys, server, sessions, csrf, issue_limit)
    signin = PasswordSignIn(settings, database, sessions, revoker, throttle, csrf)
    logout = Logout(settings, database, keys, server, revoker, sessions, csrf)
    account = Account(settings, database, sessions, revoker, csrf)
    routes = [
        Route("/.well-known/openid-configuration", protocol.openid_configuration, methods=["GET"]),
        Route("/.well-known/jwks.json", protocol.jwks, methods=["GET"]),
        Route("/authorize", authorization.authorize, methods=["GET", "POST"]),
        Route("/authorize/decision", authorization.decision, methods=["POST"]),
        Route("/login", signin.form, methods=["GET"]),
        Route("/login", signin.submit, methods=["POST"]),
        Route("/oauth/token", protocol.token, methods=["POST"]),
        Route("/oauth/revoke", protocol.revoke, methods=["POST"]),
        Route("/userinfo", protocol.userinfo, methods=["GET", "POST"]),
        Route("/v2/logout", logout.auth0_logout, methods=["GET", "POST"]),
        Route("/oidc/logout", logout.oidc_logout, methods=["GET", "POST"]),
        Route("/account/consents", account.consents_page, methods=["GET"]),
        Route("/account/consents/revoke", account.revoke_consent, methods=["POST"]),
    ]

    async def keys_ready() -> None:
        keys.signer()

    keys_loaded = False

    async def housekeeping() -> None:
        """Load the signing keys once the database is up; after that refresh them and purge expired
        rows. Until the keys load, ``/readyz`` names ``signing_keys`` (a misconfigured
        ``IDENTITY_KEY_ENCRYPTION_KEY`` keeps it there, and every attempt logs why)."""
        nonlocal keys_loaded
        if not keys_loaded:
            await database.wait_connected()
            await keys.start(database.queries)
            keys_loaded = True
            return
        await keys.refresh(database.queries)
        await store.purge_expired(database.queries)

    housekeeper = PeriodicTask(
        "identity-housekeeping",
        settings.key_refresh_seconds,
        housekeeping,
        initial_delay=0,
        expected=(*HOUSEKEEPING_ERRORS, DatabaseUnavailable),
        backoff_base=1.0,  # keys not loaded yet: try again soon, then less and less often
        max_backoff=30.0,
        stop_timeout=1.0,
        logger=log,
    )

    # Keeps the gateways' revocation stream complete (identity.revocation): re-publishes it when Redis
    # lost it, publishes what a failed attempt left behind, trims it.
    revocation_feed = PeriodicTask(
        "identity-revocation-feed",
        settings.revocation_check_seconds,
        publisher.reconcile,
        initial_delay=0,
        expected=(*UNAVAILABLE_ERRORS, DatabaseUnavailable),
        logger=log,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        relay.start()
        housekeeper.start()
        revocation_feed.start()
        try:
            yield
        finally:
            await stop_all([revocation_feed, housekeeper])
            await relay.stop()
            await replays.close()
            await redis.close()

    app = create_service_app(
        settings,
        routes,
        database=database,
        http=http,
        checks={"signing_keys": keys_ready},
        lifespan=lifespan,
        require_identity=False,
        max_body_size=64 * 1024,
        state={"relay": relay},
        # refused sign-ins, client authentications, codes, refresh tokens: aggregated records,
        # committed to the outbox and relayed to the audit trail
        denial_sink=relay.record,
        denial_sink_errors=DB_ERRORS,
    )
    # the browser pages' 503 is a page (identity.outage); the kit's problem document for the rest
    unavailable: tuple[type[BaseException], ...] = (DatabaseUnavailable, *UNAVAILABLE_ERRORS)
    for error in unavailable:
        if issubclass(error, Exception):
            app.add_exception_handler(error, outage.unavailable)
    # no usable signing key (yet): not now, like an outage, never a 500 (identity.outage)
    for error in (NoSigningKey, KeyEncryptionError):
        app.add_exception_handler(error, outage.keys_not_loaded)
    app.add_middleware(
        CorsMiddleware, origins=ClientOrigins(database, ttl=settings.cors_origins_refresh_seconds)
    )
    # No route has a trailing slash, and Starlette's answer to one (a 307 to the same path without it)
    # is an absolute URL built from the request's Host and scheme: any name a request (or a poisoned
    # cache) sends, plain http behind the TLS ingress, and a 307 replays a POST's body (a client
    # secret) there. Such a path is a 404 like any other unknown path.
    app.router.redirect_slashes = False
    return app


def create_app(settings: IdentitySettings | None = None) -> Starlette:
    """Factory for uvicorn (``python -m identity`` serves this)."""
    if settings is None:
        settings = load_settings(IdentitySettings)
        configure_logging(settings.service_name, settings.log_level)
    return build_app(settings)
