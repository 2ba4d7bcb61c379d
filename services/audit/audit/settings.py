"""Settings of the audit service (environment variables; see docs/CONTRACTS.md)."""

from __future__ import annotations

from pydantic import Field
from svckit.settings import DatabaseSettings


class AuditSettings(DatabaseSettings):
    service_name: str = "audit"
    port: int = 8103
    metrics_port: int = 9103
    # How often each replica verifies the chain in the background, keeping the audit_chain_ok gauge
    # current for alerting (0 turns it off; GET /audit/verify still works). Each run recomputes what
    # was appended since the last one; the whole chain is walked again every
    # AUDIT_FULL_VERIFY_INTERVAL_SECONDS (a full walk costs ~1 s per 10,000 records).
    audit_verify_interval_seconds: float = Field(default=300.0, ge=0, le=7 * 24 * 3600)
    audit_full_verify_interval_seconds: float = Field(default=86400.0, ge=0, le=30 * 24 * 3600)
