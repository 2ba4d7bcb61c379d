"""`python -m approvals` serves; `python -m approvals migrate` applies the schema migrations;
`python -m approvals reapply-decisions` repairs the entries after a restore of the timesheets schema;
`python -m approvals outbox accept-audit-restore` accepts that the audit trail lost delivered events."""

from svckit.collector import collect_rarely

collect_rarely()  # before the service's imports (svckit.collector)

from pathlib import Path

from svckit.appimport import importing_application
from svckit.cli import run_cli
from svckit.receipts import outbox_command

with importing_application("approvals"):  # one line and exit 1 if they raise or hang (svckit.appimport)
    from .reapply import reapply_decisions
    from .settings import ApprovalsSettings

raise SystemExit(
    run_cli(
        name="approvals",
        settings_cls=ApprovalsSettings,
        app_factory="approvals.app:create_app",
        schema="approvals",
        migrations=Path(__file__).parent / "migrations",
        commands={"reapply-decisions": reapply_decisions, "outbox": outbox_command("approvals")},
    )
)
