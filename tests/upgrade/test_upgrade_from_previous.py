"""Upgrading FROM the previous release: `helm upgrade` runs the current migrations (the pre-upgrade
Job) on a database the previous release migrated and used, and then the previous pods and the new ones
serve side by side on it (docs/upgrades.md).

``test_previous_release.py`` migrates a *fresh* database with the current code and runs the previous
services on it: that is a rollback after a fresh install. This module starts where a real deployment
is: the database as the previous release's own ``migrate`` left it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from testkit.fixtures import IsolatedEnv, migrate_role_env, new_identity_keys

from .test_previous_release import REPO, SERVICES, previous_release, previous_tree

__all__ = ["previous_tree"]  # the fixture, shared with test_previous_release

pytestmark = pytest.mark.e2e


def run_migrate(
    service: str, env: dict[str, str], pythonpath: str | None = None
) -> subprocess.CompletedProcess[str]:
    extra = {"PYTHONPATH": pythonpath} if pythonpath is not None else {}
    return subprocess.run(
        [sys.executable, "-m", service, "migrate"],
        env={**os.environ, **env, **extra},
        cwd=REPO if pythonpath is None else "/",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_current_migrations_run_on_a_database_the_previous_release_migrated(
    previous_tree: Path, isolated_env: IsolatedEnv
) -> None:
    """The pre-upgrade migration Job of `helm upgrade` from the previous release: the previous code's
    `migrate` built the schemas (as its own Job did at install), the current code's `migrate` must take
    them forward. A failing Job aborts the upgrade: no new release can be installed over the old one."""
    env = {**isolated_env("upfromprev"), "IDENTITY_KEYS": new_identity_keys("k1")}
    for service in SERVICES:
        old = os.pathsep.join(
            [str(previous_tree / "services" / "kit"), str(previous_tree / "services" / service)]
        )
        result = run_migrate(service, env, old)
        assert result.returncode == 0, f"previous release {previous_release()}: {result.stderr}"
    failures = {}
    for service in SERVICES:
        result = run_migrate(service, {**env, **migrate_role_env(service)})
        if result.returncode != 0:
            failures[service] = result.stderr.strip().splitlines()[-1:]
    assert failures == {}
