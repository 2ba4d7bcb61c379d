"""Settings of the approvals service (environment variables; see docs/CONTRACTS.md)."""

from __future__ import annotations

from pydantic import Field
from svckit.settings import DatabaseSettings, DenialAuditSettings, RedisSettings


class ApprovalsSettings(DatabaseSettings, RedisSettings, DenialAuditSettings):
    """Redis (REDIS_URL): the replay memory of signed requests shared by the replicas (svckit.replay)."""

    service_name: str = "approvals"
    port: int = 8102
    metrics_port: int = 9102
    # The peer that owns entries, and where the outbox relay delivers audit events.
    timesheets_url: str = "http://127.0.0.1:8101"
    audit_url: str = "http://127.0.0.1:8103"
    # One attempt at applying a decision at the timesheets service (seconds), and how many attempts
    # a PUT makes before answering 503 and leaving the rest to the reconciler.
    apply_timeout_seconds: float = Field(default=4.0, gt=0, le=60)
    apply_attempts: int = Field(default=2, ge=1, le=5)
    # The reconciler: how often it looks, and how long a decision must have been pending (untouched)
    # before it takes over; longer than a PUT's own attempts so it rarely races a live request.
    reconcile_interval_seconds: float = Field(default=5.0, gt=0, le=3600)
    reconcile_after_seconds: float = Field(default=15.0, ge=0, le=86400)
    # The outbox relay: how often it polls besides LISTEN/NOTIFY, and its longest backoff while the
    # audit service is unreachable (so the backlog drains within this long after it returns).
    outbox_poll_interval_seconds: float = Field(default=2.0, gt=0, le=300)
    outbox_max_backoff_seconds: float = Field(default=30.0, ge=0.1, le=3600)
