"""What a supervisor's fork server imports (:data:`svckit.server.START_METHOD`): the workers' modules
(:func:`svckit.server.worker_modules`, named in :data:`MODULES_ENV`), each whatever its import does,
saying in the supervisor's report file which one it is importing.

multiprocessing's fork server imports its preload itself and forgives only :class:`ImportError`: a
module raising anything else at import (a ``RuntimeError``, a ``SyntaxError``, ``sys.exit()``) ended
the fork server with a traceback of its own, and the supervisor, whose first worker's start read the
fork server's end as an ``EOFError``, with another. Here such a module is left out as an
:class:`ImportError` is: a worker imports it again when it loads its application, fails the same way
and says so (:func:`svckit.server._run_worker`), and the supervisor stops with one clear line, as for
any worker that cannot start.

An import that hangs hung the fork server — and the supervisor, waiting for its first worker's pid,
before its watchdog ever ran. The supervisor now bounds every worker's start (WORKER_START_SECONDS):
so that its line can say *what* it waited for, this module writes into the supervisor's report file
(:data:`REPORT_ENV`: a path to the supervisor's descriptor of an unnamed file, ``/proc/<pid>/fd/<n>``)
the name of each module before it imports it, and dumps its stacks there on the watchdog's signal
(:data:`svckit.stacks.DUMP_SIGNAL`), as a worker does. Both are undone once the imports are done: the
workers, forked later, inherit neither the handler nor the descriptor.

Nothing happens where this module is imported by anything but a fork server.
"""

from __future__ import annotations

import contextlib
import faulthandler
import importlib
import json
import os
import signal
import threading

from .collector import in_fork_server
from .stacks import DUMP_SIGNAL, READY

#: the environment variable naming the modules the fork server imports (a JSON list), set by the supervisor
MODULES_ENV = "SVCKIT_FORK_SERVER_MODULES"
#: the environment variable naming the supervisor's report file for its fork server
REPORT_ENV = "SVCKIT_FORK_SERVER_REPORT"
#: the line written before each import
IMPORTING = "svckit: importing {name}\n"
IMPORTING_PREFIX = IMPORTING.split("{", 1)[0].encode()
#: the line written once every import is done
IMPORTED = "svckit: imported\n"


def importing(report: bytes) -> str | None:
    """The module a fork server was importing last, as its report says (``None``: none, or all done)."""
    last = None
    for line in report.splitlines(keepends=True):
        if line.startswith(IMPORTING_PREFIX):
            last = line[len(IMPORTING_PREFIX) :].decode(errors="replace").strip()
        elif line == IMPORTED.encode():
            last = None
    return last


def _open_report() -> int | None:
    path = os.environ.get(REPORT_ENV)
    if not path:
        return None
    try:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    except OSError:
        return None  # not Linux, or no /proc: the supervisor's line then only names the modules


def _write(fd: int | None, line: str) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.write(fd, line.encode())


def preload(modules: list[str]) -> None:
    """Import ``modules`` in order, each whatever its import raises, reporting as it goes."""
    fd = _open_report()
    stream = None
    if fd is not None:
        stream = os.fdopen(fd, "ab", buffering=0)
        faulthandler.register(DUMP_SIGNAL, file=stream, all_threads=True)
        _write(fd, READY.format(ident=threading.get_ident()))
    try:
        for name in modules:
            _write(fd, IMPORTING.format(name=name))
            # left out, as multiprocessing leaves out an ImportError: the worker's own import says why
            with contextlib.suppress(Exception, SystemExit):
                importlib.import_module(name)
        _write(fd, IMPORTED)
    finally:
        if stream is not None:
            faulthandler.unregister(DUMP_SIGNAL)
            signal.signal(DUMP_SIGNAL, signal.SIG_DFL)
            stream.close()


if in_fork_server():
    preload(json.loads(os.environ.get(MODULES_ENV, "[]")))
