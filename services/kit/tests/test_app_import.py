"""A single-process service whose application cannot be imported: one JSON line, never a traceback.

Every service but the gateway serves in one process (``svckit.cli.run_cli`` → ``svckit.server.serve``
with one worker), and the gateway does too by default (GATEWAY_WORKERS 1): no supervisor, no fork
server, uvicorn imports the application's module in the serving process itself. There, an exception at
import was a raw Python traceback (``sys.exit("...")`` a line of plain text), and an import that hung
held the process, silent, until the kubelet's startup probe killed it; a SIGTERM meanwhile killed it by
the signal (exit 143). Now the import is bounded and reported as the gateway's own (svckit.appimport):
one line with the error, where it was raised and the module, exit 1; after WORKER_START_SECONDS one
line with the module and the hanging line, exit 1; on SIGTERM one line, exit 0, at once.

The service here is ``run_cli`` as every entry point calls it, with the kit's own settings and an
application module in the test's tmp path.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.fixtures import REPO_ROOT, free_port
from testkit.workers import assert_hung_import_line, ended, only_line, process_group, stopped_in_the_hang

from .test_fork_server_start import APP, FAILURES

#: the test's WORKER_START_SECONDS: longer than the service's imports with two CPU hogs on two cores
START_SECONDS = 10.0
#: how long a service whose start fails may take to end
ENDS_WITHIN = 60.0

#: a service's entry point (``python -m <service>``) serving the application module ``appedgeapp``
RUN = """
from svckit.cli import run_cli
from svckit.settings import ServiceSettings
raise SystemExit(run_cli(name="appedge", settings_cls=ServiceSettings, app_factory="appedgeapp:create_app"))
"""


@contextlib.contextmanager
def service(app_dir: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(app_dir), os.environ.get("PYTHONPATH", "")]),
        "BIND_HOST": "127.0.0.1",
        "PORT": str(free_port()),
        "METRICS_PORT": str(free_port()),
        "WORKER_START_SECONDS": str(START_SECONDS),
        "LOG_LEVEL": "WARNING",
    }
    with process_group([sys.executable, "-c", RUN], env, REPO_ROOT) as process:
        yield process


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_an_application_failing_at_import_is_one_line(tmp_path: Path, failure: str) -> None:
    code, error, line = FAILURES[failure]
    (tmp_path / "appedgeapp.py").write_text(APP.format(failure=code))
    with service(tmp_path) as process:
        record = only_line(ended(process, ENDS_WITHIN), 1)
    assert record["msg"] == "the application failed to import; stopping", record
    assert record["level"] == "error", record
    assert error in str(record["error"]), record
    assert f"{tmp_path}/appedgeapp.py:{line}" in str(record["error"]), record
    assert record["importing"] == "appedgeapp", record


def test_a_secret_in_the_import_error_is_not_in_the_line(tmp_path: Path) -> None:
    """The error's message is the application's: the kit's log scrubbing applies to it, as to any line."""
    failure = 'raise RuntimeError("cannot reach postgresql://app:s3cr3t-pw@db/app password=hunter2")'
    (tmp_path / "appedgeapp.py").write_text(APP.format(failure=failure))
    with service(tmp_path) as process:
        ending = ended(process, ENDS_WITHIN)
        record = only_line(ending, 1)
    assert "cannot reach postgresql://app:" in str(record["error"]), record
    assert "s3cr3t-pw" not in json.dumps(ending[1]) + ending[2], ending
    assert "hunter2" not in json.dumps(ending[1]) + ending[2], ending


#: says it is in the hang (a file beside the module), then hangs (line 6 of the module)
HANG = "import pathlib, time\n(pathlib.Path(__file__).parent / 'hanging').touch()\ntime.sleep(600)"


def test_an_import_hanging_is_bounded_and_named(tmp_path: Path) -> None:
    (tmp_path / "appedgeapp.py").write_text(APP.format(failure=HANG))
    started = time.monotonic()
    with service(tmp_path) as process:
        record = only_line(ended(process, ENDS_WITHIN), 1)
    took = time.monotonic() - started
    assert_hung_import_line(
        record,
        importing="appedgeapp",
        bound=START_SECONDS,
        stuck_at=f'{tmp_path}/appedgeapp.py", line 6 in <module>',
    )
    assert took < START_SECONDS + 30, took


def test_a_sigterm_while_the_import_hangs_stops_the_service_at_once(tmp_path: Path) -> None:
    (tmp_path / "appedgeapp.py").write_text(APP.format(failure=HANG))
    with service(tmp_path) as process:
        record, took = stopped_in_the_hang(process, tmp_path / "hanging", ENDS_WITHIN)
    assert record["msg"] == "stopping while importing the application", record
    assert record["level"] == "warning", record
    assert record["importing"] == "appedgeapp", record
    assert f'{tmp_path}/appedgeapp.py", line 6 in <module>' in str(record["stuck_at"]), record
    assert took < START_SECONDS / 2, (took, record)  # not the bound's wait
