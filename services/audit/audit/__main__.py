"""`python -m audit` serves; `python -m audit migrate` applies the schema migrations."""

from pathlib import Path

from svckit.cli import run_cli

from .settings import AuditSettings

raise SystemExit(
    run_cli(
        name="audit",
        settings_cls=AuditSettings,
        app_factory="audit.app:create_app",
        schema="audit",
        migrations=Path(__file__).parent / "migrations",
    )
)
