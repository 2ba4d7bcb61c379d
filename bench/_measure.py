"""CPU time of the servers under load: the main figure of every benchmark here (throughput and
latency move with whatever else the machine runs; CPU per request much less)."""

from __future__ import annotations

import shutil
import signal
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psutil

T = TypeVar("T")


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU of a process and its children (a service may fork workers), those that have
    ended included (a Postgres backend of a connection closed meanwhile: pgbench's are opened and
    closed within its run, so no listing of live children ever sees them); 0 if gone."""
    if pid is None:
        return 0.0
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


class CpuMeter:
    """CPU seconds of several processes between :meth:`start` and :meth:`stop`."""

    def __init__(self, pids: Mapping[str, int | None]) -> None:
        self.pids = dict(pids)
        self._before: dict[str, float] = {}

    def start(self) -> None:
        self._before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) - self._before[name] for name, pid in self.pids.items()}


def median_case(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One case over interleaved rounds: the median of every numeric figure, the rest from the first.
    A figure the same in every round (the case's batch size, its senders) stays as it is: the median
    of an even number of rounds is a float."""
    merged: dict[str, Any] = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            values = [run[key] for run in runs if isinstance(run.get(key), int | float)]
            if all(found == value for found in values):
                continue
            middle = statistics.median(values)
            merged[key] = round(middle, 1) if isinstance(middle, float) else middle
    merged["rounds"] = len(runs)
    return merged


def spread(runs: Iterable[Mapping[str, Any]], key: str) -> list[Any]:
    return [run.get(key) for run in runs]


#: py-spy's sampling rate here (samples per second of each thread it finds running)
SAMPLES_PER_SECOND = 250


@dataclass(frozen=True)
class ProfileTime:
    """How much of a profile is CPU: py-spy counts a thread as running while the kernel says it is
    runnable (``R`` in ``/proc/<tid>/stat``), so on a saturated machine its samples also hold the time
    the process waited for a core, charged to the line it was preempted at: typically right after a
    write that woke a peer (Postgres, Redis, the other service), which then ran on "its" core. Shares
    read from a contended profile overstate those lines by that much; the CPU meter is the figure.
    (For a server running one thread at a time, as the services' event loops do: threads that run at
    once are each sampled.)"""

    output: str
    sampled_seconds: float  # samples / rate: the time py-spy saw the process running or runnable
    cpu_seconds: float  # user + system CPU of the process over the same stretch

    @property
    def waiting_share(self) -> float:
        """The part of the samples that cannot have been CPU time (0 when the samples fit in it)."""
        if self.sampled_seconds <= 0:
            return 0.0
        return max(0.0, self.sampled_seconds - self.cpu_seconds) / self.sampled_seconds

    def line(self) -> str:
        return (
            f"profile {self.output}: {self.sampled_seconds:.1f} s sampled as running, "
            f"{self.cpu_seconds:.1f} s of CPU: about {self.waiting_share:.0%} of the samples are time "
            "it waited for a core (py-spy counts a runnable thread as running)"
        )


def samples_in(path: str | Path) -> int:
    """The samples of a py-spy ``--format raw`` file (each line: a collapsed stack and its count)."""
    total = 0
    with open(path, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            _, _, count = line.rstrip().rpartition(" ")
            if count.isdigit():
                total += int(count)
    return total


def sampled(
    outputs: Mapping[str, int | None],
    run: Callable[[], T],
    *,
    report: Callable[[ProfileTime], None] = lambda found: print(found.line(), flush=True),
) -> T:
    """``run`` with py-spy sampling each process of ``outputs`` (output file → pid; None: skipped)
    throughout, as collapsed stacks (``--format raw``), for the benchmarks' ``*_PROFILE`` options; just
    ``run`` when py-spy is not installed. Sampling costs the processes some CPU too, counted in their
    figures, so it is never on by default. Each profile is reported (``report``: printed) with the
    CPU the process used meanwhile, so a reader knows how much of it is waiting (:class:`ProfileTime`)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return run()
    command = [spy, "record", "--rate", str(SAMPLES_PER_SECOND), "--format", "raw", "--nonblocking"]
    targets = {output: pid for output, pid in outputs.items() if pid is not None}
    meter = CpuMeter(targets)
    meter.start()
    samplers = [
        subprocess.Popen(
            [*command, "--pid", str(pid), "-o", output],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for output, pid in targets.items()
    ]
    try:
        return run()
    finally:
        for sampler in samplers:
            sampler.send_signal(signal.SIGINT)
        for sampler in samplers:
            sampler.wait(30)
        used = meter.stop()
        for output in targets:
            if Path(output).exists():
                report(ProfileTime(output, samples_in(output) / SAMPLES_PER_SECOND, used[output]))
