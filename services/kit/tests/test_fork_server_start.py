"""A worker's module that cannot be imported by the supervisor's fork server (svckit.server.START_METHOD).

The fork server imports what the workers run before it forks the first one (svckit.preloading). Two
ways that went wrong, both with a module only the fork server imports (a worker's application module
here; for the gateway, whose supervisor imports its application first, uvicorn's and uvloop's modules):

* an import that *hangs* hung the fork server, and the supervisor with it — waiting for its first
  worker's pid before its watchdog ever ran, for as long as the pod's startup probe let it. Now the
  start is bounded by WORKER_START_SECONDS: one JSON line names the module being imported and the fork
  server's stack, the fork server is killed and the supervisor exits 1, as when a worker fails to start;
* an import *raising* anything but ImportError (RuntimeError, SyntaxError, ``sys.exit()``) ended the
  fork server with a traceback and the supervisor with another (``EOFError: unexpected EOF``); one
  raising ImportError (a dependency missing) was forgiven by the fork server, and every worker then
  died of it with a traceback and was replaced, again and again, for ever. Now each is the supervisor's
  one "a worker failed to start" line, naming the error and where it was raised, and exit 1.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit import workers
from testkit.fixtures import REPO_ROOT, free_port
from testkit.workers import Ending, fork_servers, only_line, process_group

#: the test's WORKER_START_SECONDS: longer than the fork server's imports with two CPU hogs on two cores
START_SECONDS = 10.0
#: how long a supervisor whose start fails may take to end (the fork server's imports, a worker's start)
ENDS_WITHIN = 60.0

#: the supervisor of a two-worker service whose application is the module ``forkedgeapp``
RUN = """
import sys
from svckit.logs import configure_logging
from svckit.server import ProblemHttpProtocol, ServingConfig, serve
configure_logging("forkedge", "WARNING")
config = ServingConfig(
    "forkedgeapp:create_app", factory=True, host="127.0.0.1", port=int(sys.argv[1]), workers=2,
    http=ProblemHttpProtocol, log_level="warning", worker_start_seconds=float(sys.argv[2]),
)
sys.exit(serve(config, 2))
"""

APP = """
from starlette.applications import Starlette

{failure}


def create_app() -> Starlette:
    return Starlette()
"""

FAILURES = {
    "RuntimeError": ('raise RuntimeError("no config at import")', "RuntimeError: no config at import", 4),
    "SyntaxError": ("def broken(:\n    pass", "SyntaxError: ", 4),
    "ImportError": ("import forkedge_missing_dependency", "No module named 'forkedge_missing_dependency'", 4),
    "SystemExit": ('import sys\nsys.exit("bad settings")', "SystemExit: bad settings", 5),
}


@contextlib.contextmanager
def supervisor(app_dir: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(app_dir), os.environ.get("PYTHONPATH", "")])}
    # its fork server and workers in its process group, killed with it
    argv = [sys.executable, "-c", RUN, str(free_port()), str(START_SECONDS)]
    with process_group(argv, env, REPO_ROOT) as process:
        yield process


def ended(process: subprocess.Popen[bytes]) -> Ending:
    """The supervisor's end (:func:`testkit.workers.ended`), waited for at most :data:`ENDS_WITHIN`."""
    return workers.ended(process, ENDS_WITHIN)


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_a_module_failing_at_import_is_a_worker_that_failed_to_start(tmp_path: Path, failure: str) -> None:
    code, error, line = FAILURES[failure]
    (tmp_path / "forkedgeapp.py").write_text(APP.format(failure=code))
    with supervisor(tmp_path) as process:
        record = only_line(ended(process), 1)
    assert record["msg"] == "a worker failed to start; stopping", record
    assert error in str(record["error"]), record
    assert f"forkedgeapp.py:{line}" in str(record["error"]), record


def test_an_import_hanging_in_the_fork_server_is_bounded_and_named(tmp_path: Path) -> None:
    (tmp_path / "forkedgeapp.py").write_text(APP.format(failure="import time\ntime.sleep(600)"))
    started = time.monotonic()
    with supervisor(tmp_path) as process:
        record = only_line(ended(process), 1)
    took = time.monotonic() - started
    assert str(record["msg"]).startswith("the fork server did not start a worker within WORKER_START"), record
    assert record["level"] == "error", record
    assert record["importing"] == "forkedgeapp", record
    assert "forkedgeapp" in record["modules"], record  # type: ignore[operator]
    assert record["bound_seconds"] == START_SECONDS, record
    assert START_SECONDS <= float(record["waited_seconds"]) < START_SECONDS + 5, record  # type: ignore[arg-type]
    assert 'forkedgeapp.py", line 5 in <module>' in str(record["stuck_at"]), record
    assert took < START_SECONDS + 30, took


def test_a_sigterm_while_the_fork_server_hangs_stops_the_supervisor_at_once(tmp_path: Path) -> None:
    """A stop (a rollout, a scale-down) before the first worker started: the supervisor, waiting for
    the fork server, ended only with the startup probe's SIGKILL; now it stops at once, exit 0."""
    (tmp_path / "forkedgeapp.py").write_text(APP.format(failure="import time\ntime.sleep(600)"))
    with supervisor(tmp_path) as process:
        deadline = time.monotonic() + START_SECONDS
        while not fork_servers(process.pid):  # it waits for the fork server's imports
            assert time.monotonic() < deadline, "no fork server"
            time.sleep(0.05)
        time.sleep(1.0)  # well into the imports: the hang, not the start of the interpreter
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        record = only_line(ended(process), 0)
        took = time.monotonic() - signalled
    assert str(record["msg"]).startswith("stopping while the fork server had not started a worker"), record
    assert record["level"] == "warning", record
    assert took < START_SECONDS, (took, record)  # not the bound's wait
