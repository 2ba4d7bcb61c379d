"""The cyclic garbage collector of a service process, from its first import on.

A service sets :data:`GC_THRESHOLDS` once it has started (:func:`svckit.app.freeze_startup_objects`,
which collects once and freezes what is alive). Before that, with the interpreter's default thresholds
(700, 10, 10), importing a service — some 70,000-90,000 tracked objects that all stay alive — ran ~200
collections, full ones among them, that found nothing to free: 0.06-0.18 s of CPU of a start of
0.45-0.65 s (measured on each service's ``import <service>.app``). :func:`collect_rarely` applies the
same thresholds first thing in an entry point (``python -m <service>``), so the imports run with the
thresholds the service runs with anyway; the collection at freeze time still frees whatever the start
left behind. The gateway's workers are forked from a fork server (:data:`svckit.server.START_METHOD`),
which imports what they run, and imports this module first: there it sets the thresholds too, and the
workers inherit them.

Only imported by entry points and fork servers: importing :mod:`svckit` (a test, a tool) leaves the
collector as it is.
"""

from __future__ import annotations

import gc
import sys

#: what a fork server's command line holds (multiprocessing starts it as ``python -c "<this>; ..."``)
FORK_SERVER = "from multiprocessing.forkserver import main"

#: the cyclic collector's thresholds of a service process (see :func:`svckit.app.freeze_startup_objects`)
GC_THRESHOLDS = (20_000, 20, 20)


def collect_rarely() -> None:
    """Set :data:`GC_THRESHOLDS`: called before a process imports its service."""
    gc.set_threshold(*GC_THRESHOLDS)


def in_fork_server() -> bool:
    """Whether this process is a multiprocessing fork server (a supervisor's: svckit.server)."""
    return any(FORK_SERVER in argument for argument in sys.orig_argv)


if in_fork_server():  # imported first of its imports (svckit.server.worker_modules)
    collect_rarely()
