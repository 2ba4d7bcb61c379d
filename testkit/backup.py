"""Backing up and restoring one service's schema the way docs/runbook.md ("Backup and restore") says.

The commands are Postgres's own client tools (Debian's ``postgresql-client``), run exactly as an
operator would: one logical dump per schema, restored over the live schema in one transaction. The
tests of tests/restore use nothing else to go back in time, so the runbook's procedure is the one
that is tested.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed (Debian: apt-get install postgresql-client)")
    return found


def dump_schema(database_url: str, schema: str, path: Path) -> Path:
    """``pg_dump --format=custom --schema=<schema> --file=<path> "$DATABASE_URL"``."""
    subprocess.run(
        [_tool("pg_dump"), "--format=custom", f"--schema={schema}", f"--file={path}", database_url],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return path


def restore_schema(database_url: str, path: Path) -> None:
    """``pg_restore --clean --if-exists --single-transaction --dbname="$DATABASE_URL" <path>``: the
    schema as it was at the dump, in one transaction (a failed restore leaves the schema untouched)."""
    result = subprocess.run(
        [
            _tool("pg_restore"),
            "--clean",
            "--if-exists",
            "--single-transaction",
            f"--dbname={database_url}",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"pg_restore failed ({result.returncode}):\n{result.stderr[-3000:]}")


def service_command(service: str, env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m <service> <args>`` with ``env`` (a service's own, as its pods have it)."""
    return subprocess.run(
        [sys.executable, "-m", service, *args],
        env={**os.environ, **env},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
