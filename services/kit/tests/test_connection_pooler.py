"""A PgBouncer between the services and PostgreSQL, as docs/runbook.md once advised for a server out
of connection slots ("put a pooler (PgBouncer in transaction mode) in front").

Reproduced: every connection the kit opens sends its session settings at start-up (``search_path``,
``lock_timeout``, ``idle_in_transaction_session_timeout``: no round trip, :mod:`svckit.db`), and
PgBouncer — in any ``pool_mode`` — refuses a start-up parameter it does not know: no connection ever
opened, ``/readyz`` said ``failed: ProtocolViolationError`` and ``migrate`` retried for its whole wait
as if the server were late. Beyond the start-up, a transaction pooler also breaks what the kit relies
on per session (prepared statements, the outbox relays' ``LISTEN``, the backend pid by which a lost
commit's outcome is resolved), so the runbook no longer advises one; what is tested here is that such
a set-up is named for what it is, in ``/readyz`` and in one line from ``migrate``, at once.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from svckit.db import Database

from testkit import pgbouncer
from testkit.fixtures import ServiceProcess, new_pair_keys

from .test_database_tls import postgres_check

KEYS = new_pair_keys()
REFUSAL = (
    "a connection pooler refused the session's settings (unsupported startup parameter: search_path): "
    'the services connect to PostgreSQL directly, not through PgBouncer (docs/runbook.md, "Connection '
    'poolers")'
)


@pytest.fixture(scope="module")
def bouncer(database_url: str) -> Iterator[pgbouncer.PgBouncer]:
    if not pgbouncer.available():
        pytest.skip("no pgbouncer binary (make system-deps installs it)")
    with pgbouncer.PgBouncer(database_url, pool_mode="session") as running:
        yield running


async def test_the_pool_names_the_pooler_that_refuses_its_settings(bouncer: pgbouncer.PgBouncer) -> None:
    database = Database(bouncer.url(), schema="timesheets", lock_timeout=2.0)
    database.start()
    try:
        deadline = time.monotonic() + 10
        while database.last_error == "not connected yet" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not database.connected
        assert database.last_error == REFUSAL
    finally:
        await database.close()
    assert "unsupported startup parameter" in bouncer.logs()  # the refusal is PgBouncer's, not a guess


def test_readyz_and_operator_commands_say_so(bouncer: pgbouncer.PgBouncer) -> None:
    env = {**KEYS, "DATABASE_URL": bouncer.url(), "DB_CONNECT_TIMEOUT_SECONDS": "2"}
    started = time.monotonic()
    command = subprocess.run(
        [sys.executable, "-m", "timesheets", "outbox", "accept-audit-restore", "--reason", "test"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert time.monotonic() - started < 20
    assert command.returncode == 3  # the database unreachable (receipts.outbox_command)
    # before: "database unreachable: TimeoutError", the reason only in the retry warnings on stdout
    assert command.stderr.strip().splitlines() == [f"database unreachable: {REFUSAL}"]
    with ServiceProcess("audit", env) as service:
        assert postgres_check(service.url, "pooler") == (503, f"failed: {REFUSAL}")
