"""A size-limited filesystem for a test's Postgres: a ``tmpfs`` mounted as root, filled on purpose.

A disk that fills up cannot be had from the machine's disks without filling them for every other run;
a ``tmpfs`` with ``size=`` is a filesystem of its own whose writes fail with ``ENOSPC`` at that size,
as a full volume's do. :meth:`Tmpfs.fill` writes a ballast file that leaves only a few bytes free (so
that the test's write load fills the rest within a second instead of writing the whole size), and
:meth:`Tmpfs.free` removes it: the space freed, as an operator who grows the volume or deletes files.

Mounting needs root (CI runs the fault suite as root); :func:`can_mount` says whether it is possible
here, and a test skips with that reason otherwise.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from pathlib import Path

BALLAST = ".ballast"


def can_mount() -> str | None:
    """None if a tmpfs can be mounted here, else why not (a skip reason)."""
    if os.geteuid() != 0:
        return "mounting a size-limited tmpfs needs root (CI runs the fault suite as root)"
    if not Path("/proc/filesystems").exists() or "tmpfs" not in Path("/proc/filesystems").read_text():
        return "no tmpfs in this kernel"
    return None


class Tmpfs:
    """A tmpfs of ``size_mb`` mounted at ``path`` (created if missing), owned by ``uid``:``gid``."""

    def __init__(self, path: Path, size_mb: int, *, uid: int = 0, gid: int = 0) -> None:
        self.path = path
        self.size_mb = size_mb
        self.uid = uid
        self.gid = gid
        self.mounted = False

    def mount(self) -> Tmpfs:
        self.path.mkdir(parents=True, exist_ok=True)
        options = f"size={self.size_mb}m,mode=0700,uid={self.uid},gid={self.gid}"
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(self.path)],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        )
        self.mounted = True
        return self

    def unmount(self) -> None:
        if self.mounted:
            # lazy: a process of the cluster that has not exited yet keeps no busy mount behind
            subprocess.run(["umount", "-l", str(self.path)], check=False, capture_output=True, timeout=30)
            self.mounted = False

    def available(self) -> int:
        """Bytes an unprivileged writer may still write (a tmpfs keeps none back for root)."""
        stat = os.statvfs(self.path)
        return stat.f_bavail * stat.f_frsize

    def fill(self, leave: int = 0) -> None:
        """Take all but ``leave`` bytes with the ballast file (grown if it exists already)."""
        ballast = self.path / BALLAST
        with ballast.open("ab") as file:
            # a server writing meanwhile may take some of what was measured: measured again, and what
            # is left taken in ever smaller parts (a failed fallocate on tmpfs allocates nothing)
            part = None
            while (grow := self.available() - leave) > 0:
                part = grow if part is None else min(part, grow)
                try:
                    os.posix_fallocate(file.fileno(), file.seek(0, os.SEEK_END), part)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC or part <= 4096:
                        if exc.errno == errno.ENOSPC:
                            return  # full to the last page
                        raise
                    part //= 2

    def free(self) -> None:
        """Remove the ballast: the space :meth:`fill` took is free again."""
        with contextlib.suppress(FileNotFoundError):
            (self.path / BALLAST).unlink()
