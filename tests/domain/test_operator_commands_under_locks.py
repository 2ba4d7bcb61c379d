"""Operator commands while another session holds the table they write (an operator's ``LOCK TABLE``
in a transaction left open, a stuck session).

``python -m identity add-user`` used a connection of its own with neither a lock bound nor a statement
bound: it waited, silent, for as long as the lock was held (forever, for a forgotten ``psql``). ``python
-m timesheets outbox accept-audit-restore`` goes through the kit's pool, bounded by
``DB_LOCK_TIMEOUT_SECONDS``, and said "database unreachable: LockNotAvailableError" — the wrong remedy
(the database is fine). ``python -m audit export-checkpoints`` (and ``verify``, the same connection)
had no lock bound: behind a held table it waited the 30 s statement bound, then said "database
unreachable or refusing (TimeoutError)". Now each gives up after the lock bound with one line naming
the held lock and what to do, no traceback, a non-zero exit, and nothing changed; run again once the
lock is gone, it succeeds.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import time
from pathlib import Path

import asyncpg
import pytest

from testkit.clihost import CliHost, run_module
from testkit.fixtures import IsolatedEnv, migrate_schema, runtime_url

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
#: the services' DB_LOCK_TIMEOUT_SECONDS (its default: the migration bound must stay below it)
LOCK_S = 2.0
#: what a refused command may take beyond the lock bound: its interpreter's start-up and imports on a
#: loaded machine (12.9 s in all beside two CPU hogs, 10.1 s once on a busy CI host). Still well short
#: of what this catches: a command that waits for the 30 s statement bound, or for ever.
SLACK_S = 15.0


def command(
    package: str, env: dict[str, str], *args: str, stdin: str = ""
) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.monotonic()
    # a command that waits for the lock for ever is the failure the 30 s catches
    result = run_module(package, env, *args, stdin=stdin, timeout=30)
    return time.monotonic() - start, result


class HeldTable:
    """A session that took ``LOCK TABLE <table> IN ACCESS EXCLUSIVE MODE`` and idles in its transaction."""

    def __init__(self, dsn: str, table: str) -> None:
        self.dsn, self.table = dsn, table

    async def __aenter__(self) -> HeldTable:
        self.conn = await asyncpg.connect(self.dsn, server_settings={"application_name": "operator psql"})
        await self.conn.execute("BEGIN")
        await self.conn.execute(f"LOCK TABLE {self.table} IN ACCESS EXCLUSIVE MODE")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.conn.close()


def assert_refused_for_the_lock(took: float, result: subprocess.CompletedProcess[str], table: str) -> None:
    assert result.returncode not in (0, None), result
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if "LockNotAvailable" in line]
    assert len(lines) == 1, result.stderr
    assert "held by another session" in lines[0], lines[0]
    assert "unreachable" not in lines[0], lines[0]
    assert "run the command again" in lines[0], lines[0]
    assert took < LOCK_S + SLACK_S, (took, table)


@pytest.fixture
def identity_db(isolated_env: IsolatedEnv) -> tuple[str, dict[str, str]]:
    env = isolated_env("cli_lock_identity")
    owner = env["DATABASE_URL"]
    asyncio.run(migrate_schema(owner, "identity", ROOT / "services" / "identity" / "identity"))
    return owner, {
        **os.environ,
        **env,
        "DATABASE_URL": runtime_url(owner, "identity"),
        "IDENTITY_ISSUER": "http://localhost:9000/",
        "IDENTITY_KEY_ENCRYPTION_KEY": secrets.token_urlsafe(32),
        "IDENTITY_SESSION_SECRET": secrets.token_urlsafe(32),
    }


def test_identity_add_user_behind_a_held_table_says_so(
    identity_db: tuple[str, dict[str, str]], cli_host: CliHost
) -> None:
    owner, env = identity_db
    args = ("add-user", "locky", "--name", "Locky", "--email", "locky@example.com", "--role", "employee")

    async def held() -> tuple[float, subprocess.CompletedProcess[str]]:
        async with HeldTable(owner, "identity.users"):
            return await asyncio.to_thread(command, "identity", env, *args, stdin="locky-password\n")

    took, result = asyncio.run(held())
    assert_refused_for_the_lock(took, result, "identity.users")
    # the lock gone, the same command works: in the command host (the refused run above is this
    # wiring's real process, its interpreter start included in the bound)
    result = cli_host.run("identity", env, *args, stdin="locky-password\n", timeout=30)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def timesheets_db(isolated_env: IsolatedEnv) -> tuple[str, dict[str, str]]:
    env = isolated_env("cli_lock_timesheets")
    owner = env["DATABASE_URL"]
    asyncio.run(migrate_schema(owner, "timesheets", ROOT / "services" / "timesheets" / "timesheets"))
    return owner, {
        **os.environ,
        **env,
        "DATABASE_URL": runtime_url(owner, "timesheets"),
        "AUDIT_URL": "http://127.0.0.1:9",
    }


def test_timesheets_outbox_command_behind_a_held_table_says_so(
    timesheets_db: tuple[str, dict[str, str]], cli_host: CliHost
) -> None:
    owner, env = timesheets_db
    args = ("outbox", "accept-audit-restore", "--reason", "INC-42 lock test")

    async def held() -> tuple[float, subprocess.CompletedProcess[str]]:
        async with HeldTable(owner, "timesheets.outbox_receipt"):
            return await asyncio.to_thread(command, "timesheets", env, *args)

    took, result = asyncio.run(held())
    assert_refused_for_the_lock(took, result, "timesheets.outbox_receipt")
    result = cli_host.run("timesheets", env, *args, timeout=30)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def audit_db(isolated_env: IsolatedEnv) -> tuple[str, dict[str, str]]:
    env = isolated_env("cli_lock_audit")
    owner = env["DATABASE_URL"]
    asyncio.run(migrate_schema(owner, "audit", ROOT / "services" / "audit" / "audit"))
    return owner, {**os.environ, **env, "DATABASE_URL": runtime_url(owner, "audit")}


def test_audit_offline_command_behind_a_held_table_says_so(
    audit_db: tuple[str, dict[str, str]], cli_host: CliHost
) -> None:
    """What an auditor runs against the database: it reads, so only an ACCESS EXCLUSIVE lock (an
    operator's, a migration's) holds it up — and then it is told so within the lock bound."""
    owner, env = audit_db

    async def held() -> tuple[float, subprocess.CompletedProcess[str]]:
        async with HeldTable(owner, "audit.checkpoints"):
            return await asyncio.to_thread(command, "audit", env, "export-checkpoints")

    took, result = asyncio.run(held())
    assert_refused_for_the_lock(took, result, "audit.checkpoints")
    result = cli_host.run("audit", env, "export-checkpoints", timeout=30)
    assert result.returncode == 0, result.stderr
