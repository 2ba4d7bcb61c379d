"""The processes of a multi-worker service (``svckit.server.Supervisor``) as tests find them.

The supervisor's workers are forked by multiprocessing's fork server (``svckit.server.START_METHOD``),
a child of the supervisor: they are the fork server's children, the supervisor's grandchildren. The
supervisor's other child is multiprocessing's resource tracker.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import psutil
from svckit.collector import FORK_SERVER  # a fork server's command line, and so each of its workers'


def broken_copy(package: Path, into: Path, module: str, code: str) -> tuple[Path, int]:
    """A copy of ``package`` (a package's directory) under ``into`` with ``code`` appended to its
    ``module``: the copied module's path, and the line ``code`` begins at. ``into`` goes first on the
    ``PYTHONPATH`` of the process that is to import the broken copy instead of the package."""
    shutil.copytree(package, into / package.name, ignore=shutil.ignore_patterns("__pycache__"))
    source = into / package.name / f"{module}.py"
    text = source.read_text()
    if not text.endswith("\n"):
        text += "\n"
    source.write_text(text + code + "\n")
    return source, text.count("\n") + 1


@contextlib.contextmanager
def process_group(
    argv: Sequence[str], env: Mapping[str, str], cwd: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """``argv`` started in a session of its own, its output piped; at the end the whole group is
    killed (a supervisor's fork server and workers, a hung import's process) and reaped."""
    process = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def fork_servers(supervisor: int) -> list[psutil.Process]:
    """The supervisor's fork server (a list: none before its first worker starts, or once gone)."""
    found: list[psutil.Process] = []
    try:
        children = psutil.Process(supervisor).children()
    except psutil.Error:
        return found
    for child in children:
        try:
            if FORK_SERVER in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:  # gone, or a zombie not reaped yet
            pass
    return found


def worker_pids(supervisor: int) -> set[int]:
    """The pids of the supervisor's live workers: its fork server's children, zombies left out."""
    pids = set()
    for server in fork_servers(supervisor):
        try:
            children = server.children()
        except psutil.Error:
            continue
        for child in children:
            try:
                if child.status() != psutil.STATUS_ZOMBIE:
                    pids.add(child.pid)
            except psutil.Error:
                pass
    return pids


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process under it (the supervisor, its fork server, its workers, its resource
    tracker): what a container holds."""
    try:
        return [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]
    except psutil.Error:
        return [pid]


def gone(pids: list[int]) -> bool:
    """Whether none of ``pids`` runs any more (a zombie is gone: its parent has not reaped it yet)."""
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            pass
    return True


#: what :func:`ended` returns: exit code, JSON lines, stderr, the pids left of the process tree
Ending = tuple[int, list[dict[str, object]], str, list[int]]


def ended(process: subprocess.Popen[bytes], within: float) -> Ending:
    """Wait at most ``within`` seconds for the end of ``process`` (a service's entry point, a
    supervisor: started in a session of its own, its stdout and stderr piped): its exit code, its JSON
    lines, its stderr, and what of its process tree outlived it (a fork server, workers: none may)."""
    deadline = time.monotonic() + within
    tree: list[int] = []
    while process.poll() is None:
        tree = process_tree(process.pid)[1:]
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            raise AssertionError(f"the process did not end\n{stdout.decode()}\n{stderr.decode()}")
        time.sleep(0.1)
    stdout, stderr = process.communicate()
    lines = [json.loads(line) for line in stdout.decode().splitlines()]  # JSON lines only
    deadline = time.monotonic() + 10
    while not gone(tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    return process.returncode, lines, stderr.decode(), [pid for pid in tree if not gone([pid])]


def only_line(ending: Ending, exit_code: int) -> dict[str, object]:
    """The one JSON line of a process that ended (:func:`ended`) with ``exit_code``, nothing on stderr
    (no traceback) and nothing of its process tree left behind."""
    returncode, lines, stderr, left = ending
    everything = json.dumps(lines) + stderr
    assert returncode == exit_code, everything
    assert "Traceback" not in stderr, everything
    assert not left, everything
    assert len(lines) == 1, everything
    return lines[0]


def stopped_in_the_hang(
    process: subprocess.Popen[bytes], marker: Path, within: float
) -> tuple[dict[str, object], float]:
    """SIGTERM to ``process`` once its hanging import wrote ``marker`` (in the hang, not in the
    interpreter's start); its one line (exit 0) and how long it took after the signal."""
    deadline = time.monotonic() + within
    while not marker.exists():
        assert process.poll() is None, "the process ended before its import hung"
        assert time.monotonic() < deadline, "the import did not reach the hang"
        time.sleep(0.05)
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    record = only_line(ended(process, within), 0)
    return record, time.monotonic() - signalled


def assert_hung_import_line(
    record: dict[str, object], *, importing: str, bound: float, stuck_at: str
) -> None:
    """``record`` is the one line of an import that hung past its bound (``svckit.appimport``): an
    error naming the module, the bound, a wait within 5 s past it, and ``stuck_at`` (a ``file", line N
    in <module>`` of the hanging line) in its stack."""
    assert str(record["msg"]).startswith("the application's import did not end within WORKER_START"), record
    assert record["level"] == "error", record
    assert record["importing"] == importing, record
    assert record["bound_seconds"] == bound, record
    assert bound <= float(record["waited_seconds"]) < bound + 5, record  # type: ignore[arg-type]
    assert stuck_at in str(record["stuck_at"]), record
