"""Imported last by a supervisor's fork server (:func:`svckit.server.worker_modules`), once it has
imported what its workers run: it takes back what those imports left that is the fork server's own.

The metrics files. With ``PROMETHEUS_MULTIPROC_DIR`` set (the gateway), prometheus_client gives each
process files named after its pid, and a metric without labels creates its sample — in a file — at
import. So the fork server had files of its own (zeros, for as long as the gateway ran): a process
that serves nothing in the directory beside the supervisor and the workers. They are removed here.
The fork server's memory maps of them stay (nothing writes there) and no worker uses them: at its
first metric operation a forked worker finds its pid changed, and prometheus_client opens files of
its own and writes every sample there anew (``MultiProcessValue``'s reset after a fork).

And the collector's reach. Everything the imports made is frozen (:func:`gc.freeze`, as CPython's
documentation advises before a fork without exec): a worker's collections — the full one when its
application has started (:func:`svckit.app.freeze_startup_objects`) among them — then never walk
those objects, whose pages it shares with the fork server and the other workers until something
writes to them; a collection that walked them wrote to every one and copied its page into the worker.

Nothing happens where this module is imported by anything but a fork server (a test, a tool).
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

from .collector import in_fork_server
from .metricfiles import pid_of


def drop_own_metric_files() -> list[Path]:
    """Remove the metrics files named after this process; those removed."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return []
    mine = [path for path in Path(directory).glob("*.db") if pid_of(path) == os.getpid()]
    for path in mine:
        path.unlink(missing_ok=True)
    return mine


if in_fork_server():
    drop_own_metric_files()
    gc.freeze()
