"""`python -m timesheets` serves; `python -m timesheets migrate` applies the schema migrations."""

from pathlib import Path

from svckit.cli import run_cli

from .settings import TimesheetsSettings

raise SystemExit(
    run_cli(
        name="timesheets",
        settings_cls=TimesheetsSettings,
        app_factory="timesheets.app:create_app",
        schema="timesheets",
        migrations=Path(__file__).parent / "migrations",
    )
)
