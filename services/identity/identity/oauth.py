"""Authlib's OAuth 2.0 / OIDC server, adapted to Starlette and asyncpg.

Authlib's grant classes hold the protocol logic (parameter validation, redirect URI matching, PKCE,
client authentication, ``prompt``, nonce, ``at_hash``) and call synchronous hooks for storage. The
adapter runs an Authlib call in a worker thread (``anyio.to_thread``) and lets those hooks run their
asyncpg queries back on the event loop (``anyio.from_thread``), so no protocol parsing is re-written
here and the database stays async.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import anyio.from_thread
from authlib.oauth2.rfc6749 import AuthorizationServer, OAuth2Request
from authlib.oauth2.rfc6749.errors import (
    AccessDeniedError,
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
)
from authlib.oauth2.rfc6749.grants import (
    AuthorizationCodeGrant,
    ClientCredentialsGrant,
    RefreshTokenGrant,
)
from authlib.oauth2.rfc6749.requests import OAuth2Payload
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import UserInfo
from authlib.oidc.core.grants import OpenIDCode, OpenIDImplicitGrant, OpenIDToken
from authlib.oidc.core.grants.util import create_response_mode_response
from authlib.oidc.rpinitiated import EndSessionEndpoint
from prometheus_client import Counter

from . import store
from .keystore import KeyStore
from .models import AuthorizationCode, Client, RefreshToken, SignedInUser, User
from .scopes import ALL_SCOPES, split_scope
from .settings import IdentitySettings
from .tokens import (
    AccessTokenMinter,
    InvalidAccessToken,
    IssuedToken,
    granted_scopes,
    verify_access_token,
)

log = logging.getLogger("identity.oauth")

tokens_issued = Counter(
    "identity_tokens_issued_total",
    "Access tokens issued, by grant type (authorization_code, implicit, client_credentials).",
    ["grant_type"],
)
refresh_reuse = Counter(
    "identity_refresh_token_reuse_total",
    "Rotated refresh tokens presented again (their whole family is revoked).",
)
code_replays = Counter(
    "identity_code_replays_total",
    "Authorization codes presented a second time (the tokens of their first use are revoked).",
)

T = TypeVar("T")


# --- requests and responses --------------------------------------------------------------------

# RFC 6749 §5.2 limits error descriptions to %x20-21 / %x23-5B / %x5D-7E, and Authlib raises (a 500)
# when a description would contain anything else. Parameters Authlib quotes in its descriptions are
# therefore checked first and refused with a plain 400 naming the parameter.
_NOT_QUOTABLE = re.compile(r"[^\x20-\x21\x23-\x5b\x5d-\x7e]")
QUOTED_PARAMETERS = (
    "client_id",
    "redirect_uri",
    "response_type",
    "response_mode",
    "grant_type",
    "scope",
    "prompt",
    "audience",
    "code_challenge_method",
)


def unquotable_parameter(pairs: Iterable[tuple[str, str]]) -> str | None:
    """The first parameter whose value may not appear in an OAuth error description, if any."""
    for name, value in pairs:
        if name in QUOTED_PARAMETERS and _NOT_QUOTABLE.search(value):
            return name
    return None


def quotable(text: str) -> str:
    """``text`` with every character an OAuth error description may not hold replaced by '?'."""
    return _NOT_QUOTABLE.sub("?", text)[:200]


class Payload(OAuth2Payload):  # type: ignore[misc]
    """Query and form parameters merged; the first value of each name wins, all are kept."""

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self._datalist: defaultdict[str, list[str]] = defaultdict(list)
        for key, value in pairs:
            self._datalist[key].append(value)
        self._data = {key: values[0] for key, values in self._datalist.items()}

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        return self._datalist


class Request(OAuth2Request):  # type: ignore[misc]
    """An Authlib request built from what Starlette parsed (query string and form or JSON body)."""

    def __init__(
        self,
        method: str,
        uri: str,
        headers: dict[str, str],
        query: list[tuple[str, str]],
        form: list[tuple[str, str]],
    ) -> None:
        super().__init__(method, uri, headers=headers)
        self._args = dict(query)
        self._form = dict(form)
        self.payload = Payload([*query, *form])

    @property
    def args(self) -> dict[str, str]:
        return self._args

    @property
    def form(self) -> dict[str, str]:
        return self._form


@dataclass
class Result:
    """What Authlib answered: ``(status, body, headers)``."""

    status: int
    body: Any
    headers: list[tuple[str, str]] = field(default_factory=list)

    @property
    def location(self) -> str | None:
        for name, value in self.headers:
            if name.lower() == "location":
                return value
        return None


# --- the server --------------------------------------------------------------------------------


class Backend:
    """What the hooks need: settings, keys, the pool, and a way to await from a worker thread."""

    def __init__(self, settings: IdentitySettings, keys: KeyStore, pool: Callable[[], Any]) -> None:
        self.settings = settings
        self.keys = keys
        self._pool = pool

    @property
    def pool(self) -> Any:
        return self._pool()

    def run(self, func: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """Run a coroutine function on the event loop from Authlib's (worker-thread) code."""
        return anyio.from_thread.run(func, *args)


class IdentityServer(AuthorizationServer):  # type: ignore[misc]
    """Authlib's authorization server with our grants, endpoints, token generator and storage."""

    def __init__(self, backend: Backend) -> None:
        super().__init__(scopes_supported=list(ALL_SCOPES))
        self.backend = backend
        self.register_token_generator("default", AccessTokenMinter(backend.settings, backend.keys))
        self.register_grant(CodeGrant, [Pkce(), OidcCode(backend)])
        self.register_grant(ImplicitGrant)
        self.register_grant(ClientCredentials)
        self.register_grant(RefreshGrant, [OidcToken(backend)])
        self.register_endpoint(EndSession(self))
        self.register_endpoint(Revocation(self))

    def query_client(self, client_id: str) -> Client | None:
        return self.backend.run(store.get_client, self.backend.pool, client_id)

    def save_token(self, token: dict[str, Any], request: Request) -> None:
        issued: IssuedToken | None = token.pop("_issued", None)
        if issued is None:
            return
        code: AuthorizationCode | None = request.authorization_code
        self.backend.run(
            _record_token,
            self.backend.pool,
            issued,
            code.code_hash if code else None,
            int(token["expires_in"]),
        )
        tokens_issued.labels(issued.grant_type).inc()
        if "refresh_token" in token:
            self._save_refresh_token(token, request, code)

    def _save_refresh_token(
        self, token: dict[str, Any], request: Request, code: AuthorizationCode | None
    ) -> None:
        """A new family after a code exchange; the same family (and absolute expiry) after a refresh."""
        previous: RefreshToken | None = request.refresh_token
        user: SignedInUser = request.user
        settings = self.backend.settings
        self.backend.run(
            partial(
                store.save_refresh_token,
                self.backend.pool,
                token["refresh_token"],
                family_id=previous.family_id if previous else secrets.token_urlsafe(16),
                client_id=request.client.client_id,
                subject=user.user.subject,
                scope=token["scope"],
                auth_time=_datetime(user.auth_time),
                session_hash=previous.session_hash if previous else (code.session_hash if code else None),
                idle_seconds=settings.refresh_token_idle_seconds,
                family_expires_at=previous.family_expires_at if previous else None,
                lifetime_seconds=settings.refresh_token_lifetime_seconds,
            )
        )

    def validate_requested_scope(self, scope: str | None) -> None:
        unknown = [s for s in split_scope(scope) if s not in ALL_SCOPES]
        if unknown:
            raise InvalidScopeError(quotable(f"Unknown scope: {' '.join(unknown)}"))

    def create_oauth2_request(self, request: Request) -> Request:
        return request

    def handle_response(self, status: int, body: Any, headers: list[tuple[str, str]]) -> Result:
        return Result(status, body, list(headers))

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        return None


async def _record_token(pool: Any, issued: IssuedToken, code_hash: bytes | None, ttl: int) -> None:
    await store.record_token(
        pool,
        jti=issued.jti,
        code_hash=code_hash,
        client_id=issued.client_id,
        subject=issued.subject,
        grant_type=issued.grant_type,
        ttl_seconds=ttl,
    )


# --- shared grant behaviour --------------------------------------------------------------------


class ClientScopeAndAudience:
    """A client may only ask for the scopes it is registered for, and only for our API."""

    request: Request
    server: IdentityServer

    def validate_requested_scope(self) -> None:
        self.server.validate_requested_scope(self.request.payload.scope)
        client: Client = self.request.client
        refused = [s for s in split_scope(self.request.payload.scope) if s not in client.allowed_scopes]
        if refused:
            raise InvalidScopeError(quotable(f"The client may not request: {' '.join(refused)}"))
        audience = self.request.payload.data.get("audience")
        expected = self.server.backend.settings.oidc_audience
        if audience and audience != expected:
            raise InvalidRequestError(f"Unknown audience; this server issues tokens for {expected}")


def user_info(user: User, scope: str) -> UserInfo:
    """Standard claims (OIDC Core §5.1) released for the granted scopes."""
    scopes = split_scope(scope)
    info = UserInfo(sub=user.subject)
    if "profile" in scopes:
        info.update(name=user.name, nickname=user.username, preferred_username=user.username)
    if "email" in scopes:
        info.update(email=user.email, email_verified=True)
    return info


class IdTokenSigning:
    """ID token header and claims shared by the code and implicit flows."""

    backend: Backend

    def resolve_client_private_key(self, client: Client) -> Any:
        return self.backend.keys.jose_key(self.backend.keys.signer())

    def get_client_algorithm(self, client: Client) -> str:
        return self.backend.keys.signer().alg

    def get_encode_header(self, client: Client) -> dict[str, str]:
        key = self.backend.keys.signer()
        return {"alg": key.alg, "kid": key.kid, "typ": "JWT"}

    def get_client_claims(self, client: Client) -> dict[str, Any]:
        now = int(time.time())
        return {
            "iss": self.backend.settings.identity_issuer,
            "aud": client.client_id,
            "azp": client.client_id,
            "iat": now,
            "exp": now + self.backend.settings.id_token_ttl_seconds,
        }

    def generate_user_info(self, user: SignedInUser, scope: str) -> UserInfo:
        info = user_info(user.user, scope)
        info["auth_time"] = user.auth_time  # when the user signed in, also in refreshed ID tokens
        return info


# --- authorization code + PKCE + OpenID Connect ------------------------------------------------


class Pkce(CodeChallenge):  # type: ignore[misc]
    """RFC 7636 with S256 only; public clients must use it."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"

    def __init__(self) -> None:
        super().__init__(required=True)

    def validate_code_challenge(self, grant: CodeGrant, redirect_uri: str) -> None:
        data = grant.request.payload.data
        challenge = data.get("code_challenge")
        method = data.get("code_challenge_method")
        if method == "plain":
            raise InvalidRequestError("code_challenge_method=plain is not allowed; use S256")
        if grant.request.client.is_public and not challenge:
            raise InvalidRequestError("PKCE is required: send code_challenge with method S256")
        if challenge and method != "S256":
            raise InvalidRequestError("Send code_challenge_method=S256 with the code_challenge")
        super().validate_code_challenge(grant, redirect_uri)


class OidcCode(IdTokenSigning, OpenIDCode):  # type: ignore[misc]
    def __init__(self, backend: Backend) -> None:
        super().__init__(require_nonce=False)
        self.backend = backend

    def exists_nonce(self, nonce: str, request: Request) -> bool:
        client_id = request.payload.client_id
        return self.backend.run(store.nonce_used, self.backend.pool, client_id, nonce)


class CodeGrant(ClientScopeAndAudience, AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]

    @property
    def backend(self) -> Backend:
        return self.server.backend

    def save_authorization_code(self, code: str, request: Request) -> None:
        user: SignedInUser = request.user
        client: Client = request.client
        data = request.payload.data
        settings = self.backend.settings
        item = AuthorizationCode(
            code_hash=b"",
            client_id=client.client_id,
            subject=user.user.subject,
            redirect_uri=data.get("redirect_uri") or client.get_default_redirect_uri() or "",
            scope=" ".join(granted_scopes(client, user, request.scope)),
            audience=settings.oidc_audience,
            nonce=data.get("nonce"),
            code_challenge=data.get("code_challenge"),
            code_challenge_method=data.get("code_challenge_method"),
            auth_time=_datetime(user.auth_time),
            expires_at=_datetime(0),
            session_hash=user.session_hash or None,
        )
        self.backend.run(
            store.save_code, self.backend.pool, code, item, settings.authorization_code_ttl_seconds
        )

    def query_authorization_code(self, code: str, client: Client) -> AuthorizationCode | None:
        state, item = self.backend.run(store.consume_code, self.backend.pool, code)
        if state == store.CodeState.REPLAYED:
            revoked = self.backend.run(store.revoke_tokens_of_code, self.backend.pool, code)
            code_replays.inc()
            log.warning(
                "authorization code replayed; revoked the tokens it issued",
                extra={"client_id": client.client_id, "revoked": revoked},
            )
            raise InvalidGrantError("The authorization code was already used")
        if state == store.CodeState.EXPIRED:
            raise InvalidGrantError("The authorization code has expired")
        if item is None or item.client_id != client.client_id:
            return None
        return item

    def delete_authorization_code(self, authorization_code: AuthorizationCode) -> None:
        # Kept, marked used, until a day after expiry: a second use must be recognised as a replay.
        return None

    def authenticate_user(self, authorization_code: AuthorizationCode) -> SignedInUser | None:
        user = self.backend.run(store.get_user, self.backend.pool, authorization_code.subject)
        if user is None or user.disabled:
            return None
        return SignedInUser(user=user, auth_time=authorization_code.get_auth_time())


def _datetime(timestamp: int) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(timestamp, UTC)


# --- implicit (the scenario's ``id_token token``) ----------------------------------------------


class ImplicitGrant(IdTokenSigning, ClientScopeAndAudience, OpenIDImplicitGrant):  # type: ignore[misc]
    RESPONSE_TYPES = {"id_token token", "id_token"}
    TOKEN_ENDPOINT_AUTH_METHODS = ["none"]

    @property
    def backend(self) -> Backend:  # type: ignore[override]
        return self.server.backend

    def exists_nonce(self, nonce: str, request: Request) -> bool:
        # Implicit responses are not stored; the nonce is bound to the client's own state instead.
        return False

    def create_authorization_response(self, redirect_uri: str, grant_user: SignedInUser | None) -> Any:
        """Always answer as a fragment redirect; ``authorize.Delivery`` re-renders it for the requested
        ``response_mode`` (Authlib knows no ``web_message``)."""
        state = self.request.payload.state
        params = self.create_granted_params(grant_user) if grant_user else AccessDeniedError().get_body()
        if state:
            params.append(("state", state))
        return create_response_mode_response(redirect_uri, params, "fragment")

    def get_client_claims(self, client: Client) -> dict[str, Any]:
        claims = super().get_client_claims(client)
        user: SignedInUser | None = self.request.user
        if user is not None:
            claims["auth_time"] = user.auth_time
        return claims


# --- client credentials ------------------------------------------------------------------------


class ClientCredentials(ClientScopeAndAudience, ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]


# --- refresh tokens (rotated, reuse detected) ---------------------------------------------------


class OidcToken(IdTokenSigning, OpenIDToken):  # type: ignore[misc]
    """A fresh ID token with every refresh (auth0-spa-js verifies one on each token response)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend


class RefreshGrant(ClientScopeAndAudience, RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]
    INCLUDE_NEW_REFRESH_TOKEN = True

    @property
    def backend(self) -> Backend:
        return self.server.backend

    def authenticate_refresh_token(self, refresh_token: str) -> RefreshToken | None:
        state, item = self.backend.run(store.consume_refresh_token, self.backend.pool, refresh_token)
        if state == store.RefreshState.REUSED:
            refresh_reuse.inc()
            log.warning("refresh token reused; revoked its family", extra={"grant": "refresh_token"})
            raise InvalidGrantError("The refresh token was already used; its session is revoked")
        if state == store.RefreshState.REVOKED:
            raise InvalidGrantError("The refresh token was revoked")
        if state == store.RefreshState.EXPIRED:
            raise InvalidGrantError("The refresh token has expired")
        return item

    def authenticate_user(self, refresh_token: RefreshToken) -> SignedInUser | None:
        user = self.backend.run(store.get_user, self.backend.pool, refresh_token.subject)
        if user is None or user.disabled:
            return None
        return SignedInUser(
            user=user,
            auth_time=int(refresh_token.auth_time.timestamp()),
            session_hash=refresh_token.session_hash or b"",
        )

    def revoke_old_credential(self, refresh_token: RefreshToken) -> None:
        return None  # consumed (marked used) atomically in authenticate_refresh_token


# --- revocation (RFC 7009) -----------------------------------------------------------------------


@dataclass(frozen=True)
class Revocable:
    kind: str  # "refresh_token" (key = family id) or "access_token" (key = jti)
    key: str
    client_id: str

    def check_client(self, client: Client) -> bool:
        return client.client_id == self.client_id


class Revocation(RevocationEndpoint):  # type: ignore[misc]
    """``POST /oauth/revoke``: a refresh token revokes its whole family, an access token its ledger
    entry (``/userinfo`` then refuses it). Unknown tokens answer 200 too, as RFC 7009 §2.2 says."""

    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]

    @property
    def backend(self) -> Backend:
        server: IdentityServer = self.server
        return server.backend

    def query_token(self, token_string: str, token_type_hint: str | None) -> Revocable | None:
        if token_type_hint != "access_token":  # noqa: S105 - a hint's name, not a secret
            owner = self.backend.run(store.refresh_token_owner, self.backend.pool, token_string)
            if owner is not None:
                return Revocable("refresh_token", owner[0], owner[1])
        try:
            claims = verify_access_token(
                self.backend.settings, self.backend.keys, token_string, for_userinfo=False
            )
        except InvalidAccessToken:
            return None
        return Revocable("access_token", str(claims["jti"]), str(claims.get("client_id", "")))

    def revoke_token(self, token: Revocable, request: Request) -> None:
        if token.kind == "refresh_token":
            self.backend.run(store.revoke_refresh_family, self.backend.pool, token.key)
        else:
            self.backend.run(store.revoke_access_token, self.backend.pool, token.key)


# --- RP-initiated logout -----------------------------------------------------------------------


class EndSession(EndSessionEndpoint):  # type: ignore[misc]
    """OIDC RP-Initiated Logout; the session itself is ended by the route, not here."""

    def get_server_jwks(self) -> dict[str, Any]:
        server: IdentityServer = self.server
        return server.backend.keys.jwks()

    def end_session(self, end_session_request: Any) -> None:
        return None

    def is_post_logout_redirect_uri_legitimate(
        self, request: Any, post_logout_redirect_uri: str, client: Any, logout_hint: str | None
    ) -> bool:
        # The URI already matched one registered for the client exactly, so following it is not an
        # open redirect; SDKs (and Auth0) redirect without an id_token_hint as well.
        return True
