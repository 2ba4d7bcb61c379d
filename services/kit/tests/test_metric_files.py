"""The multiprocess metrics directory kept bounded (:mod:`svckit.metricfiles`): dead processes'
counters, histograms and summaries merged into archives without a count lost or counted twice, and a
new run's directory cleared of the previous run's files. The files are written by real processes
through prometheus_client, as the gateway's workers write them."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from svckit.metricfiles import compact_dead_processes, start_run
from svckit.metrics import render_metrics

WRITER = """
import sys
from prometheus_client import Counter, Gauge, Histogram, Summary

jobs = Counter("jobs_total", "Jobs done.", ["kind"])
seconds = Histogram("job_seconds", "Job time.", ["kind"], buckets=(0.1, 1.0))
sizes = Summary("job_bytes", "Job size.")
running = Gauge("jobs_running", "Jobs running.", multiprocess_mode="livesum")
for i in range(int(sys.argv[1])):
    jobs.labels("odd" if i % 2 else "even").inc()
    seconds.labels("any").observe(i / 7)
    sizes.observe(i)
running.set(1)
if sys.argv[2:] == ["stay"]:
    print("ready", flush=True)
    sys.stdin.read()  # alive until the test closes its stdin
"""


def write(directory: Path, jobs: int) -> None:
    """A process that does ``jobs`` jobs, writing its samples to ``directory``, and exits."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    subprocess.run([sys.executable, "-c", WRITER, str(jobs)], env=env, check=True, timeout=30)


@contextmanager
def running_writer(directory: Path) -> Iterator[int]:
    """A process that did 2 jobs writing to ``directory`` and still runs; its pid."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    with subprocess.Popen(
        [sys.executable, "-c", WRITER, "2", "stay"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as live:
        assert live.stdin is not None
        assert live.stdout is not None
        try:
            assert live.stdout.readline() == b"ready\n"
            yield live.pid
        finally:
            live.stdin.close()
            live.wait(10)


@pytest.fixture
def directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    return tmp_path


def scrape() -> str:
    """What ``/metrics`` shows of the directory (without this process's own ``process_*`` series)."""
    lines = render_metrics()[0].decode().splitlines()
    return "\n".join(sorted(line for line in lines if "process_" not in line))  # files, in any order


def files(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.glob("*.db"))


def test_dead_processes_counts_move_into_one_archive_per_type(directory: Path) -> None:
    for jobs in (3, 4, 5):
        write(directory, jobs)
    before = scrape()
    assert 'jobs_total{kind="even"} 7.0' in before
    assert 'job_seconds_bucket{kind="any",le="1.0"} 12.0' in before
    assert len(files(directory)) == 3 * 4
    merged = compact_dead_processes(directory)
    assert len(merged) == 3
    # their live gauges are forget_dead_processes' (mark_process_dead), left here
    assert [name for name in files(directory) if not name.startswith("gauge_")] == [
        "counter_archive.db",
        "histogram_archive.db",
        "summary_archive.db",
    ]
    assert scrape() == before
    # more deaths: added to the archives, which stay one per type
    write(directory, 6)
    write(directory, 1)
    before = scrape()
    assert 'jobs_total{kind="odd"} 8.0' in before
    assert len(compact_dead_processes(directory)) == 2
    assert [name for name in files(directory) if not name.startswith("gauge_")] == [
        "counter_archive.db",
        "histogram_archive.db",
        "summary_archive.db",
    ]
    assert scrape() == before


def test_a_live_process_keeps_its_files_and_a_dead_ones_empty_or_corrupt_file_is_settled(
    directory: Path,
) -> None:
    with running_writer(directory) as live:
        write(directory, 3)
        gone = 2**22 + 1  # no such pid (above the default pid_max)
        (directory / f"counter_{gone}.db").touch()  # killed between creating and sizing its file
        corrupt = directory / f"histogram_{gone + 1}.db"
        corrupt.write_bytes(b"\x00\x10\x00\x00" + b"\x00" * 12)  # claims 4 KiB it does not hold
        compact_dead_processes(directory)
        names = files(directory)
        assert f"counter_{live}.db" in names
        assert f"histogram_{live}.db" in names
        assert f"counter_{gone}.db" not in names  # held nothing
        assert corrupt.name in names  # left for the scrape to call corrupt
        corrupt.unlink()
        assert 'jobs_total{kind="even"} 3.0' in scrape()  # 1 of the live one's, 2 of the archive's


def test_a_damaged_archive_takes_nothing_and_stops_nothing(directory: Path) -> None:
    """The supervisor merges when it replaces a worker: a damaged archive must neither raise there
    nor swallow the dead workers' files (their counts would be lost)."""
    write(directory, 3)
    compact_dead_processes(directory)
    (directory / "counter_archive.db").write_bytes(b"\x00\x10\x00\x00" + b"\x00" * 12)
    write(directory, 2)
    assert compact_dead_processes(directory) != []  # its histogram and summary were merged
    assert len(list(directory.glob("counter_[0-9]*.db"))) == 1


def test_a_scrape_during_a_compaction_counts_each_sample_once(directory: Path) -> None:
    """The archive is renamed into place before the merged files are removed: a scrape in between,
    reading both, would count the dead processes twice (a counter that jumps up, then back down: two
    resets to Prometheus). The scrape waits for the compaction instead."""
    for jobs in (3, 4):
        write(directory, jobs)
    expected = scrape()
    seen: list[str] = []
    scrapers: list[threading.Thread] = []

    def scrape_in_between() -> None:
        scraper = threading.Thread(target=lambda: seen.append(scrape()))
        scrapers.append(scraper)
        scraper.start()
        scraper.join(1.0)  # time enough to read the files if nothing keeps it out

    compact_dead_processes(directory, before_removal=scrape_in_between)
    for scraper in scrapers:
        scraper.join(10)
    assert seen == [expected] * 3  # one scrape for each type's archive


def test_a_new_run_starts_without_the_previous_runs_files(directory: Path) -> None:
    write(directory, 3)
    compact_dead_processes(directory)
    write(directory, 2)
    own = directory / f"counter_{os.getpid()}.db"  # a container's first process: the same pid each run
    own.write_bytes((directory / "counter_archive.db").read_bytes())
    (directory / "notes.txt").write_text("not prometheus'")
    assert start_run(directory) == []
    assert files(directory) == []
    assert (directory / "notes.txt").exists()
    assert "jobs_total" not in scrape()
    assert start_run(directory / "new" / "dir") == []  # created when missing
    assert (directory / "new" / "dir").is_dir()


def test_a_directory_a_running_process_writes_to_is_left_as_it_is(directory: Path) -> None:
    write(directory, 3)
    with running_writer(directory) as live:
        before = files(directory)
        assert start_run(directory) == [live]
        assert files(directory) == before
