"""``python -m gateway`` whose own code cannot be imported: one JSON line and exit 1, never a traceback.

The gateway's entry point imports its whole application itself, for its configuration check, before
any worker or fork server exists (``gateway/__main__.py``). There, an exception at import was a raw
Python traceback in the pod's log (``sys.exit("...")`` a line of plain text), and an import that hung
held the process, silent, until the kubelet's startup probe killed it; a SIGTERM meanwhile killed it
by the signal (exit 143). Now each is one line (svckit.appimport): the error, where it was raised and
the module, exit 1; the module and the hanging line after WORKER_START_SECONDS, exit 1; a SIGTERM
stops it at once, exit 0.

Each test runs the real entry point on a copy of the gateway's package, one of its modules broken,
first on the ``PYTHONPATH`` — as a bad build or a bad patch would ship it — with two workers, as in
production (the supervisor's case).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import gateway
import pytest

from testkit import workers
from testkit.fixtures import REPO_ROOT, free_port
from testkit.workers import assert_hung_import_line, ended, only_line, process_group, stopped_in_the_hang

#: the test's WORKER_START_SECONDS: longer than the gateway's imports with two CPU hogs on two cores
START_SECONDS = 10.0
#: how long a gateway whose start fails may take to end
ENDS_WITHIN = 60.0

#: appended to one module of the copy: (module, code, the error's text, the line of ``code`` raising it)
FAILURES = {
    "RuntimeError": ("routes", 'raise RuntimeError("no config")', "RuntimeError: no config", 1),
    "SyntaxError": ("spa", "def broken(:\n    pass", "SyntaxError: ", 1),
    "ImportError": ("tokens", "import gateway_missing_dep", "No module named 'gateway_missing_dep'", 1),
    "SystemExit": ("settings", 'import sys\nsys.exit("bad settings")', "SystemExit: bad settings", 2),
}


def broken_copy(tmp_path: Path, module: str, code: str) -> tuple[Path, int]:
    """A copy of the gateway's package under ``tmp_path`` with ``code`` appended to ``module``: the
    directory to put first on the ``PYTHONPATH``, and the line ``code`` begins at."""
    _, line = workers.broken_copy(Path(gateway.__file__).parent, tmp_path, module, code)
    return tmp_path, line


@contextlib.contextmanager
def gateway_process(path: Path, identity_keys: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        **identity_keys,
        "PYTHONPATH": os.pathsep.join([str(path), os.environ.get("PYTHONPATH", "")]),
        "GATEWAY_WORKERS": "2",
        "WORKER_START_SECONDS": str(START_SECONDS),
        "BIND_HOST": "127.0.0.1",
        "PORT": str(free_port()),
        "METRICS_PORT": str(free_port()),
        "PROMETHEUS_MULTIPROC_DIR": str(path / "metrics"),
    }
    (path / "metrics").mkdir()
    with process_group([sys.executable, "-m", "gateway"], env, REPO_ROOT) as process:
        yield process


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_the_gateways_own_code_failing_at_import_is_one_line(
    tmp_path: Path, identity_keys: dict[str, str], failure: str
) -> None:
    module, code, error, from_start = FAILURES[failure]
    path, line = broken_copy(tmp_path, module, code)
    with gateway_process(path, identity_keys) as process:
        record = only_line(ended(process, ENDS_WITHIN), 1)
    assert record["msg"] == "the application failed to import; stopping", record
    assert record["level"] == "error", record
    assert record["service"] == "gateway", record
    assert error in str(record["error"]), record
    assert f"{path}/gateway/{module}.py:{line + from_start - 1}" in str(record["error"]), record
    assert record["importing"] == f"gateway.{module}", record
    assert record["imports"][0] == "gateway.app", record  # type: ignore[index]  # the entry point's first
    assert record["imports"][-1] == f"gateway.{module}", record  # type: ignore[index]


#: appended to a module of the copy: says it is in the hang (a file beside the copy), then hangs
HANG = "import pathlib, time\n(pathlib.Path(__file__).parents[1] / 'hanging').touch()\ntime.sleep(600)"


def test_an_import_hanging_in_the_gateways_own_code_is_bounded_and_named(
    tmp_path: Path, identity_keys: dict[str, str]
) -> None:
    path, line = broken_copy(tmp_path, "jwks", HANG)
    started = time.monotonic()
    with gateway_process(path, identity_keys) as process:
        record = only_line(ended(process, ENDS_WITHIN), 1)
    took = time.monotonic() - started
    assert_hung_import_line(
        record,
        importing="gateway.jwks",
        bound=START_SECONDS,
        stuck_at=f'{path}/gateway/jwks.py", line {line + 2} in <module>',
    )
    assert took < START_SECONDS + 30, took


def test_a_sigterm_while_the_gateways_import_hangs_stops_it_at_once(
    tmp_path: Path, identity_keys: dict[str, str]
) -> None:
    """A stop (a rollout, a scale-down) while the import hangs: the signal killed the process (exit
    143, nothing said); now it stops at once, exit 0, saying where the import was."""
    path, line = broken_copy(tmp_path, "jwks", HANG)
    with gateway_process(path, identity_keys) as process:
        record, took = stopped_in_the_hang(process, path / "hanging", ENDS_WITHIN)
    assert record["msg"] == "stopping while importing the application", record
    assert record["level"] == "warning", record
    assert record["importing"] == "gateway.jwks", record
    assert f'{path}/gateway/jwks.py", line {line + 2} in <module>' in str(record["stuck_at"]), record
    assert took < START_SECONDS / 2, (took, record)  # not the bound's wait
