"""Many runs of ``python -m <service> ...`` through one interpreter: what a test of a command line's
answers (exit code, stdout, stderr) costs without an interpreter start each (~1 s of CPU importing the
service, most of such a test's time).

:class:`CliHost` starts ``python -m testkit.clihost`` once; each :meth:`CliHost.run` hands it a
command line, an environment and what stdin holds, and gets back what ``subprocess.run`` would have
given. The host runs the command as ``python -m`` does (:func:`runpy.run_module` with
``run_name="__main__"``, ``sys.argv`` set), in an environment replaced by the one given, with stdin
holding the text given, file descriptors 1 and 2 redirected to files (what the command writes
through ``print``, its logging or straight to the descriptor) and ``SystemExit`` or an uncaught
exception turned into the exit code and stderr the interpreter would give them. The loggers' set-up
a run made (a service's command points the root logger at that run's stdout) is undone after it, so a
command that logs without setting logging up answers as in a fresh interpreter.

What a host does not show, and the tests keep real processes for: the interpreter's start (an import
that fails, a module that reads the environment when it is imported: the host has imported the
service already, with the first run's environment), an interactive terminal, signals, and a command
that leaves threads or processes behind. A test of a command line's wiring keeps one real
``python -m`` run per wiring; the host runs the corpus of cases through the same entry.
"""

from __future__ import annotations

import contextlib
import json
import locale
import logging
import os
import runpy
import select
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

REPO_ROOT = Path(__file__).resolve().parents[1]


def _exit_code(exc: SystemExit) -> int:
    """What the interpreter makes of a ``SystemExit`` that reaches it (a message: stderr, exit 1)."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _streams(encoding: str) -> tuple[IO[str], IO[str]]:
    """A run's own ``sys.stdout`` and ``sys.stderr`` on descriptors 1 and 2, as the interpreter makes
    them (a command may close them, as ``json.tool`` closes stdout: the host's stay open)."""
    stdout = open(1, "w", encoding=encoding, closefd=False)  # noqa: SIM115 (closed by _run_one)
    stderr = open(2, "w", buffering=1, encoding=encoding, errors="backslashreplace", closefd=False)  # noqa: SIM115
    return stdout, stderr


_LoggerState = tuple[logging.Logger, list[logging.Handler], int, bool, bool]


def _loggers() -> list[logging.Logger]:
    return [
        logging.root,
        *(x for x in logging.Logger.manager.loggerDict.values() if isinstance(x, logging.Logger)),
    ]


def _logging_state() -> list[_LoggerState]:
    """What a run may change of the logging set-up (a service's command points the root logger at
    its own stdout): the next run starts from the set-up a fresh interpreter has, not this one's."""
    return [(x, x.handlers[:], x.level, x.propagate, x.disabled) for x in _loggers()]


def _restore_logging(saved: list[_LoggerState], streams: tuple[IO[str], ...]) -> None:
    known = set()
    for logger, handlers, level, propagate, disabled in saved:
        logger.handlers[:] = handlers
        logger.level, logger.propagate, logger.disabled = level, propagate, disabled
        known.add(id(logger))
    for logger in _loggers():  # created by this run: what it writes to this run's streams goes
        if id(logger) not in known:
            logger.handlers[:] = [h for h in logger.handlers if getattr(h, "stream", None) not in streams]
    logging.root.setLevel(logging.root.level)  # drops the levels cached under the run's set-up


def _run_one(request: Mapping[str, Any]) -> dict[str, Any]:
    encoding = locale.getpreferredencoding(False)
    saved_logging = _logging_state()
    saved_env = dict(os.environ)
    saved_argv = sys.argv[:]
    saved = (sys.stdin, sys.stdout, sys.stderr)
    saved_fds = (os.dup(1), os.dup(2))
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.TemporaryFile(mode="w+", encoding=encoding) as stdin,
    ):
        stdin.write(request.get("stdin") or "")
        stdin.seek(0)
        for stream in saved[1:]:
            stream.flush()
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            sys.stdin = stdin
            sys.stdout, sys.stderr = _streams(encoding)
            os.environ.clear()
            os.environ.update(request["env"])
            sys.argv = [request["module"], *request["args"]]
            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            code = _exit_code(exc)
        except BaseException:  # what the interpreter would print before it exits with 1
            traceback.print_exc()
            code = 1
        finally:
            _restore_logging(saved_logging, (sys.stdout, sys.stderr))
            for stream in (sys.stdout, sys.stderr):
                if stream not in saved:
                    with contextlib.suppress(ValueError, OSError):  # closed by the command
                        stream.flush()
                    stream.close()
            os.dup2(saved_fds[0], 1)
            os.dup2(saved_fds[1], 2)
            for fd in saved_fds:
                os.close(fd)
            sys.stdin, sys.stdout, sys.stderr = saved
            os.environ.clear()
            os.environ.update(saved_env)
            sys.argv = saved_argv
        out.seek(0)
        err.seek(0)
        return {
            "returncode": code,
            "stdout": out.read().decode(encoding),
            "stderr": err.read().decode(encoding),
        }


def serve(requests: IO[str], replies: IO[str]) -> None:
    """Answer each request (a JSON line) with a JSON line, until the requests end."""
    for line in requests:
        replies.write(json.dumps(_run_one(json.loads(line))) + "\n")
        replies.flush()


class CliHost:
    """One host process, started at the first run (again after one that did not answer in time);
    :meth:`run` is safe from several threads (one run at a time)."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    def _started(self) -> subprocess.Popen[str]:
        if self._process is None or self._process.poll() is not None:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "testkit.clihost"],
                cwd=REPO_ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        return self._process

    def run(
        self,
        module: str,
        env: Mapping[str, str],
        *args: str,
        stdin: str | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """``python -m module args`` as ``subprocess.run(..., env=env, input=stdin,
        capture_output=True, text=True)`` would answer it."""
        request = {"module": module, "args": list(args), "env": dict(env), "stdin": stdin}
        with self._lock:
            process = self._started()
            assert process.stdin is not None
            assert process.stdout is not None
            process.stdin.write(json.dumps(request) + "\n")
            process.stdin.flush()
            ready, _, _ = select.select([process.stdout], [], [], timeout)
            if not ready:
                process.kill()
                process.wait()
                raise subprocess.TimeoutExpired([module, *args], timeout)
            line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"the command host ended (exit {process.wait()})")
        reply = json.loads(line)
        return subprocess.CompletedProcess(
            [module, *args], reply["returncode"], reply["stdout"], reply["stderr"]
        )

    def close(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def run_module(
    module: str,
    env: Mapping[str, str],
    *args: str,
    stdin: str | None = None,
    timeout: float = 60,
    host: CliHost | None = None,
) -> subprocess.CompletedProcess[str]:
    """``python -m module args`` with ``env``, from the repository's root: in ``host`` when one is
    given, else in an interpreter of its own (the one real run of a wiring, an interpreter's start
    counted, the host's answers compared with the real ones). Either way ``stdin`` ``None`` is an
    empty input, never the test process's own."""
    if host is not None:
        return host.run(module, env, *args, stdin=stdin, timeout=timeout)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env=dict(env),
        cwd=REPO_ROOT,
        input=stdin or "",
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def main() -> None:
    """The host's end: requests on stdin, replies on stdout; the commands get their own descriptors."""
    requests = os.fdopen(os.dup(0), "r", encoding="utf-8")
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)  # between runs, a stray write to descriptor 1 goes to stderr, not into the replies
    serve(requests, replies)


if __name__ == "__main__":
    main()
