"""Authlib's OAuth 2.0 / OIDC server, adapted to Starlette and asyncpg.

Why Authlib stays: its grant classes hold the protocol machinery (parameter validation, exact redirect
URI matching, response types, PKCE, client authentication methods, scope narrowing on refresh,
``prompt`` and ``nonce`` rules, RFC 7009 and RP-initiated-logout request validation), which is where
hand-written servers go wrong. What it no longer does is JOSE: ID tokens are minted and
``id_token_hint`` is verified by :mod:`identity.tokens` with PyJWT, the library that signs the access
tokens too (Authlib's encoder uses joserfc).

Authlib calls synchronous hooks for storage. The adapter runs an Authlib call in a worker thread
(``anyio.to_thread``) and lets those hooks run their asyncpg queries back on the event loop
(``anyio.from_thread``), on the connection the request carries (``Request.db``): the token and
revocation endpoints open one transaction per request, so using up a code, recording the issued
token and saving the refresh token commit together or not at all. Revocations a hook makes are
collected on ``Request.revoked_tokens`` and published by the endpoint after the commit.
"""

from __future__ import annotations

import base64
import logging
import re
import secrets
from collections import defaultdict
from collections.abc import Callable, Coroutine, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar
from urllib.parse import unquote_plus

import anyio.from_thread
from authlib.oauth2.rfc6749 import AuthorizationServer, OAuth2Error, OAuth2Request
from authlib.oauth2.rfc6749.errors import (
    AccessDeniedError,
    InvalidClientError,
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    UnauthorizedClientError,
)
from authlib.oauth2.rfc6749.grants import (
    AuthorizationCodeGrant,
    ClientCredentialsGrant,
    RefreshTokenGrant,
)
from authlib.oauth2.rfc6749.requests import OAuth2Payload
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core.grants import OpenIDCode, OpenIDImplicitGrant, OpenIDToken
from authlib.oidc.core.grants.util import create_response_mode_response
from authlib.oidc.rpinitiated import EndSessionEndpoint
from prometheus_client import Counter
from svckit.db import Connection, Database

from . import denials, store
from .keystore import KeyStore
from .models import AuthorizationCode, Client, RefreshToken, SignedInUser
from .scopes import ALL_SCOPES, split_scope
from .settings import IdentitySettings
from .store import RevokedToken
from .tokens import (
    AccessTokenMinter,
    IdTokenMinter,
    InvalidAccessToken,
    InvalidIdTokenHint,
    IssuedToken,
    granted_scopes,
    verify_access_token,
    verify_id_token_hint,
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
    "Authorization codes presented a second time (everything issued from them is revoked).",
)
dpop_binding_refusals = Counter(
    "identity_dpop_binding_refusals_total",
    "Token and revocation requests refused because a code, refresh token, access token or client is "
    "bound to a DPoP key the request did not prove (code, refresh_token, access_token, client).",
    ["binding"],
)
for _binding in ("code", "refresh_token", "access_token", "client"):
    dpop_binding_refusals.labels(_binding)  # 0 from the start: a panel shows "none", not "no data"
consent_refusals = Counter(
    "identity_refresh_consent_refusals_total",
    "Refresh grants of third-party clients refused because consent no longer covers their scopes.",
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
        headers: Mapping[str, str],  # Starlette's Headers: Authlib looks names up case-sensitively
        query: list[tuple[str, str]],
        form: list[tuple[str, str]],
        *,
        db: Connection | None = None,
    ) -> None:
        super().__init__(method, uri, headers=headers)
        self._args = dict(query)
        self._form = dict(form)
        self.payload = Payload([*query, *form])
        # The transaction of this request's writes (None: the pool, one statement at a time).
        self.db = db
        # Access tokens the hooks revoked; published by the endpoint once the transaction commits.
        self.revoked_tokens: list[RevokedToken] = []
        # The RFC 7638 thumbprint of the key a verified DPoP proof demonstrated (RFC 9449), if any.
        self.dpop_jkt: str | None = None
        # A refused request's writes are rolled back (the code or refresh token it named stays
        # usable), except a revocation it caused (a replayed code, a reused refresh token, consent
        # no longer given), which must commit although the answer is an error.
        self.commit_refusal = False
        # The reason of a refusal the audit trail records (identity.denials), set where it is decided.
        self.denial: str | None = None
        # A revocation that named no token of this provider's (answered 200 all the same, RFC 7009
        # §2.2): spends the address's budget of failed requests as a refusal does (identity.endpoints).
        self.found_nothing = False

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
    # answered 200 but achieved nothing (a revocation of a token the provider does not know): spends
    # the address's budget of failed requests (identity.endpoints) as a refusal does
    futile: bool = False

    @property
    def location(self) -> str | None:
        for name, value in self.headers:
            if name.lower() == "location":
                return value
        return None


# --- the server --------------------------------------------------------------------------------


#: The transaction of the request Authlib is working on, for hooks whose signature has no request
#: (``query_client``): without it a token request would hold a second pool connection while its
#: transaction holds the first, and a burst of requests could exhaust the pool against itself.
CURRENT_DB: ContextVar[Connection | None] = ContextVar("identity_current_db", default=None)


class Backend:
    """What the hooks need: settings, keys, the database, the ID-token minter, and a way to await
    from a worker thread."""

    def __init__(
        self, settings: IdentitySettings, keys: KeyStore, database: Database, id_tokens: IdTokenMinter
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.database = database
        self.id_tokens = id_tokens

    def conn(self, request: Request | None = None) -> Any:
        """The request's transaction when it has one, else the pool."""
        if request is not None and request.db is not None:
            return request.db
        current = CURRENT_DB.get()
        return current if current is not None else self.database.queries

    def run(self, func: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """Run a coroutine function on the event loop from Authlib's (worker-thread) code."""
        return anyio.from_thread.run(func, *args)


def basic_credentials(headers: Mapping[str, str]) -> tuple[str, str] | None:
    """The client id and secret of an ``Authorization: Basic`` header, or None when there are none.

    RFC 6749 §2.3.1: each is application/x-www-form-urlencoded (Appendix B) before it goes into Basic,
    so each is decoded so: ``+`` is a space and ``%XX`` a byte of their UTF-8. Authlib decodes only
    ``%XX`` (``unquote``), so a secret with a space, sent as the RFC says, never matched; and lets the
    ``ValueError`` of credentials that are not base64 of UTF-8 escape (a 500). Credentials that do not
    decode to UTF-8 text, at either step, are nobody's: ``invalid_client``."""
    scheme, _, token = headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        text = base64.b64decode(token.strip()).decode("utf-8")
        client_id, colon, secret = text.partition(":")
        if not colon:
            return None
        return unquote_plus(client_id, errors="strict"), unquote_plus(secret, errors="strict")
    except ValueError:  # binascii.Error, UnicodeDecodeError, or a header value that is not ASCII
        return None


def client_secret_basic(query_client: Callable[[str], Client | None], request: Request) -> Client | None:
    """``client_secret_basic`` as Authlib's, with the credentials read by :func:`basic_credentials`;
    None only when the request has no ``Authorization: Basic`` header at all.

    An ``Authorization: Basic`` header *is* the client's choice of method, so a Basic attempt that
    fails — malformed, an empty id or secret, an unknown client, a wrong secret — is the answer:
    401 ``invalid_client`` with a Basic challenge (RFC 6749 §5.2). Authlib's (and this function's
    before) returned None on a wrong secret, and Authlib then tried the next method: a wrong Basic
    secret beside a public client's ``client_id`` went on as that client. (Basic beside a body secret
    never reaches here: :func:`identity.endpoints.client_auth_methods` refuses it first.)"""
    scheme, _, _ = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    credentials = basic_credentials(request.headers)
    if credentials is None or not all(credentials):
        raise InvalidClientError(status_code=401, description="The Basic credentials are malformed.")
    client_id, secret = credentials
    client = query_client(client_id)
    if client is None:  # as Authlib answers an unknown client: 401, so that the client retries with Basic
        raise InvalidClientError(status_code=401, description="The client does not exist on this server.")
    if not client.check_client_secret(secret):
        raise InvalidClientError(status_code=401, description="The client secret is wrong.")
    return client


def _datetime(timestamp: int) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


class IdentityServer(AuthorizationServer):  # type: ignore[misc]
    """Authlib's authorization server with our grants, endpoints, token generator and storage."""

    def __init__(self, backend: Backend) -> None:
        super().__init__(scopes_supported=list(ALL_SCOPES))
        self.backend = backend
        self.minter = AccessTokenMinter(backend.settings, backend.keys)
        self.register_token_generator("default", self.minter)
        self.register_client_auth_method("client_secret_basic", client_secret_basic)
        self.register_grant(CodeGrant, [Pkce(), OidcCode(backend)])
        self.register_grant(ImplicitGrant)
        self.register_grant(ClientCredentials)
        self.register_grant(RefreshGrant, [OidcToken(backend)])
        self.register_endpoint(EndSession(self))
        self.register_endpoint(Revocation(self))

    def query_client(self, client_id: str) -> Client | None:
        return self.backend.run(store.get_client, self.backend.conn(), client_id)

    def save_token(self, token: dict[str, Any], request: Request) -> None:
        """Record the access token in the ledger (with the session and refresh family it belongs to,
        so that logout and revocation find it) and, when one was issued, the refresh token."""
        issued: IssuedToken | None = token.pop("_issued", None)
        if issued is None:
            return
        code: AuthorizationCode | None = request.authorization_code
        previous: RefreshToken | None = request.refresh_token
        user: SignedInUser | None = request.user
        if previous is not None:
            family_id: str | None = previous.family_id
            session_hash = previous.session_hash
        else:
            family_id = secrets.token_urlsafe(16) if "refresh_token" in token else None
            session_hash = code.session_hash if code else (user.session_hash or None if user else None)
        self.backend.run(
            partial(
                store.record_token,
                self.backend.conn(request),
                jti=issued.jti,
                code_hash=code.code_hash if code else None,
                client_id=issued.client_id,
                subject=issued.subject,
                grant_type=issued.grant_type,
                expires_at=issued.expires_at,
                session_hash=session_hash,
                family_id=family_id,
            )
        )
        tokens_issued.labels(issued.grant_type).inc()
        if "refresh_token" in token and family_id is not None and user is not None:
            settings = self.backend.settings
            # RFC 9449 §5: a public client's refresh tokens are bound to the proof's key, for the
            # whole family (a family issued without DPoP is bound from its first use with a proof)
            binding = previous.dpop_jkt if previous is not None else None
            if binding is None and request.client.is_public:
                binding = request.dpop_jkt
            self.backend.run(
                partial(
                    store.save_refresh_token,
                    self.backend.conn(request),
                    token["refresh_token"],
                    family_id=family_id,
                    code_hash=code.code_hash if code and previous is None else None,
                    client_id=request.client.client_id,
                    subject=user.user.subject,
                    # a rotated token keeps its family's scope (RFC 6749 §6), whatever the access
                    # token was narrowed to (RefreshGrant.issue_token)
                    scope=previous.scope if previous is not None else token["scope"],
                    auth_time=_datetime(user.auth_time),
                    session_hash=session_hash,
                    idle_seconds=settings.refresh_token_idle_seconds,
                    family_expires_at=previous.family_expires_at if previous else None,
                    lifetime_seconds=settings.refresh_token_lifetime_seconds,
                    dpop_jkt=binding,
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


# --- shared grant behaviour --------------------------------------------------------------------


class InvalidDpopProofError(OAuth2Error):  # type: ignore[misc]
    """RFC 9449 §5: the token request's DPoP proof is missing where one is required, or invalid."""

    error = "invalid_dpop_proof"


class SenderConstrained:
    """DPoP at the token endpoint (RFC 9449 §5): a client registered with
    ``dpop_bound_access_tokens`` must send a proof; with a verified proof (checked by the endpoint
    before Authlib runs: ``Request.dpop_jkt``) the access token is bound to its key."""

    request: Request
    server: IdentityServer
    GRANT_TYPE: str

    def authenticate_token_endpoint_client(self) -> Client:
        client: Client = super().authenticate_token_endpoint_client()  # type: ignore[misc]
        if client.dpop_bound_access_tokens and self.request.dpop_jkt is None:
            dpop_binding_refusals.labels("client").inc()
            self.request.denial = denials.dpop_binding("client")
            raise InvalidDpopProofError("This client must send a DPoP proof with every token request.")
        return client

    def generate_token(
        self,
        user: SignedInUser | None = None,
        scope: str | None = None,
        grant_type: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        return self.server.minter(
            grant_type or self.GRANT_TYPE,
            self.request.client,
            user,
            scope,
            expires_in,
            include_refresh_token,
            dpop_jkt=self.request.dpop_jkt,
        )


def refuse_binding(binding: str, request: Request, what: str) -> OAuth2Error:
    """A code, refresh token or (at ``/oauth/revoke``) access token bound to a DPoP key this request
    did not prove (left as it was: unused, not revoked, and a used one not taken for reuse, so that
    whoever copied it cannot revoke what it belongs to).
    Counted and logged (never the token itself): it is what a stolen bound credential looks like."""
    dpop_binding_refusals.labels(binding).inc()
    request.denial = denials.dpop_binding(binding)
    client: Client | None = getattr(request, "client", None)
    log.warning(
        f"{what} presented without its DPoP key; refused",
        extra={
            "binding": binding,
            "client_id": client.client_id if client is not None else None,
            "proof": "none" if request.dpop_jkt is None else "another key",
        },
    )
    if request.dpop_jkt is None:
        return InvalidDpopProofError(f"The {what} is bound to a DPoP key: send a proof by that key.")
    return InvalidGrantError(f"The {what} is bound to another DPoP key.")


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


class IdTokenSigning:
    """ID tokens through :class:`identity.tokens.IdTokenMinter` (PyJWT) instead of Authlib's encoder."""

    backend: Backend

    def encode_id_token(self, token: dict[str, Any], request: Request) -> str:
        code: AuthorizationCode | None = request.authorization_code
        return self.backend.id_tokens.mint(
            request.client,
            request.user,
            token["scope"],
            nonce=code.get_nonce() if code else None,
            access_token=token.get("access_token"),
        )


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
        return self.backend.run(store.nonce_used, self.backend.conn(request), client_id, nonce)


class CodeGrant(SenderConstrained, ClientScopeAndAudience, AuthorizationCodeGrant):  # type: ignore[misc]
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
            dpop_jkt=data.get("dpop_jkt") or None,  # checked by the authorization endpoint
        )
        self.backend.run(
            store.save_code,
            self.backend.conn(request),
            code,
            item,
            settings.authorization_code_ttl_seconds,
        )

    def query_authorization_code(self, code: str, client: Client) -> AuthorizationCode | None:
        """Use the code up (atomically); a second use revokes everything issued from it."""
        conn = self.backend.conn(self.request)
        state, item = self.backend.run(store.consume_code, conn, code, self.request.dpop_jkt)
        if state == store.CodeState.WRONG_KEY:
            raise refuse_binding("code", self.request, "authorization code")
        if state == store.CodeState.REPLAYED:
            self.request.commit_refusal = True
            revoked = self.backend.run(store.revoke_code, conn, code, "code_replay")
            self.request.revoked_tokens.extend(revoked)
            code_replays.inc()
            self.request.denial = denials.CODE_REPLAY
            log.warning(
                "authorization code replayed; revoked what it issued",
                extra={"client_id": client.client_id, "revoked": len(revoked)},
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
        conn = self.backend.conn(self.request)
        user = self.backend.run(store.get_user, conn, authorization_code.subject)
        if user is None or user.disabled:
            return None
        return SignedInUser(
            user=user,
            auth_time=authorization_code.get_auth_time(),
            session_hash=authorization_code.session_hash or b"",
        )


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

    def validate_authorization_request(self) -> str:
        """A client registered with ``dpop_bound_access_tokens`` holds bound access tokens only: the
        implicit flow, which hands out bearer tokens at this endpoint (no proof possible), is refused
        to it (``id_token`` alone carries no access token and stays allowed)."""
        redirect_uri: str = super().validate_authorization_request()
        client: Client = self.request.client
        if client.dpop_bound_access_tokens and "token" in split_scope(self.request.payload.response_type):
            raise UnauthorizedClientError(
                "This client must use DPoP: ask for a code and redeem it with a proof",
                state=self.request.payload.state,
                redirect_uri=redirect_uri,
                redirect_fragment=True,
            )
        return redirect_uri

    def create_authorization_response(self, redirect_uri: str, grant_user: SignedInUser | None) -> Any:
        """Always answer as a fragment redirect; ``authorize.Delivery`` re-renders it for the requested
        ``response_mode`` (Authlib knows no ``web_message``)."""
        state = self.request.payload.state
        params = self.create_granted_params(grant_user) if grant_user else AccessDeniedError().get_body()
        if state:
            params.append(("state", state))
        return create_response_mode_response(redirect_uri, params, "fragment")

    def process_implicit_token(self, token: dict[str, Any], code: str | None = None) -> dict[str, Any]:
        token["id_token"] = self.backend.id_tokens.mint(
            self.request.client,
            self.request.user,
            token["scope"],
            nonce=self.request.payload.data.get("nonce"),
            access_token=token.get("access_token"),
        )
        return token


# --- client credentials ------------------------------------------------------------------------


class ClientCredentials(SenderConstrained, ClientScopeAndAudience, ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]


# --- refresh tokens (rotated, reuse detected) ---------------------------------------------------


class OidcToken(IdTokenSigning, OpenIDToken):  # type: ignore[misc]
    """A fresh ID token with every refresh (auth0-spa-js verifies one on each token response)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend


class RefreshGrant(SenderConstrained, ClientScopeAndAudience, RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]
    INCLUDE_NEW_REFRESH_TOKEN = True

    @property
    def backend(self) -> Backend:
        return self.server.backend

    def authenticate_refresh_token(self, refresh_token: str) -> RefreshToken | None:
        conn = self.backend.conn(self.request)
        state, item, family_id = self.backend.run(
            store.consume_refresh_token, conn, refresh_token, self.request.dpop_jkt
        )
        if state == store.RefreshState.WRONG_KEY:
            raise refuse_binding("refresh_token", self.request, "refresh token")
        if state == store.RefreshState.REUSED:
            assert family_id is not None
            self._revoke_family(family_id, "refresh_reuse")
            refresh_reuse.inc()
            self.request.denial = denials.REFRESH_TOKEN_REUSE
            log.warning("refresh token reused; revoked its family", extra={"grant": "refresh_token"})
            raise InvalidGrantError("The refresh token was already used; its session is revoked")
        if state == store.RefreshState.REVOKED:
            raise InvalidGrantError("The refresh token was revoked")
        if state == store.RefreshState.EXPIRED:
            raise InvalidGrantError("The refresh token has expired")
        if item is not None:
            self._check_consent(item)
        return item

    def _revoke_family(self, family_id: str, reason: str) -> None:
        self.request.commit_refusal = True
        revoked = self.backend.run(store.revoke_family, self.backend.conn(self.request), family_id, reason)
        self.request.revoked_tokens.extend(revoked)

    def _check_consent(self, item: RefreshToken) -> None:
        """A third-party client keeps refreshing only while the user's consent covers its scopes."""
        client: Client | None = self.request.client
        if client is None or client.first_party or client.client_id != item.client_id:
            return
        conn = self.backend.conn(self.request)
        consented = self.backend.run(store.get_consent, conn, item.subject, item.client_id)
        if all(scope in consented for scope in split_scope(item.scope)):
            return
        self._revoke_family(item.family_id, "consent_withdrawn")
        consent_refusals.inc()
        raise InvalidGrantError("The user no longer consents to this application's access")

    def authenticate_user(self, refresh_token: RefreshToken) -> SignedInUser | None:
        user = self.backend.run(store.get_user, self.backend.conn(self.request), refresh_token.subject)
        if user is None or user.disabled:
            return None
        return SignedInUser(
            user=user,
            auth_time=int(refresh_token.auth_time.timestamp()),
            session_hash=refresh_token.session_hash or b"",
        )

    def issue_token(self, user: SignedInUser, refresh_token: RefreshToken) -> dict[str, Any]:
        """RFC 6749 §6: a narrower ``scope`` narrows the access token only. The presented refresh
        token is spent (rotation), so a new one is issued whatever the narrower scope holds, even
        without ``offline_access``: with none the client would keep the spent one (§6), and its next
        use would be taken for reuse and revoke the session. :meth:`Backend.save_token` gives it the
        presented token's scope ("identical", §6)."""
        token: dict[str, Any] = super().issue_token(user, refresh_token)
        token.setdefault("refresh_token", secrets.token_urlsafe(32))
        return token

    def revoke_old_credential(self, refresh_token: RefreshToken) -> None:
        return None  # consumed (marked used) atomically in authenticate_refresh_token


# --- revocation (RFC 7009) -----------------------------------------------------------------------


@dataclass(frozen=True)
class Revocable:
    kind: str  # "refresh_token" (key = family id) or "access_token" (key = jti)
    key: str
    client_id: str
    dpop_jkt: str | None = None  # its DPoP binding: a refresh token's family key, an access token's cnf.jkt

    @property
    def what(self) -> str:
        return self.kind.replace("_", " ")

    def check_client(self, client: Client) -> bool:
        return client.client_id == self.client_id


class Revocation(RevocationEndpoint):  # type: ignore[misc]
    """``POST /oauth/revoke`` (RFC 7009, Auth0's path). Clients authenticate as at the token endpoint:
    public clients by ``client_id`` (method ``none``), confidential ones with their secret. A refresh
    token revokes its whole family and every access token issued with or from it; an access token
    revokes itself. Unknown tokens answer 200 too (RFC 7009 §2.2); another client's token is refused.

    A public client's token bound to a DPoP key (a refresh token's family, an access token's
    ``cnf.jkt``: RFC 9449 §5, §6) is revoked only with a proof by that key (``DPoP`` header, ``htu``
    this endpoint; verified by the endpoint before Authlib runs: ``Request.dpop_jkt``). A public client
    proves nothing but its ``client_id``, which anyone who copied the token string can name: without
    the key check, a stolen refresh token, even one its owner had rotated, ended the owner's session
    here though the token endpoint refuses it. Refused like there (``invalid_dpop_proof`` without a
    proof, ``invalid_grant`` with another key), counted (``identity_dpop_binding_refusals_total
    {binding="refresh_token"|"access_token"}``) and on the audit trail. A confidential client proves
    itself with its secret: its revocations need no proof, as before."""

    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]

    @property
    def backend(self) -> Backend:
        server: IdentityServer = self.server
        return server.backend

    def check_params(self, request: Request, client: Client) -> None:
        """Authlib's checks, but an unknown ``token_type_hint`` is ignored (RFC 7009 §2.1: the server
        may ignore the hint and extend its search to every type it revokes; :meth:`_find` does).
        Authlib refused it with a 401 ``unsupported_token_type``, so a client sending a hint of
        another vocabulary (a token-type URN) failed to revoke what it meant to: a sign-out that left
        its refresh token usable. ``unsupported_token_type`` is for token types a server cannot revoke
        at all, and this one revokes both kinds it issues."""
        if "token" not in request.form:
            raise InvalidRequestError("The token parameter is required.")

    def authenticate_token(self, request: Request, client: Client) -> Revocable | None:
        """The token named in the request, if it is ours; another client's token is refused."""
        self.check_params(request, client)
        token = self._find(request, request.form["token"], request.form.get("token_type_hint"))
        request.found_nothing = token is None
        if token is not None and not token.check_client(client):
            raise InvalidGrantError("The token was not issued to this client")
        if token is not None and client.is_public and token.dpop_jkt not in (None, request.dpop_jkt):
            raise refuse_binding(token.kind, request, token.what)
        return token

    def _find(self, request: Request, token_string: str, token_type_hint: str | None) -> Revocable | None:
        if token_type_hint != "access_token":  # noqa: S105 - a hint's name, not a secret
            owner = self.backend.run(store.refresh_token_owner, self.backend.conn(request), token_string)
            if owner is not None:
                return Revocable("refresh_token", owner[0], owner[1], owner[2])
        try:
            claims = verify_access_token(
                self.backend.settings, self.backend.keys, token_string, for_userinfo=False
            )
        except InvalidAccessToken:
            return None
        cnf = claims.get("cnf")
        jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
        return Revocable(
            "access_token",
            str(claims["jti"]),
            str(claims.get("client_id", "")),
            str(jkt) if jkt is not None else None,
        )

    def revoke_token(self, token: Revocable, request: Request) -> None:
        conn = self.backend.conn(request)
        if token.kind == "refresh_token":
            revoked = self.backend.run(store.revoke_family, conn, token.key, "revoked")
        else:
            revoked = self.backend.run(store.revoke_access_token, conn, token.key, "revoked")
        request.revoked_tokens.extend(revoked)


# --- RP-initiated logout -----------------------------------------------------------------------


class EndSession(EndSessionEndpoint):  # type: ignore[misc]
    """OIDC RP-Initiated Logout; the session itself is ended by the route, not here."""

    def _validate_id_token_hint(self, id_token_hint: str) -> dict[str, Any]:
        # Verified with PyJWT like every other token here (Authlib's version uses joserfc).
        server: IdentityServer = self.server
        try:
            return verify_id_token_hint(server.backend.settings, server.backend.keys, id_token_hint)
        except InvalidIdTokenHint as exc:
            raise InvalidRequestError(quotable(str(exc))) from exc

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
