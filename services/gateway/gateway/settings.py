"""Settings of the gateway (environment variables; see docs/CONTRACTS.md and the gateway README).

Everything has a safe default for a local run except ``IDENTITY_KEYS`` (a secret). Bounds are
validated here so that a typo (a leeway of an hour, a zero-second JWKS TTL) stops the process at
start-up with a line naming the variable instead of weakening verification silently.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from svckit.contracts.timesheets import MAX_UPLOAD_BYTES
from svckit.dpop import DpopSettings
from svckit.keyring import KeyRing
from svckit.proxies import parse_networks
from svckit.settings import CsvList, DenialAuditSettings, ProxyHeaderSetting, RedisSettings, decode_secret

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parents[2]

#: Algorithms a trusted issuer may sign with unless ``JWT_ALGORITHMS`` narrows them. Asymmetric only.
DEFAULT_ALGORITHMS = ["RS256", "PS256", "ES256", "EdDSA"]
#: Algorithms the gateway knows how to verify. ``none`` and every ``HS*`` are absent on purpose: an
#: HMAC "signed" with the public key (the classic key-confusion attack) can never be configured in.
SUPPORTED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
DEFAULT_SPA_SCOPES = (
    "openid profile email read:timesheets create:timesheets delete:timesheets approve:timesheets read:audit"
)


def available_cpus() -> int:
    """CPUs this process may run on (a container's cpuset), not the whole node's count."""
    try:
        return max(1, min(64, len(os.sched_getaffinity(0))))
    except (AttributeError, OSError):
        return max(1, min(64, os.cpu_count() or 1))


class GatewaySettings(RedisSettings, DpopSettings, DenialAuditSettings):
    service_name: str = "gateway"
    port: int = 8080
    metrics_port: int = 9080

    # --- token verification -------------------------------------------------------------------
    oidc_issuer: CsvList = Field(default_factory=lambda: ["http://localhost:9000/"])
    oidc_audience: str = "https://timesheets.abc.example/api"
    gateway_issuers_file: Path | None = None
    jwt_algorithms: CsvList = Field(default_factory=lambda: list(DEFAULT_ALGORITHMS))
    jwt_leeway_seconds: int = Field(default=30, ge=0, le=300)
    max_token_bytes: int = Field(default=8192, ge=512, le=65536)
    verified_token_cache_size: int = Field(default=10000, ge=0, le=1_000_000)
    verified_token_cache_seconds: int = Field(default=300, ge=1, le=3600)
    # Read the providers' revocation stream (<REDIS_KEY_PREFIX>revocations) into a deny set checked on
    # every request; off only where no provider publishes (Auth0: see docs/CONTRACTS.md).
    revocation_feed_enabled: bool = True

    # --- DPoP (RFC 9449; the proof checks are svckit.dpop's, DPOP_* settings shared with identity) --
    # "required": bearer tokens are refused, every request needs a DPoP-bound token and its proof;
    # "allowed": both. The default for every issuer; GATEWAY_ISSUERS_FILE and routes.yaml may require.
    dpop_policy: Literal["allowed", "required"] = "allowed"
    # the key of the stateless DPoP-Nonce values (DPOP_NONCES=true): equal on every gateway replica.
    # kid:secret[,kid:secret…] while it rotates (svckit.keyring: the first makes nonces, all check
    # them), or one secret alone as before
    dpop_nonce_secret: str = Field(default="", repr=False)

    # --- JWKS caching -------------------------------------------------------------------------
    # the key of the MAC over the key sets cached in Redis (gateway.jwks): every service and the
    # provider may write to Redis, and only a key set this key vouches for is trusted from there.
    # Equal on every replica (else each ignores the others' copies); unset: one per process.
    gateway_cache_secret: str = Field(default="", repr=False)
    jwks_default_ttl_seconds: int = Field(default=600, ge=10, le=86400)
    jwks_min_ttl_seconds: int = Field(default=60, ge=1, le=86400)
    jwks_max_ttl_seconds: int = Field(default=3600, ge=10, le=7 * 86400)
    jwks_max_stale_seconds: int = Field(default=6 * 3600, ge=2, le=7 * 86400)
    jwks_refetch_cooldown_seconds: float = Field(default=30.0, ge=0.0, le=3600)
    jwks_fetch_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    jwks_retry_min_seconds: float = Field(default=1.0, gt=0, le=3600)
    jwks_retry_max_seconds: float = Field(default=60.0, gt=0, le=3600)

    # --- routing and forwarding ---------------------------------------------------------------
    gateway_routes_file: Path = PACKAGE_DIR / "routes.yaml"
    timesheets_url: str = "http://127.0.0.1:8101"
    approvals_url: str = "http://127.0.0.1:8102"
    audit_url: str = "http://127.0.0.1:8103"
    # the largest body a route takes: a full timesheets upload (16 MiB, the service's own default)
    max_body_bytes: int = Field(default=MAX_UPLOAD_BYTES, ge=1024, le=1024 * 1024 * 1024)
    upstream_connect_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    upstream_read_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    upstream_pool_size: int = Field(default=256, ge=1, le=10000)
    upstream_pool_wait_seconds: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="the longest a request waits for a connection when all `UPSTREAM_POOL_SIZE` to its"
        " service are busy (503 `upstream_busy`, `Retry-After`, nothing sent); a frozen service holds"
        " every connection for `UPSTREAM_READ_TIMEOUT_SECONDS`, and the requests behind them would"
        " otherwise queue without bound",
    )
    gateway_response_buffer_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=0,
        le=16 * 1024 * 1024 * 1024,
        description="service responses each worker may read ahead of slow clients (the pooled connection"
        " is free at once); a larger one streams for `UPSTREAM_READ_TIMEOUT_SECONDS` at most",
    )
    gateway_request_body_buffer_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=0,
        le=16 * 1024 * 1024 * 1024,
        description="request bodies over 64 KiB each worker holds at once (a body is read whole before"
        " it goes upstream: its digest is signed); one that does not fit is answered 503"
        " `request_body_budget` with `Retry-After` before it is read; `0`: no bound",
    )
    gateway_max_in_flight_per_subject: int = Field(
        default=64,
        ge=0,
        le=100_000,
        description="requests of one (issuer, subject) to one service each worker answers at once (429"
        " `rate_limit_in_flight` beyond); below `UPSTREAM_POOL_SIZE`, one token's slow readers cannot"
        " hold every pooled connection to a service (a value at or above it is refused; left unset"
        " with a smaller pool, the pool's size less one); `0`: no limit",
    )
    cors_origins: CsvList = Field(default_factory=lambda: ["http://localhost:8080"])
    gateway_trusted_proxies: CsvList = Field(
        default_factory=list,
        description="proxies (Ingress, load balancer) whose X-Forwarded-For/-Proto/-Host (or Forwarded) "
        "are believed",
    )
    gateway_proxy_header: ProxyHeaderSetting = Field(
        default="x-forwarded-for",
        description="the header the trusted proxies write the client in: `x-forwarded-for` (with "
        "X-Forwarded-Proto/-Host) or RFC 7239 `forwarded`; the other is never read",
    )
    gateway_workers: int = Field(default_factory=lambda: available_cpus(), ge=1, le=64)
    gateway_access_log: bool = True

    # --- rate limits (sliding windows estimated from fixed ones in Redis, counted locally) ------
    rate_limit_enabled: bool = True
    rate_limit_window_seconds: int = Field(default=60, ge=1, le=3600)
    rate_limit_per_subject: int = Field(default=1200, ge=1)
    rate_limit_per_client: int = Field(default=12000, ge=1)
    rate_limit_sync_seconds: float = Field(default=0.25, gt=0, le=10)
    # requests without a valid token (no token, or one that did not verify) per client address and
    # window; beyond it the address gets 429 before any verification work (see gateway/ratelimit.py)
    rate_limit_anonymous_per_address: int = Field(default=300, ge=1)

    # --- audit of denials ---------------------------------------------------------------------
    audit_denials: bool = True
    audit_queue_size: int = Field(default=10000, ge=1, le=1_000_000)
    audit_batch_size: int = Field(default=200, ge=1, le=500)
    audit_flush_seconds: float = Field(default=0.5, gt=0, le=60)
    # how long a delivery waits for the audit service's answer before it gives up on the batch: the
    # batch stays queued and is sent again, with the same event ids, after the back-off (the audit
    # service records a resent event once; it may store the batch given up on all the same)
    audit_request_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    # anonymous and rate-limit denials are counted per window: AUDIT_DENIAL_WINDOW_SECONDS and
    # AUDIT_DENIAL_MAX_KEYS (svckit.settings.DenialAuditSettings, shared with the services)

    # --- the SPA ------------------------------------------------------------------------------
    spa_dist_dir: Path = REPO_ROOT / "spa" / "dist"
    spa_auth_issuer: str = ""
    spa_client_id: str = "timesheets-spa"
    spa_audience: str = ""
    spa_auth_flow: str = "code"
    spa_scopes: str = DEFAULT_SPA_SCOPES

    @field_validator("oidc_issuer")
    @classmethod
    def _issuers(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("needs at least one issuer URL")
        for issuer in value:
            if not issuer.startswith(("https://", "http://")):
                raise ValueError(f"issuer {issuer!r} must be an http(s) URL")
        return value

    @field_validator("jwt_algorithms")
    @classmethod
    def _algorithms(cls, value: list[str]) -> list[str]:
        unknown = [alg for alg in value if alg not in SUPPORTED_ALGORITHMS]
        if unknown:
            raise ValueError(
                f"unsupported or forbidden algorithm(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(SUPPORTED_ALGORITHMS))}"
            )
        if not value:
            raise ValueError("needs at least one algorithm")
        return value

    @field_validator("spa_auth_flow")
    @classmethod
    def _flow(cls, value: str) -> str:
        if value not in {"code", "implicit"}:
            raise ValueError("must be 'code' or 'implicit'")
        return value

    @field_validator("spa_scopes")
    @classmethod
    def _scopes(cls, value: str) -> str:
        # the Helm chart passes an empty SPA_SCOPES to mean "the gateway's default"
        return " ".join(value.split()) or DEFAULT_SPA_SCOPES

    @field_validator("gateway_trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        parse_networks(value)  # CIDRs or addresses: "10.0.0.0/8,192.168.1.7"
        return value

    @field_validator("timesheets_url", "approvals_url", "audit_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _nonce_secret(self) -> GatewaySettings:
        if self.dpop_nonces and not self.dpop_nonce_secret.strip():
            raise ValueError(
                "DPOP_NONCES needs DPOP_NONCE_SECRET (at least 32 bytes, base64url or raw text; "
                "kid:secret[,kid:secret...] while it rotates)"
            )
        if self.dpop_nonces:
            try:
                KeyRing.parse(self.dpop_nonce_secret)
            except ValueError as exc:
                raise ValueError(f"DPOP_NONCE_SECRET {exc}") from None
        return self

    @property
    def dpop_nonce_keys(self) -> KeyRing | None:
        """The nonce keys (the first makes nonces, every one checks them); None without DPOP_NONCES."""
        return KeyRing.parse(self.dpop_nonce_secret) if self.dpop_nonces else None

    @model_validator(mode="after")
    def _cache_secret(self) -> GatewaySettings:
        if self.gateway_cache_secret and len(decode_secret(self.gateway_cache_secret)) < 32:
            raise ValueError("GATEWAY_CACHE_SECRET must hold at least 32 bytes (base64url or raw text)")
        return self

    @property
    def gateway_cache_key(self) -> bytes | None:
        return decode_secret(self.gateway_cache_secret) if self.gateway_cache_secret else None

    @model_validator(mode="after")
    def _in_flight_below_pool(self) -> GatewaySettings:
        """The in-flight limit exists so that one token cannot hold every pooled connection to a
        service; at or above the pool's size it holds nothing back, so an explicit such value is a
        mistake worth a refusal, not a silent no-op. Left unset, it follows a pool smaller than its
        default (a one-connection pool cannot be shared out: there, no limit)."""
        limit, pool = self.gateway_max_in_flight_per_subject, self.upstream_pool_size
        if limit >= pool > 0 and "gateway_max_in_flight_per_subject" in self.model_fields_set:
            raise ValueError(
                f"GATEWAY_MAX_IN_FLIGHT_PER_SUBJECT ({limit}) must be below UPSTREAM_POOL_SIZE ({pool}):"
                " at or above it one token's requests may hold every pooled connection to a service"
                " (0 turns the limit off)"
            )
        return self

    @property
    def in_flight_limit(self) -> int:
        """The per-subject limit in force: the setting, or, left unset, the pool's size less one."""
        return min(self.gateway_max_in_flight_per_subject, self.upstream_pool_size - 1)

    @model_validator(mode="after")
    def _ttl_bounds(self) -> GatewaySettings:
        if self.jwks_min_ttl_seconds > self.jwks_max_ttl_seconds:
            raise ValueError("JWKS_MIN_TTL_SECONDS must not exceed JWKS_MAX_TTL_SECONDS")
        if self.jwks_retry_min_seconds > self.jwks_retry_max_seconds:
            raise ValueError("JWKS_RETRY_MIN_SECONDS must not exceed JWKS_RETRY_MAX_SECONDS")
        return self

    @property
    def upstreams(self) -> dict[str, str]:
        return {
            "timesheets": self.timesheets_url,
            "approvals": self.approvals_url,
            "audit": self.audit_url,
        }

    @property
    def spa_issuer(self) -> str:
        return self.spa_auth_issuer or self.oidc_issuer[0]
