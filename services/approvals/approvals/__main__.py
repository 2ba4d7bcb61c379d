"""`python -m approvals` serves; `python -m approvals migrate` applies the schema migrations."""

from pathlib import Path

from svckit.cli import run_cli

from .settings import ApprovalsSettings

raise SystemExit(
    run_cli(
        name="approvals",
        settings_cls=ApprovalsSettings,
        app_factory="approvals.app:create_app",
        schema="approvals",
        migrations=Path(__file__).parent / "migrations",
    )
)
