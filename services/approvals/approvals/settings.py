"""Settings of the approvals service (environment variables; see docs/CONTRACTS.md)."""

from __future__ import annotations

from pydantic import Field
from svckit.settings import DatabaseSettings, DenialAuditSettings, OutboxSettings, RedisSettings


class ApprovalsSettings(DatabaseSettings, RedisSettings, DenialAuditSettings, OutboxSettings):
    """Redis (REDIS_URL): the replay memory of signed requests shared by the replicas (svckit.replay)."""

    service_name: str = "approvals"
    port: int = 8102
    metrics_port: int = 9102
    # The peer that owns entries (the outbox relay's audit service: OutboxSettings).
    timesheets_url: str = "http://127.0.0.1:8101"
    # One attempt at applying a decision at the timesheets service (seconds), and how many attempts
    # a PUT makes before answering 503 and leaving the rest to the reconciler.
    apply_timeout_seconds: float = Field(default=4.0, gt=0, le=60)
    apply_attempts: int = Field(default=2, ge=1, le=5)
    # The reconciler: how often it looks, and how long a decision must have been pending (untouched)
    # before it takes over; longer than a PUT's own attempts so it rarely races a live request.
    reconcile_interval_seconds: float = Field(default=5.0, gt=0, le=3600)
    reconcile_after_seconds: float = Field(default=15.0, ge=0, le=86400)
