"""What lets ``make test`` run on several pytest-xdist workers (``-n 3``) without
one worker's servers getting in another's way: each hands out loopback ports from its own range."""

from __future__ import annotations

import socket

import pytest

from testkit import fixtures
from testkit.fixtures import WORKER_PORTS_FROM, worker_ports


@pytest.mark.unit
@pytest.mark.parametrize("workers", [1, 2, 3, 4, 8])
def test_each_worker_has_ports_of_its_own_below_the_kernels_range(workers: int) -> None:
    ranges = [worker_ports(f"gw{n}", workers, 32768) for n in range(workers)]
    seen: set[int] = set()
    for ports in ranges:
        assert ports is not None
        assert len(ports) >= 500
        assert ports.start >= WORKER_PORTS_FROM
        assert ports.stop <= 32768  # never one the kernel hands out on its own
        assert seen.isdisjoint(ports)
        seen.update(ports)


@pytest.mark.unit
def test_without_xdist_or_room_the_kernel_picks() -> None:
    assert worker_ports("", 2, 32768) is None  # a plain run: bind(0), as before
    assert worker_ports("gw0", 2, 10_600) is None  # a kernel range reaching down to 10600: no room


def test_a_worker_hands_out_free_ports_from_its_range_once(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = int(taken.getsockname()[1])
        free = [fixtures.free_port() for _ in range(3)]  # this worker's own: nobody else binds them
        monkeypatch.setattr(fixtures, "_WORKER_PORTS", [busy, *free])
        monkeypatch.setattr(fixtures, "_next_port", 0)
        monkeypatch.setattr(fixtures, "_HANDED_OUT", {free[2]})
        assert [fixtures.free_port(), fixtures.free_port()] == free[:2]  # the listening one skipped
        with pytest.raises(RuntimeError, match="no free port left"):
            fixtures.free_port()  # and none is given twice


@pytest.mark.unit
@pytest.mark.parametrize(
    ("nodeid", "unit"),
    [
        ("tests/faults/test_kills.py::test_sigkill", "faults"),  # a group: one unit, one worker
        ("tests/browser/test_dpop.py::test_x[a]", "devstack-ports"),  # fixed ports: with make dev
        ("tests/e2e/test_make_dev.py::test_make_dev_runs_and_stops_everything", "devstack-ports"),
        ("tests/e2e/test_devstack_redis.py::test_y", "tests/e2e/test_devstack_redis.py"),
        ("tests/a/test_b.py::test_c[x]", "tests/a/test_b.py"),  # else the file: its module fixtures once
        ("tests/a/test_b.py::C::test_d", "tests/a/test_b.py"),
    ],
)
def test_a_unit_of_work_is_a_group_or_a_file(nodeid: str, unit: str) -> None:
    from testkit.xdistsched import is_file_unit, unit_of

    assert unit_of(nodeid) == unit
    assert is_file_unit(unit) == unit.endswith(".py")


def test_every_group_names_tests_that_exist() -> None:
    """A group whose prefix matches no test (a folder renamed) would silently stop serialising."""
    from testkit.fixtures import REPO_ROOT
    from testkit.xdistsched import GROUPS

    for prefixes in GROUPS.values():
        for prefix in prefixes:
            assert (REPO_ROOT / prefix).exists(), prefix


def test_the_long_files_handed_out_first_exist_and_belong_to_no_group() -> None:
    """A renamed long file would silently be handed out last again; one in a group is the group's."""
    from testkit.fixtures import REPO_ROOT
    from testkit.xdistsched import LONG_FILES, is_file_unit, unit_of

    for path in LONG_FILES:
        assert (REPO_ROOT / path).is_file(), path
        assert is_file_unit(unit_of(f"{path}::test_x")), path
