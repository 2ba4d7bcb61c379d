"""The audit service application."""

from __future__ import annotations

from starlette.applications import Starlette
from svckit.app import create_service_app
from svckit.db import Database
from svckit.logs import configure_logging
from svckit.settings import load_settings

from .settings import AuditSettings

SCHEMA = "audit"


def create_app(settings: AuditSettings | None = None) -> Starlette:
    if settings is None:
        settings = load_settings(AuditSettings)
        configure_logging(settings.service_name, settings.log_level)
    database = Database.from_settings(settings, SCHEMA)
    return create_service_app(settings, [], database=database)
