"""A process's own import of its application: one JSON line and exit 1 when it raises or hangs.

The supervisor's fork server reports what *its* imports do (:mod:`svckit.preloading`); but before any
fork server exists, a service's entry point imports application code itself — the gateway its whole
application, for the configuration check (``python -m gateway``), every service its settings and
commands; and a single-process service (every one but the gateway, and the gateway by default) has
uvicorn import its application module in the serving process (:func:`svckit.server.serve`). There, an
exception at import (a ``RuntimeError``, a ``SyntaxError``, a dependency missing, ``sys.exit()``) was a
raw Python traceback in the pod's log, or for ``sys.exit("...")`` one line of plain text; an import
that hung held the process, silent, until the kubelet's startup probe killed it.

:func:`importing_application` guards such imports:

* one raising anything but :class:`svckit.settings.SettingsError` (a settings check: already its own
  line and exit 2) ends the process with exit 1 and one JSON error line — ``error``: the type, the
  message and where it was raised (:func:`start_failure`, the text the supervisor's "a worker failed to
  start" line carries), ``importing``: the module whose import raised — no traceback;
* one that has not ended WORKER_START_SECONDS after the guard began (the bound of a worker's start and
  of the fork server's imports; before the settings are read, as the settings will read it) ends it with
  exit 1 and one line naming the module being imported and the main thread's stack (``stack``,
  ``stuck_at``: its innermost frame), dumped by :mod:`faulthandler` as a stuck worker's is;
* a SIGTERM or SIGINT while it runs (a rollout, a scale-down) ends it at once with exit 0 and one
  warning line — the main thread, blocked in the import, may never run a Python signal handler, so a
  thread beside it hears the signal (:func:`signal.set_wakeup_fd`, written from C) and ends the process.

The watching thread needs the GIL: an import blocked in a C call that holds it (no ``time.sleep``, no
I/O, no lock: those release it) is not bounded here, and ends only by the startup probe, as before.
Only what the guard covers is watched; the application factory and the lifespan are not imports.
"""

from __future__ import annotations

import contextlib
import faulthandler
import importlib
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import FrameType, TracebackType
from typing import Annotated

from pydantic import TypeAdapter, ValidationError

from .logs import configure_logging
from .settings import ServiceSettings, SettingsError
from .stacks import StackFile, innermost, shown
from .watchdog import WORKER_START_SECONDS

log = logging.getLogger("svckit.appimport")

#: how often the watching thread looks at the clock and the guarded import's end
POLL_SECONDS = 0.1
#: the signals that stop a process while it imports (the kubelet's, a terminal's)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def start_failure(exc: BaseException) -> str:
    """What an exception raised while loading the application was, in one line: its type, its message
    and where it was raised (the innermost frame outside the import machinery, or the line a
    ``SyntaxError`` names) — no traceback, no locals."""
    where = None
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f"{exc.filename}:{exc.lineno}"
    else:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<frozen")]
        if frames:
            where = f"{frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}"
    error = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:1000]
    return error + (f" (at {where})" if where else "")


def start_seconds(environ: dict[str, str] | None = None) -> float:
    """WORKER_START_SECONDS as the settings read it (:class:`svckit.settings.ServiceSettings`), for a
    guard that runs before they are read; its default when unset or invalid (the settings, read once the
    imports are done, then refuse it with their own line)."""
    value = (os.environ if environ is None else environ).get("WORKER_START_SECONDS")
    if value is None:
        return WORKER_START_SECONDS
    field = ServiceSettings.model_fields["worker_start_seconds"]
    try:
        return TypeAdapter(Annotated[float, field]).validate_python(value.strip())
    except ValidationError:
        return WORKER_START_SECONDS


def _module_of(frame: FrameType) -> str | None:
    name = frame.f_globals.get("__name__")
    return name if isinstance(name, str) else None


def _module_at(filename: str) -> str | None:
    """The dotted name of the source file ``filename`` under the first ``sys.path`` entry holding it."""
    path = Path(filename).resolve()
    for entry in sys.path:
        with contextlib.suppress(ValueError, OSError):
            parts = path.relative_to(Path(entry or ".").resolve()).with_suffix("").parts
            if parts and all(part.isidentifier() for part in parts):
                return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    return None


class _Guard:
    """The state of one :func:`importing_application` block: its frame, its watching thread."""

    def __init__(self, service: str, bound: float, frame: FrameType | None) -> None:
        self.service = service
        self.bound = bound
        self.frame = frame  # the guarded block's own frame: module bodies run inside it are the imports
        self.main = threading.get_ident()
        self.done = threading.Event()
        self.started_at = time.monotonic()
        self.wakeup: tuple[socket.socket, socket.socket] | None = None
        self.previous_wakeup = -1
        self.previous_handlers: dict[int, object] = {}
        self.thread = threading.Thread(target=self._watch, name="svckit-app-import", daemon=True)

    def imports(self, frames: list[FrameType]) -> list[str]:
        """The modules whose bodies run in ``frames`` (outermost first) inside the guarded block."""
        inside = self.frame is None
        names = []
        for frame in frames:
            if frame is self.frame:
                inside = True
            elif inside and frame.f_code.co_name == "<module>" and (name := _module_of(frame)):
                names.append(name)
        return names

    def start(self) -> None:
        if threading.current_thread() is threading.main_thread():
            reader, writer = socket.socketpair()
            reader.setblocking(False)
            writer.setblocking(False)
            self.wakeup = (reader, writer)
            self.previous_handlers = {sig: signal.signal(sig, _heard) for sig in STOP_SIGNALS}
            self.previous_wakeup = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        self.thread.start()

    def stop(self) -> None:
        if self.done.is_set():
            return
        self.done.set()
        self.thread.join()
        if self.wakeup is not None:
            signal.set_wakeup_fd(self.previous_wakeup)
            for sig, handler in self.previous_handlers.items():
                signal.signal(sig, handler)  # type: ignore[arg-type]
            for end in self.wakeup:
                end.close()

    def _watch(self) -> None:
        readers = [self.wakeup[0]] if self.wakeup is not None else []
        while not self.done.is_set():
            if readers:
                heard = bool(select.select(readers, [], [], POLL_SECONDS)[0])
            else:
                heard = self.done.wait(POLL_SECONDS)
            if self.done.is_set():
                return
            if heard and self.wakeup is not None:
                signals = self.wakeup[0].recv(64)
                if any(byte in signals for byte in STOP_SIGNALS):
                    self._end("stopping while importing the application", 0, logging.WARNING)
            waited = time.monotonic() - self.started_at
            if waited > self.bound:
                self._end("the application's import did not end within WORKER_START_SECONDS; stopping", 1)

    def _end(self, message: str, code: int, level: int = logging.ERROR) -> None:
        """Log ``message`` with what the main thread is importing and where, then end the process: its
        main thread is in the import, and would not end it (the process has started nothing else yet)."""
        waited = time.monotonic() - self.started_at
        frames = []
        frame = sys._current_frames().get(self.main)
        while frame is not None:
            frames.append(frame)
            frame = frame.f_back
        chain = self.imports(frames[::-1])
        where: dict[str, object] = {}
        dump = StackFile()
        try:
            faulthandler.dump_traceback(dump.file, all_threads=True)
            where["stack"] = stack = shown(dump.contents())
            where["stuck_at"] = innermost(stack, f"0x{self.main:016x}")
        finally:
            dump.close()
        _logging_for(self.service)
        log.log(
            level,
            message,
            extra={
                "importing": chain[-1] if chain else None,
                "imports": chain,
                "waited_seconds": round(waited, 1),
                "bound_seconds": self.bound,
                **where,
            },
        )
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)

    def failed(self, exc: BaseException, tb: TracebackType | None) -> None:
        frames = [frame for frame, _ in traceback.walk_tb(tb)]
        chain = self.imports(frames)
        importing = chain[-1] if chain else None
        if isinstance(exc, SyntaxError) and exc.filename and (module := _module_at(exc.filename)):
            importing = module  # its body never ran: no frame of its own
            chain = chain if chain[-1:] == [module] else [*chain, module]
        _logging_for(self.service)
        log.error(
            "the application failed to import; stopping",
            extra={"error": start_failure(exc), "importing": importing, "imports": chain},
        )


def _heard(signum: int, frame: FrameType | None) -> None:
    """A stop signal while the application imports: the watching thread, woken by it, ends the process."""


def _logging_for(service: str) -> None:
    """The kit's JSON lines, if the entry point has not configured them yet (it reads its level from the
    settings, after the imports)."""
    if not logging.getLogger().handlers:
        configure_logging(service)


@contextlib.contextmanager
def importing_application(service: str, bound: float | None = None) -> Iterator[None]:
    """Run the imports in the block bounded by ``bound`` seconds (default: WORKER_START_SECONDS, as
    :func:`start_seconds` reads it), stopped at once by SIGTERM/SIGINT, and end the process with one
    JSON line if they raise or hang (see the module docstring). ``service``: the lines' ``service``
    field while the entry point has configured no logging of its own."""
    caller = sys._getframe(2)  # the block's frame: contextmanager's __enter__ is frame 1
    guard = _Guard(service, start_seconds() if bound is None else bound, caller)
    guard.start()
    try:
        yield
    except SettingsError:
        raise  # a settings check at import: its own line, exit 2
    except BaseException as exc:
        guard.stop()
        guard.failed(exc, exc.__traceback__)
        raise SystemExit(1) from None
    finally:
        guard.stop()


def import_application(module: str, service: str, bound: float) -> None:
    """Import ``module`` under :func:`importing_application` (a single-process service's application
    module, before uvicorn looks it up: :func:`svckit.server.serve`)."""
    with importing_application(service, bound):
        importlib.import_module(module)


__all__ = ["import_application", "importing_application", "start_failure", "start_seconds"]
