"""`python -m audit` serves; `python -m audit migrate` applies the schema migrations;
`python -m audit verify` / `export-checkpoints` check and copy the trail offline (audit/offline.py,
which needs only the database's settings, not the service's); `python -m audit accept-restore`
accepts the loss a restore of the schema caused (audit/restore.py, with the service's settings)."""

from svckit.collector import collect_rarely

collect_rarely()  # before the service's imports (svckit.collector)

import sys
from pathlib import Path

from svckit.appimport import importing_application
from svckit.cli import run_cli

with importing_application("audit"):  # one line and exit 1 if they raise or hang (svckit.appimport)
    from .restore import accept_restore
    from .settings import AuditSettings

if sys.argv[1:2] in (["verify"], ["export-checkpoints"]):
    with importing_application("audit"):
        from .offline import main

    raise SystemExit(main(sys.argv[1:]))

raise SystemExit(
    run_cli(
        name="audit",
        settings_cls=AuditSettings,
        app_factory="audit.app:create_app",
        schema="audit",
        migrations=Path(__file__).parent / "migrations",
        commands={"accept-restore": accept_restore},
    )
)
