"""`python -m gateway` serves the gateway."""

from svckit.cli import run_cli

from .settings import GatewaySettings

raise SystemExit(run_cli(name="gateway", settings_cls=GatewaySettings, app_factory="gateway.app:create_app"))
