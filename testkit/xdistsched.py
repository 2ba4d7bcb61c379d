"""How ``make test`` hands tests to its pytest-xdist workers (pyproject ``addopts``: ``-n 2 --dist
loadgroup``; this scheduler replaces loadgroup's, see :func:`testkit.fixtures.pytest_xdist_make_scheduler`).

A unit of work is an ``xdist_group``'s tests (:data:`testkit.fixtures.DEVSTACK_PORTS`, the fault suite:
things that cannot run twice at once), else one test file's. Why files, not loadgroup's single tests:
many files start their servers in a module-scoped fixture, and a file split between two workers starts
them on both. Groups are handed out first: they are the longest units, and a long unit started last
keeps one worker busy while the other idles.
"""

from __future__ import annotations

from xdist.scheduler import LoadGroupScheduling
from xdist.workermanage import WorkerController


class FileGroupScheduling(LoadGroupScheduling):  # type: ignore[misc]  # xdist ships no types
    """loadgroup's scheduling with a test file as the unit of every test outside a group."""

    def _split_scope(self, nodeid: str) -> str:
        return unit_of(nodeid)

    def _assign_work_unit(self, node: WorkerController) -> None:
        for scope in [scope for scope in self.workqueue if not is_file_scope(scope)]:
            self.workqueue.move_to_end(scope, last=False)
        super()._assign_work_unit(node)


def unit_of(nodeid: str) -> str:
    """The unit of work of a test: its group (the ``@group`` the worker appended to its id under
    loadgroup, told from an ``@`` in a parameter as xdist does), else its file."""
    if nodeid.rfind("@") > nodeid.rfind("]"):
        return nodeid.rsplit("@", 1)[1]
    return nodeid.split("::", 1)[0]


def is_file_scope(scope: str) -> bool:
    """A unit that is a test file's (``tests/x/test_y.py``), not a group's (``faults``)."""
    return scope.endswith(".py")
