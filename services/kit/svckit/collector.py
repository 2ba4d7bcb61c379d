"""The cyclic garbage collector of a service process, from its first import on.

A service sets :data:`GC_THRESHOLDS` once it has started (:func:`svckit.app.freeze_startup_objects`,
which collects once and freezes what is alive). Before that, with the interpreter's default thresholds
(700, 10, 10), importing a service — some 70,000-90,000 tracked objects that all stay alive — ran ~200
collections, full ones among them, that found nothing to free: 0.06-0.18 s of CPU of a start of
0.45-0.65 s (measured on each service's ``import <service>.app``). :func:`collect_rarely` applies the
same thresholds first thing in an entry point (``python -m <service>``, the gateway's spawned workers),
so the imports run with the thresholds the service runs with anyway; the collection at freeze time
still frees whatever the start left behind.

Only imported by entry points: importing :mod:`svckit` (a test, a tool) leaves the collector as it is.
"""

from __future__ import annotations

import gc
import importlib
from collections.abc import Callable
from typing import Any

#: the cyclic collector's thresholds of a service process (see :func:`svckit.app.freeze_startup_objects`)
GC_THRESHOLDS = (20_000, 20, 20)


def collect_rarely() -> None:
    """Set :data:`GC_THRESHOLDS`: called before a process imports its service."""
    gc.set_threshold(*GC_THRESHOLDS)


class SpawnTarget:
    """A spawned process's target, named by module and function (``svckit.server``, ``_run_worker``).

    A process started with ``multiprocessing``'s spawn imports whatever its target and arguments
    need while it unpickles them, before the target runs. This target is unpickled first (a
    :class:`multiprocessing.Process` pickles its target before its arguments) and unpickling it calls
    :func:`collect_rarely`, so those imports — the kit's server, the service's protocol, its settings
    classes — run with the service's thresholds too. The function itself is imported when called.
    """

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name

    def __reduce__(self) -> tuple[Callable[[str, str], SpawnTarget], tuple[str, str]]:
        return (_unpickled_target, (self.module, self.name))

    def __call__(self, *args: Any) -> Any:
        return getattr(importlib.import_module(self.module), self.name)(*args)


def _unpickled_target(module: str, name: str) -> SpawnTarget:
    collect_rarely()
    return SpawnTarget(module, name)
