"""CPU time of the servers under load: the main figure of every benchmark here (throughput and
latency move with whatever else the machine runs; CPU per request much less)."""

from __future__ import annotations

import shutil
import signal
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psutil

T = TypeVar("T")


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU of a process and its children (a service may fork workers); 0 if gone."""
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
        total += times.user + times.system
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
    """One case over interleaved rounds: the median of every numeric figure, the rest from the first."""
    merged: dict[str, Any] = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            values = [run[key] for run in runs if isinstance(run.get(key), int | float)]
            middle = statistics.median(values)
            merged[key] = round(middle, 1) if isinstance(middle, float) else middle
    merged["rounds"] = len(runs)
    return merged


def spread(runs: Iterable[Mapping[str, Any]], key: str) -> list[Any]:
    return [run.get(key) for run in runs]


def sampled(outputs: Mapping[str, int | None], run: Callable[[], T]) -> T:
    """``run`` with py-spy sampling each process of ``outputs`` (output file → pid; None: skipped)
    throughout, as collapsed stacks (``--format raw``), for the benchmarks' ``*_PROFILE`` options; just
    ``run`` when py-spy is not installed. Sampling costs the processes some CPU too, counted in their
    figures, so it is never on by default."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return run()
    command = [spy, "record", "--rate", "250", "--format", "raw", "--nonblocking"]
    samplers = [
        subprocess.Popen(
            [*command, "--pid", str(pid), "-o", output],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for output, pid in outputs.items()
        if pid is not None
    ]
    try:
        return run()
    finally:
        for sampler in samplers:
            sampler.send_signal(signal.SIGINT)
        for sampler in samplers:
            sampler.wait(30)
