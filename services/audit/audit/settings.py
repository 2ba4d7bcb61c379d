"""Settings of the audit service (environment variables; see docs/CONTRACTS.md)."""

from __future__ import annotations

from svckit.settings import DatabaseSettings


class AuditSettings(DatabaseSettings):
    service_name: str = "audit"
    port: int = 8103
