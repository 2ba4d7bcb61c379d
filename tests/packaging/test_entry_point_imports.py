"""``python -m <component>`` whose own modules cannot be imported: one JSON line and exit 1.

Each entry point imports code of its own before it serves or runs a command: its settings, its
commands' modules (identity's administration, approvals' reapply, audit's restore). A module of them
raising at import ended the process with a raw Python traceback in the pod's or the Job's log; now it
is the line of ``svckit.appimport`` (as the gateway's entry point, whose tests cover the hang and the
SIGTERM of the same guard: ``services/gateway/tests/test_application_import.py``). Each component here
runs from a copy of its package, its ``settings.py`` broken, first on the ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from testkit.fixtures import REPO_ROOT
from testkit.workers import broken_copy, ended, only_line, process_group

COMPONENTS = ("approvals", "audit", "identity", "timesheets")


@pytest.mark.parametrize("component", COMPONENTS)
def test_a_component_whose_settings_module_raises_at_import_says_so_in_one_line(
    tmp_path: Path, component: str
) -> None:
    package = REPO_ROOT / "services" / component / component
    settings, line = broken_copy(package, tmp_path, "settings", 'raise RuntimeError("no config")')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    with process_group([sys.executable, "-m", component], env, REPO_ROOT) as process:
        record = only_line(ended(process, 60), 1)
    assert record["msg"] == "the application failed to import; stopping", record
    assert record["service"] == component, record
    assert f"RuntimeError: no config (at {settings}:{line} in <module>)" == record["error"], record
    assert record["importing"] == f"{component}.settings", record
