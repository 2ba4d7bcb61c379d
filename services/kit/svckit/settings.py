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
from .identity import OPTIONAL_SENDERS, PAIRS, pair_variable
from .proxies import ProxyHeader
from .redistls import RedisTls
from .redistls import resolve as resolve_redis_tls
from .roles import RuntimeRole
from .urlshape import unreadable

MIN_IDENTITY_KEY_BYTES = 32


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


CsvList = Annotated[list[str], NoDecode, BeforeValidator(_split_csv)]


def _header_name(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


#: ``X-Forwarded-For`` or ``Forwarded``, as written (header names are case-insensitive)
ProxyHeaderSetting = Annotated[ProxyHeader, BeforeValidator(_header_name)]


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
    # Entries are named by position, never by their text: a secret set without a kid but holding a
    # ":" reads as kid:secret, and its "kid" is then part of the secret.
    for number, item in enumerate(value.split(","), start=1):
        kid, sep, secret = item.strip().partition(":")
        if not sep or not kid or not secret:
            raise ValueError(f"entry {number}: each entry must be 'kid:secret'")
        if not kid.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise ValueError(f"entry {number}: a key id may only hold letters, digits, '-', '_' and '.'")
        raw = decode_secret(secret)
        if len(raw) < MIN_IDENTITY_KEY_BYTES:
            raise ValueError(f"entry {number}: the secret is shorter than {MIN_IDENTITY_KEY_BYTES} bytes")
        if kid in keys:
            raise ValueError(f"entry {number}: its key id appears twice")
        keys[kid] = raw
    return keys


IdentityKeys = Annotated[dict[str, bytes], NoDecode, BeforeValidator(parse_identity_keys)]


def parse_pair_keys(value: object) -> dict[str, bytes]:
    """One pair's keys (:func:`parse_identity_keys`), or none when the variable is unset or empty."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return {}
    return parse_identity_keys(value)


PairKeys = Annotated[dict[str, bytes], NoDecode, BeforeValidator(parse_pair_keys)]


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
    # How long a client may take to send a request head, and stay silent inside a body the server waits
    # for, before the server answers 408 and ends the connection (svckit.server: its defaults
    # REQUEST_HEAD_TIMEOUT_SECONDS and REQUEST_BODY_TIMEOUT_SECONDS, repeated here to keep this module
    # free of the server's imports).
    request_head_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    request_body_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    # How long a client may take nothing of its response while the server waits to write (writing
    # paused, or a closing connection's bytes unsent) before the connection is reset, and how many
    # connections one worker process holds open (one more is answered 503): svckit.server's
    # RESPONSE_SEND_TIMEOUT_SECONDS and MAX_CONNECTIONS_PER_WORKER, repeated here likewise.
    response_send_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    max_connections_per_worker: int = Field(default=2048, ge=1, le=100_000)
    # A worker among several whose event loop has not run this long is killed and replaced
    # (svckit.watchdog.WORKER_STUCK_SECONDS, repeated here likewise).
    worker_stuck_seconds: float = Field(default=30.0, gt=0, le=3600)
    # ... and one that has not beaten this long after its start (its start hung: an import, the
    # application factory) likewise (svckit.watchdog.WORKER_START_SECONDS).
    worker_start_seconds: float = Field(default=60.0, gt=0, le=3600)
    # Request bodies over 64 KiB a worker holds at once (svckit.middleware.BodyBudget): four of the
    # largest uploads; 0: no bound.
    request_body_buffer_bytes: int = Field(default=64 * 1024 * 1024, ge=0, le=16 * 1024 * 1024 * 1024)
    # Development only (the chart's devMode.sourceSync, `skaffold dev`): restart on source changes.
    dev_reload: bool = False
    identity_max_skew_seconds: int = Field(default=60, ge=1, le=3600)
    # One secret per sender → receiver pair (svckit.identity.PAIRS), kid:secret[,kid:secret…]: the
    # first signs, all verify. A process reads only the pairs it is an end of (by SERVICE_NAME); the
    # chart and `make dev` give it no others. The sender a key belongs to is what it may assert.
    identity_keys_gateway_to_timesheets: PairKeys = Field(default_factory=dict, repr=False)
    identity_keys_gateway_to_approvals: PairKeys = Field(default_factory=dict, repr=False)
    identity_keys_gateway_to_audit: PairKeys = Field(default_factory=dict, repr=False)
    identity_keys_approvals_to_timesheets: PairKeys = Field(default_factory=dict, repr=False)
    identity_keys_timesheets_to_audit: PairKeys = Field(default_factory=dict, repr=False)
    identity_keys_approvals_to_audit: PairKeys = Field(default_factory=dict, repr=False)
    identity_keys_identity_to_audit: PairKeys = Field(default_factory=dict, repr=False)

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

    @model_validator(mode="after")
    def _key_ids_name_one_sender(self) -> Self:
        """A receiver's key ids must each name one sender: the key id is how it knows who signed."""
        seen: dict[str, str] = {}
        for sender, keys in self.identity_verify_keys.items():
            for kid in keys:
                if kid in seen:
                    raise ValueError(
                        f"key id {kid!r} is in both {pair_variable(seen[kid], self.service_name)} and "
                        f"{pair_variable(sender, self.service_name)}: each key id must name one sender"
                    )
                seen[kid] = sender
        return self

    def missing_identity_pairs(self) -> str:
        """ "" when every pair this service is an end of has keys, else the one-line complaint. A receiver
        needs no keys of an optional sender (``OPTIONAL_SENDERS``: a release without the bundled
        identity provider gives the audit service none of its pair).

        Checked when a service is about to serve (svckit.cli), not by every command: ``migrate`` runs
        with the service's settings but must not be given its identity keys (the chart does not)."""
        missing = [
            pair_variable(sender, receiver)
            for sender, receiver in PAIRS
            if self._needs_pair(sender, receiver) and not self.pair_keys(sender, receiver)
        ]
        if not missing:
            return ""
        return f"{', '.join(missing)} must be set (kid:secret[,kid:secret...])"

    def _needs_pair(self, sender: str, receiver: str) -> bool:
        """Whether this service cannot serve without the pair's keys: it signs with them, or it
        receives from a sender every release runs."""
        if sender == self.service_name:
            return True
        return receiver == self.service_name and sender not in OPTIONAL_SENDERS

    def pair_keys(self, sender: str, receiver: str) -> dict[str, bytes]:
        """The keys of one pair (empty when unset)."""
        keys: dict[str, bytes] = getattr(self, pair_variable(sender, receiver).lower(), {})
        return keys

    @property
    def identity_verify_keys(self) -> dict[str, dict[str, bytes]]:
        """Sender → its keys, for every pair this service receives on."""
        return {
            sender: self.pair_keys(sender, receiver)
            for sender, receiver in PAIRS
            if receiver == self.service_name and self.pair_keys(sender, receiver)
        }

    def identity_sign_keys(self, receiver: str) -> dict[str, bytes]:
        """This service's keys towards ``receiver`` (the first signs)."""
        keys = self.pair_keys(self.service_name, receiver)
        if not keys:
            raise ValueError(f"{pair_variable(self.service_name, receiver)} is not set")
        return keys


class DenialAuditSettings(ServiceSettings):
    """Settings of a process whose denials go to the audit trail aggregated per window
    (:mod:`svckit.denials`): the gateway and every service behind it."""

    # denials are recorded once per (status, reason, route, method, caller, address) and window, at most
    # AUDIT_DENIAL_MAX_KEYS records per window and worker (callers beyond it share the address "*")
    audit_denial_window_seconds: float = Field(default=60.0, ge=0.05, le=3600)
    audit_denial_max_keys: int = Field(default=1000, ge=1, le=100_000)


class OutboxSettings(ServiceSettings):
    """Settings of a service whose outbox relay delivers its audit events to the audit service
    (:meth:`svckit.outbox.OutboxRelay.for_service`): timesheets, approvals, the identity provider."""

    # where the outbox relay delivers the service's audit events
    audit_url: str = "http://127.0.0.1:8103"
    # how often the relay polls besides LISTEN/NOTIFY, and its longest backoff while the audit service
    # is unreachable (so the backlog drains within this long after it returns)
    outbox_poll_interval_seconds: float = Field(default=2.0, gt=0, le=300)
    outbox_max_backoff_seconds: float = Field(default=30.0, ge=0.1, le=3600)
    # how often the relay asks the audit service whether its trail still holds the newest event it
    # delivered (svckit.receipts; also at start and after a failed delivery)
    outbox_receipt_check_interval_seconds: float = Field(default=60.0, ge=1, le=3600)
    # how long the relay waits for the audit service's answer to one batch before it gives up on it
    # (the rows stay due and are sent again after the back-off; the audit service may still store the
    # batch it gave up on: ingest is idempotent by event id, so the resend records nothing twice).
    # Below DB_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS: the relay's claim transaction stays open meanwhile.
    outbox_request_timeout_seconds: float = Field(default=10.0, gt=0, le=14)


class DatabaseSettings(ServiceSettings):
    """Settings of a service that owns a Postgres schema."""

    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    db_pool_min: int = Field(default=1, ge=0, le=100)
    db_pool_max: int = Field(default=10, ge=1, le=500)
    # How long a pooled connection beyond DB_POOL_MIN may stay idle (released, unused) before the pool
    # closes it (asyncpg's max_inactive_connection_lifetime; the next burst opens them again). A
    # Postgres session is a scarce resource of the server's (max_connections, shared by every pod of
    # every service): a burst's connections stay open this long after it. 0: never closed for idleness.
    db_pool_idle_seconds: float = Field(default=300.0, ge=0, le=86400)
    db_connect_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    # The longest the service waits for the answer to one statement (asyncpg's command_timeout, on
    # the client side: a server that hangs enforces no statement_timeout of its own). Past it the
    # request is answered 503 with Retry-After and the session is closed, not pooled again
    # (svckit.db.abandon). It was a fixed 30 s, the gateway's own upstream read timeout: every request
    # on a hung database waited with it, and the gateway's 504 raced the service's 503.
    db_statement_timeout_seconds: float = Field(default=10.0, gt=0, le=600)
    # How often a fresh connection asks which Postgres server DATABASE_URL leads to; pooled
    # connections (and the outbox's LISTEN connection) on another server are closed. Bounds how long
    # a service goes on writing to an old primary that a failover left up and writable (svckit.dbserver,
    # docs/runbook.md "Split brain"). 0: never checked.
    db_leader_check_seconds: float = Field(default=5.0, ge=0, le=3600)
    # The longest a statement waits for a lock another session holds (Postgres's lock_timeout, set on
    # every connection of the service): an operator's LOCK TABLE, a row locked by a stuck session, a
    # migration's ALTER TABLE queued behind a long transaction. Past it the server gives up (SQLSTATE
    # 55P03) and the request is answered 503 "database_busy" with Retry-After, its connection kept.
    # Below the statement bound: without it a request on a locked table waited the whole statement
    # bound holding a pooled connection, and more of them than the pool holds starved the service's
    # other routes, /readyz included (svckit.db.LOCK_ERRORS).
    db_lock_timeout_seconds: float = Field(default=2.0, gt=0, le=600)
    # How long one of the service's own sessions may stay idle inside a transaction before the server
    # ends it (idle_in_transaction_session_timeout), releasing its locks: a transaction left open by a
    # stuck handler or a frozen process must not hold rows or tables forever. Above the longest wait
    # inside a transaction the services have (the outbox relay's delivery to the audit service, 10 s).
    db_idle_in_transaction_timeout_seconds: float = Field(default=60.0, ge=15, le=3600)
    # Read by `migrate` only (svckit.migrations): how long each migration waits for a lock (its ALTER
    # TABLE queued behind a long transaction holds up every later statement on the table meanwhile)
    # before it is rolled back and tried again after a backoff, and how many times it is tried before
    # the run gives up (exit 1, that migration not applied). Below DB_LOCK_TIMEOUT_SECONDS, so that a
    # request queued behind a migration waits for it, never fails for it; above Postgres's
    # deadlock_timeout (1 s), after which a waiter makes the server cancel an autovacuum in its way.
    db_migration_lock_timeout_seconds: float = Field(default=1.5, gt=0, le=60)
    db_migration_lock_attempts: int = Field(default=20, ge=1, le=1000)
    # The database server's CA for sslmode=verify-full/verify-ca: a file or "system" (the image's trust
    # store); wins over the URL's sslrootcert. The chart mounts externalDatabase.caBundle here.
    db_sslrootcert: str = ""
    # Overrides the URL's sslmode (empty: the URL's): lets a deployment insist on verify-full.
    db_sslmode: str = ""
    # Read by `migrate` only (svckit.roles): the login role the service runs as. `migrate` connects with
    # DATABASE_URL as the migration role (the owner) and brings this role to the privileges its schema
    # declares; the service itself is then started with a DATABASE_URL naming this role. Empty: no
    # runtime role (the service would run as the owner of its tables: local experiments only).
    db_runtime_role: str = Field(default="", pattern=r"^([a-z_][a-z0-9_]{0,62})?$")
    # The password of the login the service uses (DB_RUNTIME_LOGIN), set by `migrate` when
    # DB_MANAGE_ROLES (it creates the role if needed).
    db_runtime_password: str = ""
    # The login the service uses: the runtime role itself (empty, the default) or its second login
    # `<DB_RUNTIME_ROLE>_b`, a member inheriting its privileges. A password rotation switches between
    # the two, so that pods still on the old password keep logging in (docs/database-roles.md).
    db_runtime_login: str = Field(default="", pattern=r"^([a-z_][a-z0-9_]{0,62})?$")
    # The password of the other login of the two, which `migrate` keeps able to log in while the pods
    # switch; empty: `migrate` disables the other login (NOLOGIN, no password) if it exists.
    db_runtime_other_password: str = ""
    # false: the platform team creates the runtime role (and its password) itself; `migrate` only grants.
    db_manage_roles: bool = True

    @field_validator("database_url")
    @classmethod
    def _postgres_scheme(cls, value: str) -> str:
        if not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must start with postgresql:// or postgres://")
        if problem := unreadable(value):  # before asyncpg quotes pieces of the password (svckit.urlshape)
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _lock_bounds_in_order(self) -> Self:
        """A lock wait must end before the statement bound does (else the driver cuts it first: a 503
        that says "unreachable", the session closed), and a migration's before a request's."""
        if self.db_lock_timeout_seconds >= self.db_statement_timeout_seconds:
            raise ValueError(
                f"DB_LOCK_TIMEOUT_SECONDS ({self.db_lock_timeout_seconds:g}) must be below "
                f"DB_STATEMENT_TIMEOUT_SECONDS ({self.db_statement_timeout_seconds:g})"
            )
        if self.db_migration_lock_timeout_seconds >= self.db_lock_timeout_seconds:
            raise ValueError(
                f"DB_MIGRATION_LOCK_TIMEOUT_SECONDS ({self.db_migration_lock_timeout_seconds:g}) must be "
                f"below DB_LOCK_TIMEOUT_SECONDS ({self.db_lock_timeout_seconds:g}): requests queued "
                "behind a migration's lock would fail before it gives up"
            )
        return self

    @model_validator(mode="after")
    def _tls_can_work(self) -> Self:
        """A TLS set-up that cannot work stops the process now, not at the first connection."""
        resolve(self.database_url, self.db_sslrootcert, self.db_sslmode)  # DatabaseTlsError: a ValueError
        return self

    @property
    def database_tls(self) -> DatabaseTls:
        return resolve(self.database_url, self.db_sslrootcert, self.db_sslmode)

    @property
    def runtime_role(self) -> RuntimeRole | None:
        """The role ``migrate`` prepares (``None`` without ``DB_RUNTIME_ROLE``); raises
        :class:`~svckit.roles.RoleError` when it cannot be prepared as configured."""
        if not self.db_runtime_role:
            return None
        return RuntimeRole(
            self.db_runtime_role,
            self.db_runtime_password or None,
            manage=self.db_manage_roles,
            login=self.db_runtime_login,
            other_password=self.db_runtime_other_password or None,
        )


class RedisSettings(ServiceSettings):
    """Mixin-ish base for services that use Redis for losable state."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_key_prefix: str = "tsp:"
    # Every call is bounded (svckit.redisguard): slower than this counts as Redis down, and Redis is
    # then skipped for REDIS_RETRY_SECONDS instead of costing a timeout per request.
    redis_timeout_seconds: float = Field(default=0.25, gt=0, le=10)
    redis_retry_seconds: float = Field(default=2.0, gt=0, le=300)
    # For a rediss:// URL (svckit.redistls): the server's CA, a PEM file or "system" (the image's trust
    # store; also when empty). Only that CA is trusted. The chart mounts externalRedis.caBundle here.
    redis_tls_ca_file: str = ""
    # full: the certificate must name the URL's host; ca: the chain only (a server certificate that
    # names no host the pods use, as some managed Redis offerings issue).
    redis_tls_verify: str = "full"

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        if problem := unreadable(value):  # before redis-py quotes pieces of the password (svckit.urlshape)
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _redis_tls_can_work(self) -> Self:
        """A TLS set-up that cannot work, or a URL that loosens it, stops the process now."""
        resolve_redis_tls(self.redis_url, self.redis_tls_ca_file, self.redis_tls_verify)  # a ValueError
        return self

    @property
    def redis_tls(self) -> RedisTls | None:
        return resolve_redis_tls(self.redis_url, self.redis_tls_ca_file, self.redis_tls_verify)


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
    "DenialAuditSettings",
    "IdentityKeys",
    "PairKeys",
    "RedisSettings",
    "ServiceSettings",
    "SettingsError",
    "copy_with",
    "decode_secret",
    "describe_error",
    "load_settings",
    "parse_identity_keys",
    "parse_pair_keys",
]
