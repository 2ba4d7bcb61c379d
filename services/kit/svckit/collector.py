"""The cyclic garbage collector of a service process, from its first import on.

A service sets :data:`GC_THRESHOLDS` once it has started (:func:`svckit.app.freeze_startup_objects`,
which collects once and freezes what is alive). Before that, with the interpreter's default thresholds
(700, 10, 10), importing a service — some 70,000-90,000 tracked objects that all stay alive — ran ~200
collections, full ones among them, that found nothing to free: 0.06-0.18 s of CPU of a start of
0.45-0.65 s (measured on each service's ``import <service>.app``). :func:`collect_rarely` applies the
same thresholds first thing in an entry point (``python -m <service>``), so the imports run with the
thresholds the service runs with anyway; the collection at freeze time still frees whatever the start
left behind. (The gateway's spawned workers import with the defaults until their application starts:
setting them earlier there took a pickling hook on the worker's target for ~0.03 s a worker.)

Only imported by entry points: importing :mod:`svckit` (a test, a tool) leaves the collector as it is.
"""

from __future__ import annotations

import gc

#: the cyclic collector's thresholds of a service process (see :func:`svckit.app.freeze_startup_objects`)
GC_THRESHOLDS = (20_000, 20, 20)


def collect_rarely() -> None:
    """Set :data:`GC_THRESHOLDS`: called before a process imports its service."""
    gc.set_threshold(*GC_THRESHOLDS)
