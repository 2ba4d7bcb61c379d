"""Access-token verification: parse once, refuse early, verify the signature, then check the claims.

The token is split and base64url-decoded exactly once (PyJWT's own parsing is most of its cost; see
BENCHMARKS.md); the signature is checked with PyJWT's algorithm implementations on keys from
:mod:`gateway.jwks`. Order of checks:

1. size, shape and strict base64url (no padding, no foreign characters);
2. header: ``alg`` in the allowlist (``none`` and ``HS*`` never), no key material or key URLs
   (``jwk``, ``jku``, ``x5u``, ``x5c``), no ``crit`` (no extension is understood), ``typ`` absent,
   ``JWT`` or ``at+jwt``;
3. ``iss`` exactly one of the trusted issuers (only then is a key looked up — no fetch for strangers);
4. the signature, with the key chosen by ``kid`` whose type matches ``alg``;
5. ``exp`` (required), ``nbf``, ``iat`` with the issuer's leeway (a start in the future, the
   signature verified, is a server's clock: 503 ``token_clock_skew``); ``aud`` contains the API identifier;
   ``sub`` present; no ID-token claims (``nonce``, ``at_hash``, ``c_hash``); a confirmation (``cnf``)
   only as a DPoP key thumbprint (``cnf.jkt``, RFC 9449 §6.1), kept on the principal: such a token
   needs its proof on every request (:class:`gateway.stages.Possession`).

Verified tokens are cached by a BLAKE2b hash of the token (the token itself is never kept) until the
earlier of ``exp`` and ``VERIFIED_TOKEN_CACHE_SECONDS``, so repeat calls skip steps 1 to 5.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jwt.algorithms import Algorithm, get_default_algorithms
from svckit.body import NotAccepted, parse_json
from svckit.clock import SYSTEM_CLOCK, Clock
from svckit.contracts.fields import display_text
from svckit.dpop import is_thumbprint
from svckit.identity import Identity, IdentitySigner, Kind, PreparedIdentity

from .issuers import IssuerConfig
from .jwks import JwksCache, KeysUnavailable, UnknownKey
from .revocations import DenyList
from .settings import GatewaySettings

_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")  # RFC 6749 scope-token
FORBIDDEN_HEADER_KEYS = ("jwk", "jku", "x5u", "x5c")
ACCEPTED_TYP = frozenset({"jwt", "at+jwt", "application/at+jwt", "application/jwt"})
ID_TOKEN_CLAIMS = ("nonce", "at_hash", "c_hash")


class TokenError(Exception):
    """A refused token. ``reason`` is a fixed metric label; ``description`` goes to the client."""

    def __init__(self, reason: str, description: str, *, status: int = 401, retry_after: int = 5) -> None:
        super().__init__(description)
        self.reason = reason
        self.description = description
        self.status = status
        self.retry_after = retry_after  # for a 503: the Retry-After it is answered with


@dataclass(frozen=True, slots=True)
class Principal:
    identity: Identity
    expires_at: float
    subject_key: str  # rate-limit keys, computed once per verified token, not per request
    client_key: str
    signed: Mapping[str, PreparedIdentity]  # per upstream: the identity headers, ready to sign per request
    jti: str = ""  # the token's id, checked against revocations (gateway.revocations) on every request
    jkt: str = ""  # cnf.jkt: the DPoP key the token is bound to ("" for a bearer token)
    dpop_required: bool = False  # its issuer accepts DPoP-bound tokens only
    issued_at: float | None = None  # iat, checked against its issuer's revocation cutoffs (None: absent)


def principal_key(issuer: str, name: str) -> str:
    """(issuer, name) hashed: Redis keys stay short and never hold raw claims."""
    return hashlib.blake2b(f"{issuer}\n{name}".encode(), digest_size=12).hexdigest()


def _b64decode(part: str, what: str) -> bytes:
    if not _B64URL.match(part) or len(part) % 4 == 1:
        raise TokenError("malformed", f"The token {what} is not base64url.")
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise TokenError("malformed", f"The token {what} is not base64url.") from None


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = parse_json(raw)  # the kit's rules: huge numbers, duplicate claims, NaN are malformed
    except NotAccepted:
        raise TokenError("malformed", f"The token {what} is not JSON.") from None
    if not isinstance(value, dict):
        raise TokenError("malformed", f"The token {what} is not a JSON object.")
    return value


#: 9999-12-31T23:59:59Z: a NumericDate beyond it is not a time but an attempt to break arithmetic
MAX_NUMERIC_DATE = 253_402_300_799


def numeric_date(claims: dict[str, Any], name: str) -> float | None:
    """``exp`` / ``nbf`` / ``iat`` as seconds, or ``None`` when absent (RFC 7519 §2 NumericDate).

    Only finite JSON numbers from 0 to :data:`MAX_NUMERIC_DATE` count: ``NaN`` compares false with
    everything (an ``exp: NaN`` would never expire), ``Infinity`` never expires either, a huge integer
    overflows ``float``, and a string or a boolean is not a date whatever it looks like.
    """
    value = claims.get(name)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value <= MAX_NUMERIC_DATE  # NaN fails every comparison, so it fails this one
    ):
        raise TokenError("malformed", f"The token '{name}' is not a finite number of seconds (NumericDate).")
    return float(value)


#: A token whose signature verified but that starts (``iat`` / ``nbf``) beyond the leeway in the
#: gateway's future: only its issuer could have signed it, so one of the two clocks is off — 503 with
#: ``Retry-After`` (when it becomes valid, at most this), never 401 ``invalid_token``: a client told its
#: token is bad signs in again and gets another token from the same clock.
TOKEN_CLOCK_SKEW = "token_clock_skew"  # noqa: S105 (a reason code, not a secret)
MAX_CLOCK_RETRY_AFTER = 300


def check_times(claims: dict[str, Any], now: float, leeway: float) -> float:
    """Check ``exp`` (required), ``nbf`` and ``iat`` against ``now`` with ``leeway``; returns ``exp``.
    Called once the signature verified (a start in the future is then the issuer's clock's doing)."""
    exp = numeric_date(claims, "exp")
    nbf = numeric_date(claims, "nbf")
    iat = numeric_date(claims, "iat")
    if exp is None:
        raise TokenError("missing_exp", "The token has no expiry ('exp').")
    if now > exp + leeway:
        raise TokenError("expired", "The token has expired.")
    start = max(nbf or 0.0, iat or 0.0)
    if now + leeway < start:
        ahead = start - now
        raise TokenError(
            TOKEN_CLOCK_SKEW,
            f"The token was issued {ahead:.0f} s ahead of the gateway's clock: a server clock on the "
            "platform is off. Nothing is wrong with your sign-in; retry later.",
            status=503,
            retry_after=max(1, min(MAX_CLOCK_RETRY_AFTER, int(ahead - leeway) + 1)),
        )
    return exp


def scopes_from(claims: dict[str, Any], config: IssuerConfig) -> frozenset[str]:
    granted: set[str] = set()
    for claim in config.scope_claims:
        value = claims.get(claim)
        if isinstance(value, str):
            granted.update(value.split())
        elif isinstance(value, list):
            granted.update(item for item in value if isinstance(item, str))
    return frozenset(scope for scope in granted if _SCOPE_TOKEN.match(scope))


def _forwardable(value: str) -> bool:
    """Whether ``value`` reaches a service as sent in an identity header: no control characters, and
    no space at either end, which a hop strips from a field value (RFC 9110 §5.5) and which the
    signature would then no longer match."""
    return _CONTROL.search(value) is None and value == value.strip(" ")


def identity_from(claims: dict[str, Any], config: IssuerConfig, scopes: frozenset[str]) -> Identity:
    """The identity the token's claims name. The subject and the client id are refused (401) when they
    cannot be forwarded as they are (trimmed, they would name another principal); the display name is
    cleaned instead (svckit's ``display_text``: control characters, C1 included, and bidirectional
    controls dropped; spaces at its ends trimmed). The services keep it in rows and the audit trail,
    which more than the SPA reads (exports, logs, other tools): "Alice\u202eecila" would read as
    another name there, and refusing the token would lock the user out for a profile the operator
    may not control."""
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject or not _forwardable(subject) or len(subject) > 255:
        raise TokenError("malformed", "The token has no usable 'sub' claim.")
    client_id = claims.get("azp", claims.get("client_id", ""))
    if not isinstance(client_id, str) or not _forwardable(client_id) or len(client_id) > 255:
        raise TokenError("malformed", "The token's 'azp' / 'client_id' claim is not a plain string.")
    kind: Kind = "user"
    if claims.get("gty") == "client-credentials" or (
        client_id and subject in (client_id, f"{client_id}@clients")
    ):
        kind = "client"
    name = ""
    for claim in config.name_claims:
        value = claims.get(claim)
        if isinstance(value, str) and value:
            name = display_text(value)[:200].strip(" ")
            break
    return Identity(config.issuer, subject, kind, client_id, scopes, name)


class TokenVerifier:
    def __init__(
        self,
        settings: GatewaySettings,
        issuers: dict[str, IssuerConfig],
        jwks: JwksCache,
        signers: Mapping[str, IdentitySigner],
        deny: DenyList | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.settings = settings
        self.deny = deny
        self._now = clock.time  # bound once: the builtin itself with the system clock
        self.signers = signers  # upstream → the signer of the gateway's pair with it
        self.issuers = issuers
        self.jwks = jwks
        self.audience = settings.oidc_audience
        self.max_bytes = settings.max_token_bytes
        self.cache_size = settings.verified_token_cache_size
        self.cache_seconds = settings.verified_token_cache_seconds
        self._cache: dict[bytes, Principal] = {}
        all_algorithms = get_default_algorithms()
        self._algorithms: dict[str, Algorithm] = {
            alg: all_algorithms[alg] for alg in settings.jwt_algorithms if alg in all_algorithms
        }

    def cached(self, token: str) -> Principal | None:
        """The principal of a token verified before and not expired since (no suspension)."""
        key = self.cache_key(token)
        return None if key is None else self.cached_by_key(key)

    def cache_key(self, token: str) -> bytes | None:
        """What the verified-token cache knows a token by (a digest: the cache holds no token), or
        ``None`` for a token too large to be cached."""
        if len(token) > self.max_bytes:
            return None
        return hashlib.blake2b(token.encode("ascii", "replace"), digest_size=20).digest()

    def cached_by_key(self, key: bytes) -> Principal | None:
        """:meth:`cached` by the token's :meth:`cache_key` (a caller that kept it from an earlier
        request with the same token skips the hashing)."""
        cached = self._cache.get(key)
        if cached is not None:
            now = self._now()
            if now < cached.expires_at:
                return self._not_revoked(cached, now)
        return None

    def _not_revoked(self, principal: Principal, now: float) -> Principal:
        """Revoked tokens are refused however they were verified (cache hits included): by ``jti``, or
        issued before a revocation cutoff of their issuer (gateway.revocations: after a restore)."""
        deny = self.deny
        if deny is not None:
            issuer = principal.identity.issuer
            if principal.jti and deny.denied(issuer, principal.jti):
                raise TokenError("revoked", "The token was revoked.")
            if deny.cut_off(issuer, principal.issued_at, now):
                raise TokenError("revoked", "The token was revoked (issued before its issuer's cutoff).")
        return principal

    async def verify(self, token: str) -> Principal:
        if len(token) > self.max_bytes:
            raise TokenError("too_large", f"The token is larger than {self.max_bytes} bytes.")
        digest = hashlib.blake2b(token.encode("ascii", "replace"), digest_size=20).digest()
        cached = self._cache.get(digest)
        now = self._now()
        if cached is not None:
            if now < cached.expires_at:
                return self._not_revoked(cached, now)
            del self._cache[digest]
        principal = self._not_revoked(await self._verify(token, now), now)
        if self.cache_size:
            if len(self._cache) >= self.cache_size:
                self._evict(now)
            self._cache[digest] = principal
        return principal

    def _evict(self, now: float) -> None:
        expired = [key for key, value in self._cache.items() if value.expires_at <= now]
        for key in expired:
            del self._cache[key]
        while len(self._cache) >= self.cache_size:  # oldest first: dicts keep insertion order
            del self._cache[next(iter(self._cache))]

    async def _verify(self, token: str, now: float) -> Principal:
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenError(
                "malformed", "The token is not a JWS in compact form (three dot-separated parts)."
            )
        header = _json_object(_b64decode(parts[0], "header"), "header")
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise TokenError("malformed", "The token header has no 'alg'.")
        algorithm = self._algorithms.get(alg)
        if algorithm is None:
            raise TokenError("alg_not_allowed", f"The signing algorithm {alg[:20]!r} is not accepted.")
        if any(name in header for name in FORBIDDEN_HEADER_KEYS):
            raise TokenError("header_key", "Keys or key URLs inside the token header are not accepted.")
        if "crit" in header:
            raise TokenError("crit", "The token requires header extensions ('crit') that are not supported.")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in ACCEPTED_TYP):
            raise TokenError("typ", "The token type ('typ') is not an access token.")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenError("malformed", "The token header 'kid' is not a string.")

        claims = _json_object(_b64decode(parts[1], "payload"), "payload")
        issuer = claims.get("iss")
        config = self.issuers.get(issuer) if isinstance(issuer, str) else None
        if config is None:
            raise TokenError("issuer", "The token was not issued by a trusted issuer.")
        if alg not in config.algorithms:
            raise TokenError("alg_not_allowed", f"The issuer does not sign with {alg!r} here.")

        signature = _b64decode(parts[2], "signature")
        try:
            jwk = await self.jwks.key_for(config.issuer, kid, alg)
        except UnknownKey:
            raise TokenError("unknown_kid", "The token was signed with an unknown key.") from None
        except KeysUnavailable:
            raise TokenError(
                "keys_unavailable", "The issuer's signing keys are unavailable; retry shortly.", status=503
            ) from None
        signing_input = token[: len(parts[0]) + 1 + len(parts[1])].encode("ascii")
        try:
            valid = algorithm.verify(signing_input, jwk.key, signature)
        except Exception:  # malformed signatures raise inside the primitives
            valid = False
        if not valid:
            raise TokenError("bad_signature", "The token signature does not verify.")

        exp = check_times(claims, now, config.leeway_seconds)
        audience = claims.get("aud")
        if isinstance(audience, str):
            audience_ok = audience == self.audience
        elif isinstance(audience, list):
            audience_ok = self.audience in audience
        else:
            audience_ok = False
        if not audience_ok:
            raise TokenError("audience", "The token is not meant for this API ('aud').")
        if any(claim in claims for claim in ID_TOKEN_CLAIMS):
            raise TokenError("id_token", "An ID token is not an access token.")

        jkt = ""
        cnf = claims.get("cnf")
        if cnf is not None:
            # only a DPoP key thumbprint: a binding the gateway cannot check (x5t#S256 beside it) refuses
            bound = cnf.get("jkt") if isinstance(cnf, dict) and len(cnf) == 1 else None
            if not isinstance(bound, str) or not is_thumbprint(bound):
                raise TokenError(
                    "cnf", "The token's confirmation ('cnf') is not a DPoP key thumbprint ('jkt')."
                )
            jkt = bound

        identity = identity_from(claims, config, scopes_from(claims, config))
        expires_at = min(exp, now + self.cache_seconds)
        client_key = principal_key(identity.issuer, identity.client_id) if identity.client_id else ""
        try:
            signed = {service: signer.prepare(identity) for service, signer in self.signers.items()}
        except ValueError:  # a control character in the issuer or a claim (identity_from checks most)
            raise TokenError("malformed", "The token's identity claims contain control characters.") from None
        jti = claims.get("jti")
        return Principal(
            identity,
            expires_at,
            principal_key(identity.issuer, identity.subject),
            client_key,
            signed,
            jti if isinstance(jti, str) else "",
            jkt,
            config.dpop_required,
            numeric_date(claims, "iat"),
        )
