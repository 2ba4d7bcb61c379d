"""Settings of the timesheets service (environment variables; see docs/CONTRACTS.md)."""

from __future__ import annotations

from svckit.settings import DatabaseSettings


class TimesheetsSettings(DatabaseSettings):
    service_name: str = "timesheets"
    port: int = 8101
