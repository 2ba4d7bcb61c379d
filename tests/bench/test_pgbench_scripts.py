"""The benchmarks' pgbench peers run the services' own SQL: every statement of theirs, its parameters
bound to pgbench expressions, runs against a database migrated and seeded as the benchmark seeds it.
A statement that gains a parameter (approvals' pending insert gained ``approver_kind``, ``$10``) broke
``bench/approvals.py`` with a KeyError before any load, unnoticed until ``make bench``."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import api, approvals
from bench._backing import fresh_database

pytestmark = pytest.mark.skipif(shutil.which("pgbench") is None, reason="pgbench: make system-deps")

SEEDED = 64


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with fresh_database(f"tsp_test_pgbench_scripts_{uuid.uuid4().hex[:8]}") as url:
        asyncio.run(approvals.seed(url, SEEDED))
        yield url


def run(url: str, script: Path) -> None:
    text = script.read_text()
    assert re.search(r"\$\d", text) is None, text  # every parameter bound
    env = {**os.environ, "PGOPTIONS": "-c search_path=timesheets,public"}
    done = subprocess.run(
        ["pgbench", "-n", "-M", "prepared", "-t", "5", f"-f{script}", url],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "error" not in done.stderr.lower(), done.stderr[-2000:]


def test_the_approvals_scripts_run(database: str, tmp_path: Path) -> None:
    scripts = approvals.pgbench_scripts(tmp_path, SEEDED)
    for script in scripts.values():
        run(database, script)


def test_the_api_scripts_run(database: str, tmp_path: Path) -> None:
    for script in api.pgbench_scripts(tmp_path, approvals.ISSUER):
        run(database, script)
