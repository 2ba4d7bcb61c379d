"""The SPA's own checks, so that `make test` and `.ci/run` include them: types, formatting, unit tests.

These need Node and npm (as `make dev` does, to build the SPA); they install from the lock file first.
Not under tests/browser/: they need neither the platform's fixed ports nor Chromium, so they are no
part of the browser tests' worker (testkit.xdistsched ``devstack-ports``) and run beside it.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from devstack.backing import npm_install_lock
from devstack.platform import ROOT

SPA = ROOT / "spa"

needs_npm = pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")


def npm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["npm", *args], cwd=SPA, capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def installed() -> None:
    lock = SPA / "package-lock.json"
    marker = SPA / "node_modules" / ".package-lock.json"
    with npm_install_lock(SPA):  # the browser tests' platform may be installing it on the other worker
        if not marker.exists() or marker.stat().st_mtime < lock.stat().st_mtime:
            result = npm("ci", "--no-audit", "--no-fund")
            assert result.returncode == 0, result.stdout + result.stderr


@needs_npm
@pytest.mark.usefixtures("installed")
def test_spa_types_and_formatting() -> None:
    result = npm("run", "lint")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_npm
@pytest.mark.usefixtures("installed")
def test_spa_unit_tests() -> None:
    result = npm("test")
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout
