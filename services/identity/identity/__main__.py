"""``python -m identity [serve|migrate|seed|rotate-keys|add-user|add-client|after-restore|
rotate-client-secret|retire-client-secret|outbox accept-audit-restore]``."""

from __future__ import annotations

from svckit.collector import collect_rarely

collect_rarely()  # before the service's imports (svckit.collector)

import sys
from pathlib import Path

from svckit.appimport import importing_application
from svckit.cli import run_cli
from svckit.receipts import outbox_command

with importing_application("identity"):  # one line and exit 1 if they raise or hang (svckit.appimport)
    from .admin import add_client, add_user, after_restore, retire_client_secret, rotate, rotate_client_secret
    from .seed import seed
    from .settings import IdentitySettings


def main() -> int:
    return run_cli(
        name="identity",
        settings_cls=IdentitySettings,
        app_factory="identity.app:create_app",
        schema="identity",
        migrations=Path(__file__).parent / "migrations",
        commands={
            "seed": seed,
            "rotate-keys": rotate,
            "add-user": add_user,
            "add-client": add_client,
            "after-restore": after_restore,
            "rotate-client-secret": rotate_client_secret,
            "retire-client-secret": retire_client_secret,
            "outbox": outbox_command("identity"),
        },
    )


if __name__ == "__main__":
    sys.exit(main())
