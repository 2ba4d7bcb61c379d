"""Settings of the identity service (environment variables, validated before the port binds)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from svckit.dpop import DpopSettings
from svckit.keyring import KeyRing
from svckit.proxies import Network, parse_networks
from svckit.settings import (
    CsvList,
    DatabaseSettings,
    DenialAuditSettings,
    OutboxSettings,
    ProxyHeaderSetting,
    RedisSettings,
)


def encrypted_or_loopback(url: str) -> bool:
    """What Authlib takes for a secure transport (authlib.common.security.is_secure_transport), without
    its AUTHLIB_INSECURE_TRANSPORT switch: https, or http to localhost or a loopback address."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return True
    if parts.scheme != "http" or not parts.hostname:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


class IdentitySettings(DatabaseSettings, RedisSettings, DpopSettings, DenialAuditSettings, OutboxSettings):
    """Every variable the identity service reads; secrets have no default."""

    service_name: str = Field(default="identity", exclude=True)
    port: int = Field(default=9000, ge=1, le=65535)
    metrics_port: int = 9010
    # The identity service is reached by browsers and SDKs directly, not through the gateway, so it
    # receives no signed identity headers; it sends some: its outbox relay signs its calls to the audit
    # service with the identity → audit pair's key (IDENTITY_KEYS_IDENTITY_TO_AUDIT, svckit.identity.PAIRS).
    # The outbox relay delivers the provider's denials (identity.denials): OutboxSettings.

    # This provider's own issuer (``iss`` of every token, base of every URL it publishes). Not
    # OIDC_ISSUER: that is the gateway's list of trusted issuers, which may name others (Auth0) too.
    identity_issuer: str = "http://localhost:9000/"
    oidc_audience: str = "https://timesheets.abc.example/api"
    # encrypts the private signing keys in the database. kid:secret[,kid:secret…] while it rotates
    # (svckit.keyring: the first encrypts new signing keys, all decrypt), or one secret alone as before
    identity_key_encryption_key: str = Field(repr=False)
    # keys the CSRF tokens of the provider's forms and, derived from it, its DPoP nonces (not the
    # session cookies: random values looked up by digest). kid:secret[,kid:secret…] while it rotates
    # (svckit.keyring: the first makes tokens, all check them), or one secret alone as before
    identity_session_secret: str = Field(repr=False)
    identity_cookie_secure: bool | None = None
    identity_allow_insecure_http: bool = False
    demo_password: str = Field(default="demo", repr=False)
    batch_client_secret: str | None = Field(default=None, repr=False)

    access_token_ttl_seconds: int = Field(default=900, ge=30, le=86400)
    access_token_typ: Literal["at+jwt", "JWT"] = "at+jwt"  # noqa: S105
    id_token_ttl_seconds: int = Field(default=3600, ge=30, le=86400)
    authorization_code_ttl_seconds: int = Field(default=60, ge=5, le=600)
    session_ttl_seconds: int = Field(default=8 * 3600, ge=60, le=30 * 86400)
    refresh_token_idle_seconds: int = Field(default=86400, ge=60, le=90 * 86400)
    refresh_token_lifetime_seconds: int = Field(default=30 * 86400, ge=60, le=365 * 86400)
    signing_alg: Literal["RS256", "ES256"] = "RS256"
    key_rotation_grace_seconds: int = Field(default=600, ge=0, le=7 * 86400)
    # how long a rotated client secret stays valid beside the new one (rotate-client-secret, and a
    # changed BATCH_CLIENT_SECRET at seed): the time to hand the new secret to the client
    client_secret_overlap_seconds: int = Field(default=86400, ge=0, le=30 * 86400)
    key_refresh_seconds: float = Field(default=30.0, gt=0, le=3600)
    # How often the registered clients' web origins (the CORS allow-list, identity.cors) are re-read:
    # how long a newly registered origin waits, and how soon an outage is noticed by that read.
    cors_origins_refresh_seconds: float = Field(default=10.0, gt=0, le=3600)

    # How often the revocation stream is checked: lost (Redis restarted empty) → re-published from the
    # database; revocations whose publication failed → published. Bounds the catch-up after an outage.
    revocation_check_seconds: float = Field(default=5.0, gt=0, le=300)

    # Failed sign-ins per (user name, client address) and window; the name's failures from all
    # addresses have a limit of their own (LOGIN_MAX_FAILURES_PER_USER_ALL_ADDRESSES, default 50), so
    # that wrong passwords from one address cannot lock the person out from everywhere else.
    login_max_failures_per_user: int = Field(default=5, ge=1, le=1000)
    login_max_failures_per_user_all_addresses: int = Field(default=50, ge=1, le=100000)
    login_max_failures_per_address: int = Field(default=20, ge=1, le=100000)
    login_throttle_window_seconds: int = Field(default=900, ge=1, le=86400)
    # Admission of the sign-in form's Argon2 work (identity.passwords.HashingQueue): right passwords
    # are not throttled, so a shift change signing in at once was a queue without bound. At most this
    # many checks are admitted (waiting or on the 4 hashing threads) per process; each may wait this
    # long for its turn (below what a client waits for its answer, so the refusal reaches it); past
    # either, the sign-in page again with 503 and Retry-After (identity_password_hash_refusals_total).
    password_hash_max_waiting: int = Field(default=256, ge=1, le=100000)
    password_hash_max_wait_seconds: float = Field(default=10.0, gt=0, le=60)
    client_auth_max_failures_per_address: int = Field(default=30, ge=1, le=100000)
    # Failed token and revocation requests (any refusal but the DPoP nonce step, and a revocation of
    # a token the provider does not know) per client address and TOKEN_FAILURE_WINDOW_SECONDS; each
    # may have left a DPoP proof id in Redis for the proof's window (150 s at most): the budget bounds
    # what one address keeps there (~300 ids) however fast it sends. Successful requests are not
    # counted: an SPA refreshing, many users behind one NAT address, spend nothing but their own
    # failures (an expired refresh token a morning, a code the back button sends again). 1 a second
    # from one address, sustained; past it: 429 too_many_attempts (identity.endpoints).
    token_max_failures_per_address: int = Field(default=300, ge=1, le=1000000)
    token_failure_window_seconds: int = Field(default=300, ge=1, le=86400)
    # Authorization codes (and implicit answers) /authorize issues per signed-in user and
    # AUTHORIZE_CODE_WINDOW_SECONDS: each code is a row kept until a day after it expired. A window of
    # its own, not the sign-in throttle's (what suits slowing password guesses need not suit an SPA's
    # silent renewals); the default is the sign-in window's, the value both shared before.
    authorize_max_codes_per_user: int = Field(default=100, ge=1, le=100000)
    authorize_code_window_seconds: int = Field(default=900, ge=1, le=86400)
    # Proxies (ingress, load balancer) whose X-Forwarded-For is believed when throttling per address,
    # and the header they write the client in (svckit.proxies: the other one is never read).
    identity_trusted_proxies: CsvList = Field(default_factory=list)
    identity_proxy_header: ProxyHeaderSetting = "x-forwarded-for"

    @field_validator("identity_trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        parse_networks(value)
        return value

    @property
    def trusted_proxy_networks(self) -> tuple[Network, ...]:
        return parse_networks(self.identity_trusted_proxies)

    @field_validator("identity_issuer")
    @classmethod
    def _issuer_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL such as http://localhost:9000/")
        if "?" in value or "#" in value:
            raise ValueError("must not contain a query or fragment")
        if urlsplit(value).path not in ("", "/"):
            # The pages link to /login, /authorize… at the root of the host, as Auth0's do.
            raise ValueError("must be the root of its host (https://id.example.com/), without a path")
        return value if value.endswith("/") else value + "/"

    @model_validator(mode="after")
    def _issuer_transport(self) -> IdentitySettings:
        # Authlib builds every authorization request on this issuer and refuses it (InsecureTransportError,
        # which reached the client as a 500 on each sign-in) unless it is https or on the loopback
        # interface: a plain-http issuer reached over a network must be an explicit choice.
        if not self.identity_allow_insecure_http and not encrypted_or_loopback(self.identity_issuer):
            raise ValueError(
                f"IDENTITY_ISSUER {self.identity_issuer} is plain http off the loopback interface: every "
                "authorization request would be refused (RFC 9700 §2.6); use https, or set "
                "IDENTITY_ALLOW_INSECURE_HTTP=true on a test network without TLS"
            )
        return self

    @field_validator("identity_key_encryption_key", "identity_session_secret")
    @classmethod
    def _key_ring(cls, value: str) -> str:
        KeyRing.parse(value)  # a ValueError naming no key material; one secret: at least 32 bytes
        return value

    @property
    def cookie_secure(self) -> bool:
        if self.identity_cookie_secure is not None:
            return self.identity_cookie_secure
        return self.identity_issuer.startswith("https://")

    @property
    def dpop_nonce_keys(self) -> KeyRing:
        """The DPoP nonces' keys, derived from the session keys (shared by every replica already, and
        rotated with them: the same names, the first makes nonces)."""
        return self.session_keys.derive(
            lambda key: hmac.new(key, b"tsp-identity-dpop-nonces", hashlib.sha256).digest()
        )

    @property
    def key_encryption_keys(self) -> KeyRing:
        """``IDENTITY_KEY_ENCRYPTION_KEY``'s keys: the first encrypts new signing keys, every one decrypts."""
        return KeyRing.parse(self.identity_key_encryption_key)

    @property
    def session_keys(self) -> KeyRing:
        """``IDENTITY_SESSION_SECRET``'s keys: the first makes CSRF tokens and nonces, every one checks."""
        return KeyRing.parse(self.identity_session_secret)

    def url(self, path: str) -> str:
        """An absolute URL on this issuer (``path`` without a leading slash)."""
        return self.identity_issuer + path.lstrip("/")

    @property
    def max_token_ttl_seconds(self) -> int:
        return max(self.access_token_ttl_seconds, self.id_token_ttl_seconds)
