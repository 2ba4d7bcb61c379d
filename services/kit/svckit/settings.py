"""Typed settings from the environment, shared by every service.

Each service subclasses :class:`ServiceSettings` and adds its own fields. A missing or malformed value
must stop the process before it binds a port, with one line that names the variable, so that a
misconfigured Deployment fails its rollout loudly instead of serving with a surprising default.
"""

from __future__ import annotations

import base64
import sys
from collections.abc import Mapping
from typing import Annotated, Any, Self, TypeVar

from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .dbtls import DatabaseTls, resolve

MIN_IDENTITY_KEY_BYTES = 32


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


CsvList = Annotated[list[str], NoDecode, BeforeValidator(_split_csv)]


def decode_secret(text: str) -> bytes:
    """Accept a base64url secret (``secrets.token_urlsafe(32)``, ``openssl rand -base64 32``) or raw text."""
    candidate = text.strip()
    try:
        raw = base64.urlsafe_b64decode(candidate + "=" * (-len(candidate) % 4))
        if len(raw) >= MIN_IDENTITY_KEY_BYTES and base64.urlsafe_b64encode(raw).rstrip(b"=") == (
            candidate.replace("+", "-").replace("/", "_").rstrip("=").encode()
        ):
            return raw
    except ValueError:
        pass
    return candidate.encode()


def parse_identity_keys(value: object) -> dict[str, bytes]:
    """Parse ``kid:secret[,kid:secret…]``; the first entry signs, all of them verify."""
    if isinstance(value, dict):
        return value
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be 'kid:secret[,kid:secret...]'")
    keys: dict[str, bytes] = {}
    for item in value.split(","):
        kid, sep, secret = item.strip().partition(":")
        if not sep or not kid or not secret:
            raise ValueError("each entry must be 'kid:secret'")
        if not kid.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise ValueError(f"key id {kid!r} may only hold letters, digits, '-', '_' and '.'")
        raw = decode_secret(secret)
        if len(raw) < MIN_IDENTITY_KEY_BYTES:
            raise ValueError(f"secret of key {kid!r} is shorter than {MIN_IDENTITY_KEY_BYTES} bytes")
        if kid in keys:
            raise ValueError(f"key id {kid!r} appears twice")
        keys[kid] = raw
    return keys


IdentityKeys = Annotated[dict[str, bytes], NoDecode, BeforeValidator(parse_identity_keys)]


class ServiceSettings(BaseSettings):
    """What every service reads. Field names are the environment variable names, case-insensitively."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True, case_sensitive=False)

    service_name: str = Field(default="service", exclude=True)
    bind_host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    # The metrics listener (GET /metrics, svckit.metrics.MetricsServer): never the public port, so an
    # Ingress cannot publish it. Each service sets its own default (docs/CONTRACTS.md).
    metrics_port: int = Field(default=9100, ge=1, le=65535)
    log_level: str = "INFO"
    shutdown_timeout_seconds: float = Field(default=20.0, gt=0, le=600)
    # Development only (the chart's devMode.sourceSync, `skaffold dev`): restart on source changes.
    dev_reload: bool = False
    identity_keys: IdentityKeys
    identity_max_skew_seconds: int = Field(default=60, ge=1, le=3600)

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @model_validator(mode="after")
    def _metrics_port_is_its_own(self) -> Self:
        if self.metrics_port == self.port:
            raise ValueError(f"METRICS_PORT must differ from PORT (both are {self.port})")
        return self

    @property
    def signing_key_id(self) -> str:
        return next(iter(self.identity_keys))


class DatabaseSettings(ServiceSettings):
    """Settings of a service that owns a Postgres schema."""

    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    db_pool_min: int = Field(default=1, ge=0, le=100)
    db_pool_max: int = Field(default=10, ge=1, le=500)
    db_connect_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    # The database server's CA for sslmode=verify-full/verify-ca: a file or "system" (the image's trust
    # store); wins over the URL's sslrootcert. The chart mounts externalDatabase.caBundle here.
    db_sslrootcert: str = ""
    # Overrides the URL's sslmode (empty: the URL's): lets a deployment insist on verify-full.
    db_sslmode: str = ""

    @field_validator("database_url")
    @classmethod
    def _postgres_scheme(cls, value: str) -> str:
        if not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must start with postgresql:// or postgres://")
        return value

    @model_validator(mode="after")
    def _tls_can_work(self) -> Self:
        """A TLS set-up that cannot work stops the process now, not at the first connection."""
        resolve(self.database_url, self.db_sslrootcert, self.db_sslmode)  # DatabaseTlsError: a ValueError
        return self

    @property
    def database_tls(self) -> DatabaseTls:
        return resolve(self.database_url, self.db_sslrootcert, self.db_sslmode)


class RedisSettings(ServiceSettings):
    """Mixin-ish base for services that use Redis for losable state."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_key_prefix: str = "tsp:"
    # Every call is bounded (svckit.redisguard): slower than this counts as Redis down, and Redis is
    # then skipped for REDIS_RETRY_SECONDS instead of costing a timeout per request.
    redis_timeout_seconds: float = Field(default=0.25, gt=0, le=10)
    redis_retry_seconds: float = Field(default=2.0, gt=0, le=300)

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value


S = TypeVar("S", bound=ServiceSettings)


class SettingsError(SystemExit):
    """Raised (as an exit) when the environment does not describe a runnable service."""


def describe_error(exc: ValidationError) -> str:
    """One line: every offending variable with what is wrong, secrets never echoed."""
    parts = []
    for error in exc.errors():
        name = str(error["loc"][0]).upper() if error["loc"] else ""  # "": a check across variables
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            message = "is required but not set"
        parts.append(f"{name} {message}".strip())
    return "invalid configuration: " + "; ".join(parts)


def load_settings(cls: type[S], env: Mapping[str, str] | None = None, **overrides: Any) -> S:
    """Build settings or exit with status 2 and a single line on stderr naming the variable."""
    try:
        if env is not None:
            lowered = {k.lower(): v for k, v in env.items()}
            fields = {name for name in cls.model_fields}
            values: dict[str, Any] = {k: v for k, v in lowered.items() if k in fields}
            values.update(overrides)
            return cls.model_validate(values)
        return cls(**overrides)
    except ValidationError as exc:
        print(describe_error(exc), file=sys.stderr, flush=True)
        raise SettingsError(2) from None


def copy_with(settings: S, **changes: Any) -> S:
    """Frozen settings stay frozen; tests derive variants with this."""
    return settings.model_copy(update=changes)


__all__ = [
    "CsvList",
    "DatabaseSettings",
    "IdentityKeys",
    "RedisSettings",
    "ServiceSettings",
    "SettingsError",
    "copy_with",
    "decode_secret",
    "describe_error",
    "load_settings",
    "parse_identity_keys",
]
