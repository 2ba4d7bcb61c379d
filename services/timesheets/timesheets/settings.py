"""Settings of the timesheets service (environment variables; see docs/CONTRACTS.md)."""

from __future__ import annotations

from pydantic import Field
from svckit.contracts.timesheets import MAX_UPLOAD_BYTES
from svckit.settings import DatabaseSettings, DenialAuditSettings, OutboxSettings, RedisSettings


class TimesheetsSettings(DatabaseSettings, RedisSettings, DenialAuditSettings, OutboxSettings):
    """Redis (REDIS_URL): the replay memory of signed requests shared by the replicas (svckit.replay)."""

    service_name: str = "timesheets"
    port: int = 8101
    metrics_port: int = 9101
    # How long a create/upload Idempotency-Key is remembered (retries later than this create anew).
    idempotency_ttl_hours: float = Field(default=24.0, gt=0, le=24 * 30)
    # Largest request body: a 1,000-row upload of the longest rows, in any BMP script, \u-escaped too
    # (~14.2 MB; svckit.contracts.timesheets.MAX_UPLOAD_BYTES, 16 MiB).
    max_body_bytes: int = Field(default=MAX_UPLOAD_BYTES, ge=64 << 10, le=64 << 20)
