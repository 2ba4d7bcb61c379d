"""A service started before its database login works: what it says, and that it gets there by itself.

The chart and ``make dev`` start each service as its runtime role, which ``python -m <service>
migrate`` creates (svckit.roles); a Deployment's pods may well start before the migration Job has
created the role or the database, or while a rotated password has not reached the role yet. The
service must then stay alive, not ready, say why in its log, and become ready once the login works —
as it does when Postgres itself is late (test_database.test_readiness_follows_postgres).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from svckit.app import create_service_app
from svckit.db import Database
from svckit.settings import ServiceSettings, load_settings

from testkit.clihost import CliHost
from testkit.fixtures import receiver_env, serve_app

from .test_database import wait_for_status


def as_role(database_url: str, role: str) -> str:
    parts = urlsplit(database_url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{role}:not-yet@{host}"))


async def test_a_login_refused_at_start_is_logged_and_retried_until_it_works(
    database_url: str, identity_keys: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """A refused login (SQLSTATE class 28: the role does not exist yet, a wrong password) is not in
    ``svckit.db.UNAVAILABLE_ERRORS``, so it ends the pool's connecting task for good: the service stays
    up and not ready (``/readyz``: "not connected yet") until someone restarts it, and no line of its
    log says why (the task's exception is never retrieved)."""
    role = f"tsp_late_{uuid.uuid4().hex[:10]}"
    database = Database(as_role(database_url, role), schema="public", max_backoff=0.5)
    settings = load_settings(ServiceSettings, env=receiver_env(identity_keys))
    app = create_service_app(settings, [], database=database)
    admin = await asyncpg.connect(database_url)
    try:
        with caplog.at_level(logging.INFO, logger="svckit.db"):
            async with serve_app(app) as base:
                body = await wait_for_status(base + "/readyz", 503)
                assert body["failed"] == ["postgres"]
                await asyncio.sleep(1.0)  # a few attempts
                said = [record for record in caplog.records if record.name == "svckit.db"]
                assert said, "nothing in the log says why the service is not ready"
                assert "not-yet" not in caplog.text  # the password never
                # the migration Job creates the role: the service connects by itself
                await admin.execute(f"CREATE ROLE {role} LOGIN")
                name = await admin.fetchval("SELECT current_database()")
                await admin.execute(f'GRANT CONNECT ON DATABASE "{name}" TO {role}')
                await wait_for_status(base + "/readyz", 200, timeout=15.0)
    finally:
        await database.close()
        if await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
            name = await admin.fetchval("SELECT current_database()")
            await admin.execute(f'REVOKE ALL ON DATABASE "{name}" FROM {role}')
            await admin.execute(f"DROP ROLE {role}")
        await admin.close()


@pytest.mark.parametrize("refused", ["login", "database"])
def test_a_migration_refused_at_login_fails_with_one_line(
    database_url: str, refused: str, cli_host: CliHost
) -> None:
    """``python -m <service> migrate`` (the chart's migration Job) whose login is refused (the role
    is unknown: SQLSTATE 28000) or whose database does not exist (3D000) says so in one line and
    exits 1, without a traceback and without the URL's password. The refused login runs as a real
    process, the missing database in the session's command host (nothing is migrated either way)."""
    import os
    import subprocess
    import sys

    from testkit.fixtures import new_pair_keys

    url = as_role(database_url, f"tsp_nobody_{uuid.uuid4().hex[:8]}")
    if refused == "database":
        url = urlunsplit(urlsplit(database_url)._replace(path=f"/tsp_missing_{uuid.uuid4().hex[:8]}"))
    env = {**os.environ, **new_pair_keys(), "DATABASE_URL": url}
    if refused == "database":
        result = cli_host.run("timesheets", env, "migrate")
    else:
        result = subprocess.run(
            [sys.executable, "-m", "timesheets", "migrate"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert "not-yet" not in result.stderr + result.stdout
    sqlstate = "28000" if refused == "login" else "3D000"
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("migration failed: the database refused the connection"), line
    assert f"SQLSTATE {sqlstate}" in line
