"""Settings of the gateway (environment variables; see docs/CONTRACTS.md)."""

from __future__ import annotations

from svckit.settings import RedisSettings


class GatewaySettings(RedisSettings):
    service_name: str = "gateway"
    port: int = 8080
