"""The gateway application (skeleton: health endpoints only until the gateway issue lands)."""

from __future__ import annotations

from starlette.applications import Starlette
from svckit.app import create_service_app
from svckit.logs import configure_logging
from svckit.settings import load_settings

from .settings import GatewaySettings


def create_app(settings: GatewaySettings | None = None) -> Starlette:
    if settings is None:
        settings = load_settings(GatewaySettings)
        configure_logging(settings.service_name, settings.log_level)
    return create_service_app(settings, [], require_identity=False)
