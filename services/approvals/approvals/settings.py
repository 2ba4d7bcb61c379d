"""Settings of the approvals service (environment variables; see docs/CONTRACTS.md)."""

from __future__ import annotations

from svckit.settings import DatabaseSettings


class ApprovalsSettings(DatabaseSettings):
    service_name: str = "approvals"
    port: int = 8102
