"""How ``make test`` hands tests to its pytest-xdist workers (``-n 3 --dist
loadgroup``; :func:`testkit.fixtures.pytest_xdist_make_scheduler` puts this scheduler in place of
loadgroup's).

A unit of work goes to one worker whole: a group of :data:`GROUPS` (tests that cannot run twice at
once), else one test file. Why files, not loadgroup's single tests: many files start their servers in
a module-scoped fixture, and a file split between two workers starts them on both. Groups are handed
out first: they are long, and a long unit started last keeps one worker busy while the others idle.

Why a table here and not ``@pytest.mark.xdist_group``: xdist (3.8) tells the controller a test's group
by appending it to the test's id in the worker (``item._nodeid``), which pytest 9 no longer reads (its
ids come from ``item._id``): the marks were silently ignored and the browser tests ran on two workers.
"""

from __future__ import annotations

from xdist.scheduler import LoadGroupScheduling
from xdist.workermanage import WorkerController

#: The tests devstack's fixed ports are bound by (8080, 9000, 8101-8103 and their metrics ports): the
#: browser tests' platform (one per package, started once) and ``make dev`` itself.
DEVSTACK_PORTS = "devstack-ports"
#: Path prefixes (from the repository root) of the tests each group holds, and why they must share a worker.
GROUPS: dict[str, tuple[str, ...]] = {
    DEVSTACK_PORTS: ("tests/browser/", "tests/e2e/test_make_dev.py"),
    # one session's Stack (a private Postgres, Redis and five services) for every fault test, and its
    # figures (recovery times, p99) in one process; a second worker would start a second stack beside it
    "faults": ("tests/faults/",),
}


#: The longest test files (seconds each in a CI run of two workers), handed out right after the groups:
#: in collection order they came last (tests/packaging, tests/restore, tests/spa, tests/upgrade sort
#: late), and a unit of two or three minutes started last leaves the other worker idle as long.
LONG_FILES: tuple[str, ...] = (
    "tests/contracts/test_api_fuzz.py",  # ~190
    "tests/spa/test_spa_checks.py",  # ~100
    "tests/packaging/test_pods_under_limits.py",  # ~95 (~150 before its CPU scenarios ran two at once)
    "tests/packaging/test_request_memory.py",  # ~90
    "tests/upgrade/test_upgrade_from_previous.py",  # ~75
    "tests/restore/test_timesheets_restore.py",  # ~75
    "tests/restore/test_identity_restore.py",  # ~60
    "tests/packaging/test_monitoring.py",  # ~60
)


def unit_of(nodeid: str) -> str:
    """The unit of work of a test: its group's name, else its file."""
    for group, prefixes in GROUPS.items():
        if nodeid.startswith(prefixes):
            return group
    return nodeid.split("::", 1)[0]


def is_file_unit(unit: str) -> bool:
    """A test file's unit (``tests/x/test_y.py``), not a group's (``faults``)."""
    return unit.endswith(".py")


class FileGroupScheduling(LoadGroupScheduling):  # type: ignore[misc]  # xdist ships no types
    """loadgroup's scheduling with :data:`GROUPS` and a test file as the unit of every other test."""

    def _split_scope(self, nodeid: str) -> str:
        return unit_of(nodeid)

    def _assign_work_unit(self, node: WorkerController) -> None:
        first = [u for u in reversed(LONG_FILES) if u in self.workqueue]
        first += [unit for unit in self.workqueue if not is_file_unit(unit)]
        for unit in first:  # each moved to the front: the groups, then the long files in their order
            self.workqueue.move_to_end(unit, last=False)
        super()._assign_work_unit(node)
