"""Every JWT the provider signs or reads, with one JOSE library (PyJWT on ``cryptography`` keys).

Access tokens: JWTs per RFC 9068 (or Auth0's ``typ: JWT``) carrying ``scope`` and ``permissions``.
User tokens are audienced to the API (``OIDC_AUDIENCE``) and to this issuer's ``/userinfo``, as Auth0
does when ``openid`` is requested; client-credentials tokens only to the API, with ``sub`` set to
``<client_id>@clients`` and ``gty: client-credentials`` (Auth0's spelling).

ID tokens (OIDC Core §2): minted here too, not by Authlib's encoder (which uses another JOSE library,
joserfc): one library means one set of algorithm and key-handling rules to review. Authlib still
decides *when* an ID token is due (``openid`` scope, which grant); :mod:`identity.oauth` hands the
minting to :class:`IdTokenMinter`. ``id_token_hint`` at logout is verified here as well.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt

from .keystore import KeyStore
from .models import Client, SignedInUser, User
from .scopes import api_scopes, grant_for_user, join_scope, split_scope
from .settings import IdentitySettings

CLIENT_CREDENTIALS = "client_credentials"
GTY = {
    "authorization_code": "authorization_code",
    "implicit": "implicit",
    CLIENT_CREDENTIALS: "client-credentials",
    "refresh_token": "refresh_token",
}


@dataclass(frozen=True)
class IssuedToken:
    jti: str
    grant_type: str
    client_id: str
    subject: str
    expires_at: int  # the token's exp


def granted_scopes(client: Client, user: SignedInUser | None, scope: str | None) -> list[str]:
    """Requested ∩ client-allowed ∩ role-allowed (users); requested ∩ client-allowed (clients)."""
    requested = split_scope(client.get_allowed_scope(scope))
    if user is None:
        return requested
    return grant_for_user(requested, user.user.roles)


class AccessTokenMinter:
    """Authlib token generator (``server.register_token_generator("default", minter)``)."""

    def __init__(self, settings: IdentitySettings, keys: KeyStore) -> None:
        self.settings = settings
        self.keys = keys

    def __call__(
        self,
        grant_type: str,
        client: Client,
        user: SignedInUser | None = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
        *,
        dpop_jkt: str | None = None,
    ) -> dict[str, Any]:
        """The token response; with ``dpop_jkt`` (a proof was verified) the access token is bound to
        that key (``cnf.jkt``) and the response says ``token_type: DPoP`` (RFC 9449 §5)."""
        scopes = granted_scopes(client, user, scope)
        ttl = expires_in or self.settings.access_token_ttl_seconds
        access_token, jti, exp = self.mint(grant_type, client, user, scopes, ttl, dpop_jkt=dpop_jkt)
        token: dict[str, Any] = {
            "access_token": access_token,
            "token_type": "DPoP" if dpop_jkt else "Bearer",
            "expires_in": ttl,
            "scope": join_scope(scopes),
        }
        if include_refresh_token and user is not None and "offline_access" in scopes:
            # Only for clients registered for the refresh_token grant (Authlib asks) that requested
            # offline_access; save_token() stores it and rotation replaces it at every use.
            token["refresh_token"] = secrets.token_urlsafe(32)
        # Not part of the response: save_token() pops it to record the token in the ledger.
        token["_issued"] = IssuedToken(
            jti=jti,
            grant_type=grant_type,
            client_id=client.client_id,
            subject=user.user.subject if user else f"{client.client_id}@clients",
            expires_at=exp,
        )
        return token

    def mint(
        self,
        grant_type: str,
        client: Client,
        user: SignedInUser | None,
        scopes: list[str],
        ttl: int,
        *,
        dpop_jkt: str | None = None,
    ) -> tuple[str, str, int]:
        """(the signed token, its jti, its exp)."""
        key = self.keys.signer()
        now = int(time.time())
        jti = secrets.token_urlsafe(18)
        claims: dict[str, Any] = {
            "iss": self.settings.identity_issuer,
            "iat": now,
            "exp": now + ttl,
            "jti": jti,
            "azp": client.client_id,
            "client_id": client.client_id,
            "scope": join_scope(scopes),
            "permissions": api_scopes(scopes),
            "gty": GTY.get(grant_type, grant_type),
        }
        if dpop_jkt:
            claims["cnf"] = {"jkt": dpop_jkt}  # RFC 9449 §6.1: the key every use must prove
        if user is None:
            claims["sub"] = f"{client.client_id}@clients"
            claims["aud"] = self.settings.oidc_audience
        else:
            claims["sub"] = user.user.subject
            claims["aud"] = [self.settings.oidc_audience, self.settings.url("userinfo")]
            claims["auth_time"] = user.auth_time
            claims["name"] = user.user.name
            claims["email"] = user.user.email
            claims["preferred_username"] = user.user.username
        headers = {"kid": key.kid, "typ": self.settings.access_token_typ}
        return jwt.encode(claims, key.private_key, algorithm=key.alg, headers=headers), jti, now + ttl


def user_info(user: User, scope: str) -> dict[str, Any]:
    """Standard claims (OIDC Core §5.1) released for the granted scopes."""
    scopes = split_scope(scope)
    info: dict[str, Any] = {"sub": user.subject}
    if "profile" in scopes:
        info.update(name=user.name, nickname=user.username, preferred_username=user.username)
    if "email" in scopes:
        info.update(email=user.email, email_verified=True)
    return info


def half_hash(value: str) -> str:
    """OIDC ``at_hash``: base64url of the left half of SHA-256 (the hash of RS256 and ES256 alike)."""
    digest = hashlib.sha256(value.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=").decode()


class IdTokenMinter:
    """ID tokens for the code, implicit and refresh flows, signed by the current signing key."""

    def __init__(self, settings: IdentitySettings, keys: KeyStore) -> None:
        self.settings = settings
        self.keys = keys

    def mint(
        self,
        client: Client,
        user: SignedInUser,
        scope: str,
        *,
        nonce: str | None = None,
        access_token: str | None = None,
    ) -> str:
        key = self.keys.signer()
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.settings.identity_issuer,
            "aud": client.client_id,
            "azp": client.client_id,
            "iat": now,
            "exp": now + self.settings.id_token_ttl_seconds,
            # when the user signed in (kept in refreshed ID tokens): what prompt=login/max_age prove
            "auth_time": user.auth_time,
            "amr": ["pwd"],
        }
        if nonce:
            claims["nonce"] = nonce
        if access_token:
            claims["at_hash"] = half_hash(access_token)
        claims.update(user_info(user.user, scope))
        headers = {"kid": key.kid, "typ": "JWT"}
        return jwt.encode(claims, key.private_key, algorithm=key.alg, headers=headers)


class InvalidAccessToken(Exception):
    """The bearer token was not issued by us for ``/userinfo``, or it expired. ``reason``: a fixed
    label for the metric and the audit trail (the gateway's names for the same failures)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


#: PyJWT's refusals to reasons, most specific first (InvalidSignatureError is a DecodeError)
_JWT_REASONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid"),
    (jwt.InvalidIssuerError, "issuer"),
    (jwt.InvalidAudienceError, "audience"),
    (jwt.InvalidSignatureError, "bad_signature"),
    (jwt.InvalidAlgorithmError, "alg_not_allowed"),
    (jwt.MissingRequiredClaimError, "malformed"),
    (jwt.DecodeError, "malformed"),
)


#: every :attr:`InvalidAccessToken.reason`
TOKEN_REASONS = tuple(dict.fromkeys(["unknown_kid", *(reason for _, reason in _JWT_REASONS), "invalid"]))


def _jwt_reason(exc: jwt.PyJWTError) -> str:
    return next((reason for kind, reason in _JWT_REASONS if isinstance(exc, kind)), "invalid")


class InvalidIdTokenHint(Exception):
    """An ``id_token_hint`` this provider did not sign."""


def verify_id_token_hint(settings: IdentitySettings, keys: KeyStore, token: str) -> dict[str, Any]:
    """An ID token we issued, expired or not (RP-Initiated Logout §2 allows expired hints)."""
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.PyJWTError as exc:
        raise InvalidIdTokenHint("malformed id_token_hint") from exc
    found = keys.public_key(kid) if isinstance(kid, str) else None
    if found is None:
        raise InvalidIdTokenHint("id_token_hint was not signed by this provider")
    public_key, alg = found
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            public_key,
            algorithms=[alg],
            issuer=settings.identity_issuer,
            options={"require": ["iss", "sub", "aud"], "verify_exp": False, "verify_aud": False},
        )
    except jwt.PyJWTError as exc:
        raise InvalidIdTokenHint(str(exc)) from exc
    return claims


def verify_access_token(
    settings: IdentitySettings, keys: KeyStore, token: str, *, for_userinfo: bool = True
) -> dict[str, Any]:
    """Verify one of our own access tokens: signature, iss, exp, and ``aud`` containing ``/userinfo``
    (unless ``for_userinfo`` is false, as for revocation, where any of our access tokens counts)."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise InvalidAccessToken("malformed", "malformed token") from exc
    kid = header.get("kid")
    found = keys.public_key(kid) if isinstance(kid, str) else None
    if found is None:
        raise InvalidAccessToken("unknown_kid", "unknown signing key")
    public_key, alg = found
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            public_key,
            algorithms=[alg],
            audience=settings.url("userinfo") if for_userinfo else None,
            issuer=settings.identity_issuer,
            leeway=30,
            options={"require": ["exp", "iat", "sub", "jti"], "verify_aud": for_userinfo},
        )
    except jwt.PyJWTError as exc:
        raise InvalidAccessToken(_jwt_reason(exc), str(exc)) from exc
    return claims
