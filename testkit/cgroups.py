"""A process tree under a pod's resource limits, as the kubelet puts a container (cgroup v1).

The kubelet runs each container in a memory cgroup whose ``memory.limit_in_bytes`` is the container's
``resources.limits.memory`` (no swap: Kubernetes nodes run without it), so the kernel OOM-kills a
process of the container once its charge (anonymous memory, tmpfs pages such as a ``medium: Memory``
emptyDir, page cache it cannot reclaim) would go over; and in a CPU cgroup whose CFS quota is
``resources.limits.cpu`` (none: unthrottled, weighted by ``cpu.shares`` from the request). This
module makes such a group on this machine, below the test process's own cgroups (so whatever bounds
the test run still bounds the pod), and reads what the kernel tells of it afterwards: the peak charge
(``memory.max_usage_in_bytes``), how often the limit was hit (``memory.failcnt``) and how many
processes it OOM-killed (``oom_kill`` of ``memory.oom_control``).

:func:`unavailable` says why not when the hierarchy is not there or not writable (a container without
cgroup v1 mounted read-write): callers skip with that reason.

A CPU quota stands for the worst the node gives a pod without a CPU limit: when every pod on a busy
node uses its request, CFS shares give this one its request and no more (:meth:`Cgroup.cpu_quota`).
The quota is a ceiling, not a guarantee: here the group competes as one task among whatever else runs
on this machine, so a caller checks that the pod did get its request (:meth:`Cgroup.cpu_seconds`).
(The largest ``cpu.shares`` would guarantee it, but also let a group's low-priority threads on the
other core take its quota ahead of its event loop: the identity provider's nice-19 hashing threads
then doubled its probes' p99, 0.24-0.32 → 1.0-1.2 s at /healthz, a competition no node's pod has.)
"""

from __future__ import annotations

import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
CFS_PERIOD_US = 100_000
_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "": 1}


def memory_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity (``512Mi``, ``1G``, ``134217728``) in bytes."""
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|k|M|G|)", str(quantity))
    if match is None:
        raise ValueError(f"not a memory quantity: {quantity!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]


def cpu_millis(quantity: str) -> int:
    """A Kubernetes CPU quantity (``250m``, ``1``, ``0.5``) in millicores."""
    text = str(quantity)
    if text.endswith("m"):
        return int(text[:-1])
    return round(float(text) * 1000)


def _own(controller: str) -> Path:
    """This process's cgroup directory of ``controller`` (from /proc/self/cgroup)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return ROOT / controller / path.lstrip("/")
    raise FileNotFoundError(f"no {controller} cgroup in /proc/self/cgroup")


def unavailable() -> str | None:
    """Why a group cannot be made here (``None``: it can): cgroup v1 memory and cpu, writable."""
    for controller, knob in (("memory", "memory.limit_in_bytes"), ("cpu", "cpu.cfs_quota_us")):
        try:
            parent = _own(controller)
        except (FileNotFoundError, ValueError) as exc:
            return f"cgroup v1 {controller} controller not mounted ({exc})"
        if not (parent / knob).exists():
            return f"no cgroup v1 {controller} hierarchy at {parent} ({knob} missing)"
        if not os.access(parent, os.W_OK):
            return f"cgroup v1 {controller} hierarchy at {parent} is not writable (not root, or read-only)"
    return None


@dataclass
class Cgroup:
    """One container's memory and cpu groups; :attr:`procs` are the files a process joins by."""

    name: str
    memory: Path
    cpu: Path

    @classmethod
    def create(
        cls, name: str, memory_limit: int | None = None, cpu_limit_millis: int | None = None
    ) -> Cgroup:
        reason = unavailable()
        if reason is not None:
            raise RuntimeError(reason)
        unique = f"tsp-{name}-{secrets.token_hex(3)}"
        group = cls(unique, _own("memory") / unique, _own("cpu") / unique)
        group.memory.mkdir()
        group.cpu.mkdir()
        if memory_limit is not None:
            group.memory_limit(memory_limit)
        group.cpu_quota(cpu_limit_millis)
        return group

    @property
    def procs(self) -> list[str]:
        return [str(self.memory / "cgroup.procs"), str(self.cpu / "cgroup.procs")]

    def join(self, pid: int) -> None:
        """Move ``pid`` in (its later children follow; those it already has do not)."""
        for procs in self.procs:
            Path(procs).write_text(str(pid))

    def memory_limit(self, limit: int) -> None:
        """The container's memory limit, swap included (a node runs without swap)."""
        (self.memory / "memory.swappiness").write_text("0")
        (self.memory / "memory.limit_in_bytes").write_text(str(limit))
        memsw = self.memory / "memory.memsw.limit_in_bytes"
        if memsw.exists():
            memsw.write_text(str(limit))

    def cpu_quota(self, millis: int | None) -> None:
        """A CFS quota of ``millis`` thousandths of a CPU (``None``: unlimited, as without a limit)."""
        (self.cpu / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
        quota = -1 if millis is None else max(1000, CFS_PERIOD_US * millis // 1000)
        (self.cpu / "cpu.cfs_quota_us").write_text(str(quota))

    def cpu_periods(self) -> tuple[int, int]:
        """(CFS periods elapsed while the group ran, of which throttled) so far."""
        fields = dict(line.split() for line in (self.cpu / "cpu.stat").read_text().splitlines())
        return int(fields["nr_periods"]), int(fields["nr_throttled"])

    def cpu_seconds(self) -> float:
        """CPU time (user and system, every thread) the group's processes have used so far."""
        ticks = 0
        for pid in [int(p) for p in (self.cpu / "cgroup.procs").read_text().split()]:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except FileNotFoundError:
                continue  # exited since
            fields = stat.rsplit(")", 1)[1].split()  # after the command's name, which may hold spaces
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
        return ticks / os.sysconf("SC_CLK_TCK")

    def _read(self, knob: str) -> str:
        return (self.memory / knob).read_text()

    @property
    def limit_bytes(self) -> int:
        return int(self._read("memory.limit_in_bytes"))

    @property
    def usage_bytes(self) -> int:
        return int(self._read("memory.usage_in_bytes"))

    @property
    def peak_bytes(self) -> int:
        """The highest charge since creation or :meth:`reset_peak` (anonymous, tmpfs and page cache)."""
        return int(self._read("memory.max_usage_in_bytes"))

    def reset_peak(self) -> None:
        (self.memory / "memory.max_usage_in_bytes").write_text("0")

    @property
    def failcnt(self) -> int:
        """How often a charge hit the limit (reclaim ran; not yet an OOM kill)."""
        return int(self._read("memory.failcnt"))

    @property
    def oom_kills(self) -> int:
        """Processes of the group the kernel OOM-killed."""
        fields = dict(line.split() for line in self._read("memory.oom_control").splitlines())
        return int(fields.get("oom_kill", "0"))

    def rss_bytes(self) -> int:
        """The group's anonymous memory now (``total_rss`` of memory.stat): what a process holds."""
        fields = dict(line.split() for line in self._read("memory.stat").splitlines())
        return int(fields["total_rss"])

    def throttled(self) -> tuple[int, float]:
        """(periods throttled, seconds throttled) of the CPU quota so far."""
        fields = dict(line.split() for line in (self.cpu / "cpu.stat").read_text().splitlines())
        return int(fields["nr_throttled"]), int(fields["throttled_time"]) / 1e9

    def pids(self) -> list[int]:
        return [int(p) for p in (self.memory / "cgroup.procs").read_text().split()]

    def remove(self, timeout: float = 10.0) -> None:
        """Gone once its processes are (they are the caller's to stop first)."""
        deadline = time.monotonic() + timeout
        for path in (self.memory, self.cpu):
            while path.exists():
                try:
                    path.rmdir()
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
