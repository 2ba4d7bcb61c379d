"""Settings of the audit service (environment variables; see docs/CONTRACTS.md)."""

from __future__ import annotations

from pydantic import Field
from svckit.settings import DatabaseSettings


class AuditSettings(DatabaseSettings):
    service_name: str = "audit"
    port: int = 8103
    # How often each replica re-verifies the whole chain in the background, keeping the
    # audit_chain_ok gauge current for alerting (0 turns it off; GET /audit/verify still works).
    audit_verify_interval_seconds: float = Field(default=900.0, ge=0, le=7 * 24 * 3600)
