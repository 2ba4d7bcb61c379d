"""Settings of the audit service (environment variables; see docs/CONTRACTS.md)."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator
from svckit.settings import DatabaseSettings, DenialAuditSettings, RedisSettings

from .checkpoints import CheckpointKeys


class AuditSettings(DatabaseSettings, RedisSettings, DenialAuditSettings):
    """Redis (REDIS_URL): the replay memory of signed requests shared by the replicas (svckit.replay)."""

    service_name: str = "audit"
    port: int = 8103
    metrics_port: int = 9103
    # How often each replica verifies the chain in the background, keeping the audit_chain_ok gauge
    # current for alerting (0 turns it off; GET /audit/verify still works). Each run recomputes what
    # was appended since the last one; the whole chain is walked again every
    # AUDIT_FULL_VERIFY_INTERVAL_SECONDS (a full walk costs ~1 s per 10,000 records).
    audit_verify_interval_seconds: float = Field(default=300.0, ge=0, le=7 * 24 * 3600)
    audit_full_verify_interval_seconds: float = Field(default=86400.0, ge=0, le=30 * 24 * 3600)
    # Ed25519 keys that sign checkpoints of the chain (audit/checkpoints.py): kid:seed[,kid:seed…], the
    # first signs, the others only verify (the previous key during a rotation). A Secret, never in the
    # database. Empty: no checkpoints are signed or checked (GET /audit/verify checks the chain alone).
    audit_checkpoint_keys: str = ""
    # How often a checkpoint is signed when the chain grew (one replica at a time); 0: never by this
    # process (it still verifies against the checkpoints others signed).
    audit_checkpoint_interval_seconds: float = Field(default=60.0, ge=0, le=24 * 3600)
    # The audit trail's reads run statements of up to AUDIT_READ_TIMEOUT_SECONDS (a verification's
    # pages, of its whole limit): the driver's bound stays 30 s here, as it was for every service.
    db_statement_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    # GET /audit/events: how long one statement of a listing may run (SET LOCAL statement_timeout; a
    # listing that would take longer answers 422, narrow it), at most DB_STATEMENT_TIMEOUT_SECONDS (the
    # driver's bound, which would answer 503 first) and at most 30 s; and how many
    # listings may hold a pooled connection at once (at most DB_POOL_MAX - 1: ingestion keeps the
    # rest; a listing waits up to the timeout for a turn, then 503).
    audit_read_timeout_seconds: float = Field(default=5.0, gt=0, le=30)
    audit_read_concurrency: int = Field(default=4, ge=1, le=100)
    # GET /audit/verify (a walk of the whole chain, ~1 s per 10,000 records): how long one walk on
    # request may run in all (longer answers 422 chain_too_long: the background verifier and
    # `python -m audit verify` cover a trail that long), kept below the gateway's
    # UPSTREAM_READ_TIMEOUT_SECONDS (30) so the caller hears why instead of a 504 while the walk goes
    # on; raise the two together. And how many walks on request run at once (each also takes one of
    # the AUDIT_READ_CONCURRENCY turns): one more is refused at once, 503 with Retry-After (callers
    # of a full walk already running share it instead).
    audit_verify_timeout_seconds: float = Field(default=25.0, gt=0, le=600)
    audit_verify_concurrency: int = Field(default=1, ge=1, le=10)

    @property
    def read_concurrency(self) -> int:
        """Listings at once: AUDIT_READ_CONCURRENCY, leaving at least one pooled connection over."""
        return max(1, min(self.audit_read_concurrency, self.db_pool_max - 1))

    @property
    def verify_concurrency(self) -> int:
        """Walks on request at once: AUDIT_VERIFY_CONCURRENCY, at most the listing turns they take."""
        return min(self.audit_verify_concurrency, self.read_concurrency)

    @field_validator("audit_checkpoint_keys")
    @classmethod
    def _usable_keys(cls, value: str) -> str:
        if value.strip():
            CheckpointKeys.parse(value)  # CheckpointKeyError is a ValueError naming no key material
        return value

    @model_validator(mode="after")
    def _read_within_statement_bound(self) -> AuditSettings:
        if self.audit_read_timeout_seconds > self.db_statement_timeout_seconds:
            raise ValueError(
                "AUDIT_READ_TIMEOUT_SECONDS must be at most DB_STATEMENT_TIMEOUT_SECONDS (a listing's "
                "statement would be cut by the driver, 503, before the database's own limit, 422)"
            )
        return self

    @property
    def checkpoint_keys(self) -> CheckpointKeys | None:
        return (
            CheckpointKeys.parse(self.audit_checkpoint_keys) if self.audit_checkpoint_keys.strip() else None
        )
