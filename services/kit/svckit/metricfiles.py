"""The files of ``PROMETHEUS_MULTIPROC_DIR`` over a run and between runs, kept bounded.

With several workers (the gateway) every process writes its samples to files of its own in the
directory, named ``<type>_<pid>.db`` (``gauge_<mode>_<pid>.db`` for gauges), and the metrics listener
sums them. prometheus_client removes none of them. Two things made them pile up, in the chart's
memory-backed emptyDir (64 Mi, counted against the pod's memory, kept across container restarts):

* **between runs** — a process started on a directory a previous run filled (a container restart)
  summed that run's files into its own: counters that did not start over, the previous workers'
  live gauges (their idle upstream connections). prometheus_client's documentation asks for the
  directory to be wiped between runs; :func:`start_run` does, before the new run writes a file.
* **within a run** — a worker that dies leaves its files. Its live gauges must go
  (``mark_process_dead``), but its counters, histograms and summaries must stay, or their sums would
  go down (a counter reset to Prometheus). :func:`compact_dead_processes` merges them into one
  *archive* per type, ``<type>_archive.db``, in prometheus_client's own file format — which its
  reader, summing every file of a type, reads like any other — and removes them.

The archive is written next to its old self and renamed over it; only then are the merged files
removed. A scrape between the two would count the dead workers twice, so both hold an ``flock`` on
``.compaction.lock`` in the directory: the compaction an exclusive one, a scrape a shared one
(:func:`scrape_lock`) — scrapes never wait for each other, and a process of its own reading the
files would be kept out the same way. This module imports no metric: :func:`start_run` must run
before any process of the run creates a file (``python -m gateway`` calls it before its imports).
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

log = logging.getLogger("svckit.metrics")

LOCK_NAME = ".compaction.lock"
#: the name an archive has where a file has its pid
ARCHIVE = "archive"
#: what reading a damaged metrics file raises (prometheus_client's reader, then the key's JSON)
UNREADABLE = (RuntimeError, struct.error, UnicodeDecodeError, ValueError)
#: the types whose samples are sums over processes: what an archive may hold
SUMMED_TYPES = ("counter", "histogram", "summary")


def pid_of(path: Path) -> int | None:
    """The pid a metrics file is named after; ``None`` for an archive or any other name."""
    suffix = path.stem.rsplit("_", 1)[-1]
    return int(suffix) if suffix.isdigit() else None


def alive(pid: int) -> bool:
    """Whether ``pid`` may still write: it exists and is no zombie (one that exited, not reaped yet —
    an orphaned worker whose new parent does not reap is one for good)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: alive
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:  # gone since, or no /proc to tell a zombie by
        return not Path("/proc/self").exists()
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def start_run(directory: str | Path) -> list[int]:
    """Make ``directory`` ready for a new run: created when missing, and the previous run's metrics
    files (``*.db``; nothing else) removed. Call it in the run's first process before any metric
    exists — the supervisor, before its workers — so no file of this run is lost.

    A file named after a live process other than this one means another process still writes there
    (two gateways given one directory, which no deployment does: each container has its own): then
    nothing is removed, and the pids of those processes are returned for the caller to warn about.
    This process's own pid may name a previous run's file (a container's first process is pid 1 at
    every start): it has written none yet, so that file is old."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    files = sorted(path.glob("*.db"))
    pids = {pid_of(file) for file in files}
    sharing = sorted(pid for pid in pids if pid is not None and pid != os.getpid() and alive(pid))
    if not sharing:
        for file in files:
            file.unlink(missing_ok=True)
    return sharing


@contextmanager
def _flock(directory: Path, operation: int) -> Iterator[None]:
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, operation)
        yield
    finally:
        os.close(fd)  # releases the lock


def scrape_lock(directory: str | Path) -> AbstractContextManager[None]:
    """Held while a scrape lists and reads the files: no compaction runs meanwhile."""
    return _flock(Path(directory), fcntl.LOCK_SH)


def _values(path: Path) -> dict[str, float]:
    """A metrics file's samples, by prometheus_client's key (metric, sample name, labels, help)."""
    from prometheus_client.mmap_dict import MmapedDict

    values: dict[str, float] = {}
    for key, value, _timestamp, _position in MmapedDict.read_all_values_from_file(str(path)):  # type: ignore[no-untyped-call]
        values[key] = values.get(key, 0.0) + value
    return values


def _encode(values: dict[str, float]) -> bytes:
    """``values`` as a file in prometheus_client's format (:class:`prometheus_client.mmap_dict.MmapedDict`):
    the bytes used, 4 of padding, then each sample: its key's length, the key padded to 8 bytes, its
    value and a timestamp. Written with ``write``, not through a memory map: a full tmpfs is then an
    ``OSError`` here, where a write to a mapped page would kill the process (SIGBUS)."""
    entries = []
    for key, value in values.items():
        encoded = key.encode("utf-8")
        padded = encoded + b" " * (8 - (len(encoded) + 4) % 8)
        entries.append(struct.pack(f"i{len(padded)}sdd", len(encoded), padded, value, 0.0))
    body = b"".join(entries)
    return struct.pack("ii", 8 + len(body), 0) + body


def _write(path: Path, values: dict[str, float]) -> None:
    with path.open("wb") as file:  # a partial one left by a compaction that was killed is replaced
        file.write(_encode(values))


def compact_dead_processes(
    directory: str | Path, *, before_removal: Callable[[], None] | None = None
) -> list[int]:
    """Merge the counters, histograms and summaries of the processes that are gone into one archive
    per type, and remove their files; the pids merged. Their live gauges are
    :func:`svckit.metrics.forget_dead_processes`'s; a gauge of another mode keeps its file (the
    gateway sets none). An empty file of a dead process (killed between creating and sizing it) holds
    nothing and is removed; one that cannot be read is left as it is (the scrape says it is corrupt).

    Only whoever starts processes writing to the directory may call this, between two starts (a pid
    freed here must not name a new worker's file while it is merged). ``before_removal`` runs after
    each archive is renamed into place, before the merged files go (tests: a scrape meanwhile)."""
    path = Path(directory)
    merged: set[int] = set()
    with _flock(path, fcntl.LOCK_EX):
        for kind in SUMMED_TYPES:
            dead = {
                file: pid
                for file in sorted(path.glob(f"{kind}_*.db"))
                if (pid := pid_of(file)) is not None and not alive(pid)
            }
            if not dead:
                continue
            archive = path / f"{kind}_{ARCHIVE}.db"
            try:
                totals = _values(archive) if archive.exists() else {}
            except UNREADABLE as exc:  # damaged: nothing is merged into it (the scrape says so)
                log.warning(
                    "a metrics archive cannot be read", extra={"file": archive.name, "error": str(exc)}
                )
                continue
            sources = []
            for file in dead:
                try:
                    if file.stat().st_size == 0:
                        file.unlink()
                        continue
                    values = _values(file)
                except UNREADABLE as exc:
                    log.warning(
                        "a dead process's metrics file cannot be read; left as it is",
                        extra={"file": file.name, "error": str(exc)},
                    )
                    continue
                for key, value in values.items():
                    totals[key] = totals.get(key, 0.0) + value
                sources.append(file)
            if not sources:
                continue
            partial = path / f".{kind}_{ARCHIVE}.partial"
            try:
                _write(partial, totals)
            except OSError as exc:  # the directory is full: the files stay as they are, all counted
                partial.unlink(missing_ok=True)
                log.warning(
                    "dead processes' metrics files could not be merged; left as they are",
                    extra={"kind": kind, "error": str(exc)},
                )
                continue
            os.replace(partial, archive)
            if before_removal is not None:
                before_removal()
            for file in sources:
                file.unlink()
                merged.add(dead[file])
    return sorted(merged)
