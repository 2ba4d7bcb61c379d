"""Users, clients and authorization codes as Authlib expects them (its ``*Mixin`` protocols)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from .passwords import client_secrets
from .scopes import join_scope, split_scope


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of a URL (the Web origin a browser sends in ``Origin``)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@dataclass(frozen=True)
class User:
    subject: str
    username: str
    email: str
    name: str
    roles: tuple[str, ...]
    password_hash: str = field(repr=False, default="")
    disabled: bool = False

    def get_user_id(self) -> str:
        return self.subject


@dataclass(frozen=True)
class SignedInUser:
    """The user behind a browser session, with the time they authenticated (OIDC ``auth_time``)."""

    user: User
    auth_time: int
    session_hash: bytes = field(repr=False, default=b"")
    # auth_time to the microsecond: a sign-in "newer than the request" is decided on this, not on
    # whole seconds (prompt=login, max_age)
    signed_in_at: float = 0.0

    def get_user_id(self) -> str:
        return self.user.subject


@dataclass(frozen=True)
class Client:
    client_id: str
    name: str
    first_party: bool
    secret_hash: str | None = field(repr=False)
    redirect_uris: tuple[str, ...]
    post_logout_redirect_uris: tuple[str, ...]
    web_origins: tuple[str, ...]
    grant_types: tuple[str, ...]
    response_types: tuple[str, ...]
    allowed_scopes: tuple[str, ...]
    # RFC 9449 §5.2: every token request must carry a DPoP proof (its access tokens are all bound)
    dpop_bound_access_tokens: bool = False
    # the secret of before a rotation, while its overlap lasts (store: None once it ended or was retired)
    previous_secret_hash: str | None = field(repr=False, default=None)

    @property
    def is_public(self) -> bool:
        return self.secret_hash is None

    @property
    def secret_hashes(self) -> tuple[str, ...]:
        """Every secret the client may authenticate with now: the current one and, during a rotation's
        overlap, the one of before."""
        if self.secret_hash is None:
            return ()
        return (
            (self.secret_hash,)
            if self.previous_secret_hash is None
            else (self.secret_hash, self.previous_secret_hash)
        )

    @property
    def client_metadata(self) -> dict[str, Any]:
        return {"post_logout_redirect_uris": list(self.post_logout_redirect_uris)}

    @property
    def allowed_origins(self) -> frozenset[str]:
        """Web origins allowed for CORS and framing: explicit ones plus every redirect URI's origin."""
        return frozenset(self.web_origins) | {origin_of(uri) for uri in self.redirect_uris}

    # --- authlib.oauth2.rfc6749.ClientMixin ---------------------------------------------------
    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return self.redirect_uris[0] if len(self.redirect_uris) == 1 else None

    def get_allowed_scope(self, scope: str | None) -> str:
        """Requested scopes the client may ask for (all of them when none are requested).

        Requests for scopes outside the client's list are refused earlier with ``invalid_scope``;
        this narrowing is the second line.
        """
        requested = split_scope(scope)
        if not requested:
            return join_scope(self.allowed_scopes)
        return join_scope(s for s in requested if s in self.allowed_scopes)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return not self.is_public and client_secrets.verify_any(self.secret_hashes, client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.is_public:
            return method == "none"
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        normalized = " ".join(sorted(response_type.split()))
        return normalized in {" ".join(sorted(rt.split())) for rt in self.response_types}

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


@dataclass
class AuthorizationCode:
    code_hash: bytes = field(repr=False)
    client_id: str
    subject: str
    redirect_uri: str
    scope: str
    audience: str
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    auth_time: datetime
    expires_at: datetime
    session_hash: bytes | None = field(repr=False, default=None)
    dpop_jkt: str | None = None  # RFC 9449 §10: only a proof by this key may redeem the code

    # --- authlib AuthorizationCodeMixin (OAuth 2.0 and OIDC) ----------------------------------
    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return int(self.auth_time.timestamp())

    def get_acr(self) -> str | None:
        return None

    def get_amr(self) -> list[str] | None:
        return ["pwd"]


@dataclass(frozen=True)
class RefreshToken:
    """A stored refresh token (already marked used when Authlib sees it: rotation is one-shot)."""

    token_hash: bytes = field(repr=False)
    family_id: str
    client_id: str
    subject: str
    scope: str
    auth_time: datetime
    session_hash: bytes | None = field(repr=False)
    family_expires_at: datetime
    dpop_jkt: str | None = None  # bound to this DPoP key (public clients): refreshed only with its proof

    # --- authlib TokenMixin (what RefreshTokenGrant asks) --------------------------------------
    def check_client(self, client: Client) -> bool:
        return client.client_id == self.client_id

    def get_scope(self) -> str:
        return self.scope

    def is_expired(self) -> bool:
        return False  # checked in SQL when the token is consumed

    def is_revoked(self) -> bool:
        return False
