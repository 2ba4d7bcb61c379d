"""Where a stuck worker is stuck: its threads' Python stacks, dumped by the worker on its supervisor's
signal, read by the supervisor before it kills the worker (:mod:`svckit.watchdog`).

The watchdog's line said which worker it killed and after how long, not *where* its event loop was
blocked — the one thing needed to fix the cause. A blocked loop runs no Python of its own to say so,
but :mod:`faulthandler` writes every thread's stack from C, inside the signal handler: it works while
the loop is blocked in Python (a CPU-bound loop) or in a C call (``time.sleep``, a blocking socket
read, a lock), and reads no locals or arguments, only file names, line numbers and function names —
so no request's headers, token or body can be in it.

Each worker gets an unnamed temporary file (``O_TMPFILE`` under ``TMPDIR``: the chart's memory-backed
``/tmp``) from its supervisor, handed over as multiprocessing hands over the listening socket (the
descriptor duplicated into the worker). Nothing is ever on disk by name, so nothing is left
behind whatever ends the processes; the file is freed when the worker is gone and the supervisor has
closed its copy. The worker writes a first line when its handler is in place (:func:`install`): a
worker still in its spawn, before the kit's code ran, would die of the signal's default action, so it
is not signalled. The supervisor notes the file's size, signals (:data:`DUMP_SIGNAL`), and waits
at most :data:`WAIT_SECONDS` for the dump to appear and stop growing (:func:`collect`): the kill is
never held up by a worker that cannot run its handler (stopped, or starved of CPU). What it logs is
at most :data:`MAX_LOGGED_BYTES` (faulthandler's own bound is 100 frames of 100 threads).

A stack says where, not for whom: the log lines of a stuck request are few (its access line is written
when it ends, which it never does). So the worker also names the request its event loop is serving,
from a Python-level handler of the same signal, which runs once the C dump is written (faulthandler
chains to it) in the context of the code that holds the loop — the request's ``request_id``, as its
peers (the gateway's 504, the client) logged it. It runs when the loop is blocked in Python or in a
call that returns to Python on a signal (``time.sleep``, a socket read, a lock's wait), not in a C call
that ignores signals; then the record has the stack and no request.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import tempfile
import threading
import time
from multiprocessing.reduction import DupFd
from types import FrameType
from typing import IO, Any

from .context import current_request_id

#: the signal on which a worker dumps its threads' stacks (uvicorn and the kit use no other for it)
DUMP_SIGNAL = signal.SIGUSR1
#: how long the supervisor waits for a dump before it kills the worker anyway: well below the
#: supervisor's own pause bound (svckit.watchdog.SUPERVISOR_GAP_SECONDS); a dump takes about a ms
WAIT_SECONDS = 0.5
#: a dump that has not grown for this long is complete (faulthandler writes it in one go)
SETTLE_SECONDS = 0.05
#: what of a dump one log record holds at most: its beginning and its end (the main thread's stack
#: is usually the last), the middle left out
MAX_LOGGED_BYTES = 32 * 1024
#: the worker's first line: its handler is in place, and which thread runs its event loop
READY = "svckit: stacks dumped on SIGUSR1; event loop thread 0x{ident:016x}\n"
READY_PREFIX = READY.split("0x", 1)[0].encode()
#: the line the worker writes after its stacks, naming the request its event loop serves ("-": none)
REQUEST = "svckit: the event loop's request: {request_id}\n"
REQUEST_PREFIX = REQUEST.split("{", 1)[0].encode()


class StackFile:
    """The supervisor's side of one worker's dump file; picklable into the worker as its
    descriptor (:meth:`__reduce__`)."""

    def __init__(self) -> None:
        # open for as long as the worker lives: closed by close(), once it is dead
        self.file: IO[bytes] = tempfile.TemporaryFile(prefix="svckit-stacks-")  # noqa: SIM115
        self.asked_at_size: int | None = None

    def __reduce__(self) -> tuple[Any, tuple[Any]]:
        return (_inherited, (DupFd(self.file.fileno()),))

    def size(self) -> int:
        return os.fstat(self.file.fileno()).st_size

    def ask(self, pid: int) -> bool:
        """Signal ``pid`` to dump its stacks here; False (nothing sent) while its handler is not in
        place yet, or when it is gone."""
        size = self.size()
        if not self.ready():
            return False
        try:
            os.kill(pid, DUMP_SIGNAL)
        except ProcessLookupError:
            return False
        self.asked_at_size = size
        return True

    def ready(self) -> bool:
        return os.pread(self.file.fileno(), len(READY_PREFIX), 0) == READY_PREFIX

    def loop_thread(self) -> str | None:
        """The event loop's thread as faulthandler names it (``Thread 0x...``)."""
        first = os.pread(self.file.fileno(), len(READY) + 32, 0).split(b"\n", 1)[0]
        return first.rsplit(b" ", 1)[-1].decode() if first.startswith(READY_PREFIX) else None

    def contents(self) -> bytes:
        """Everything written here so far (the supervisor's reading of a start's report or failure)."""
        return os.pread(self.file.fileno(), self.size(), 0)

    def dump(self) -> bytes:
        """What the worker wrote since it was asked."""
        if self.asked_at_size is None:
            return b""
        start = self.asked_at_size
        return os.pread(self.file.fileno(), max(0, self.size() - start), start)

    def close(self) -> None:
        self.file.close()


def _inherited(fd: Any) -> int:
    """In the worker: the descriptor multiprocessing duplicated into it."""
    return int(fd.detach())


def install(fd: int) -> None:
    """In a worker, first thing: dump every thread's stack into ``fd`` on :data:`DUMP_SIGNAL`, then
    say so in it (the supervisor signals only once that line is there)."""
    stream = os.fdopen(fd, "ab", buffering=0)  # kept open for the process's life by faulthandler

    def name_the_request(signum: int, frame: FrameType | None) -> None:
        # in the main thread, between two bytecodes of whatever holds the loop: its context's request
        line = REQUEST.format(request_id=current_request_id() or "-").encode()
        with contextlib.suppress(OSError):
            os.write(stream.fileno(), line)

    signal.signal(DUMP_SIGNAL, name_the_request)  # first: faulthandler chains to it after its dump
    faulthandler.register(DUMP_SIGNAL, file=stream, all_threads=True, chain=True)
    stream.write(READY.format(ident=threading.get_ident()).encode())


def collect(asked: list[StackFile], wait: float = WAIT_SECONDS) -> None:
    """Wait until every asked file's dump has appeared and stopped growing, or ``wait`` has passed."""
    deadline = time.monotonic() + wait
    last: dict[int, tuple[int, float]] = {}
    pending = list(asked)
    while pending and time.monotonic() < deadline:
        time.sleep(0.01)
        now = time.monotonic()
        for stack in list(pending):
            size = stack.size()
            seen = last.get(id(stack))
            if seen is None or seen[0] != size:
                last[id(stack)] = (size, now)
            elif size > (stack.asked_at_size or 0) and now - seen[1] >= SETTLE_SECONDS:
                pending.remove(stack)


def blocked_request(dump: bytes) -> str | None:
    """The ``request_id`` the worker named in its dump (``None``: no request held the loop, or the
    worker could not run Python to say; see the module docstring)."""
    for line in dump.splitlines():
        if line.startswith(REQUEST_PREFIX):
            named = line[len(REQUEST_PREFIX) :].decode("ascii", errors="replace").strip()
            return None if named == "-" else named
    return None


def shown(dump: bytes) -> str:
    """A dump as one log record holds it: text, at most :data:`MAX_LOGGED_BYTES`."""
    if len(dump) > MAX_LOGGED_BYTES:
        half = MAX_LOGGED_BYTES // 2
        left_out = len(dump) - 2 * half
        dump = dump[:half] + f"\n[... {left_out} bytes left out ...]\n".encode() + dump[-half:]
    return dump.decode("utf-8", errors="replace")


def innermost(stack: str, thread: str | None) -> str | None:
    """The innermost frame of ``thread`` (``0x...``: the event loop's) — where the loop is stuck."""
    if thread is None:
        return None
    lines = stack.splitlines()
    with contextlib.suppress(StopIteration):
        start = next(i for i, line in enumerate(lines) if f"hread {thread} (" in line)
        return next(line.strip() for line in lines[start + 1 :] if line.strip().startswith("File "))
    return None
