"""`python -m timesheets` serves; `python -m timesheets migrate` applies the schema migrations;
`python -m timesheets outbox accept-audit-restore` accepts that the audit trail lost delivered events."""

from svckit.collector import collect_rarely

collect_rarely()  # before the service's imports (svckit.collector)

from pathlib import Path

from svckit.appimport import importing_application
from svckit.cli import run_cli
from svckit.receipts import outbox_command

with importing_application("timesheets"):  # one line and exit 1 if they raise or hang (svckit.appimport)
    from .settings import TimesheetsSettings

raise SystemExit(
    run_cli(
        name="timesheets",
        settings_cls=TimesheetsSettings,
        app_factory="timesheets.app:create_app",
        schema="timesheets",
        migrations=Path(__file__).parent / "migrations",
        commands={"outbox": outbox_command("timesheets")},
    )
)
