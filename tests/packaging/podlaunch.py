"""Start one container of a rendered pod the way the kubelet would, on this machine, without a runtime.

Run as root inside a private mount namespace (``unshare --mount --propagation private python
podlaunch.py spec.json``): it builds the container's view of the filesystem under a new root and then
becomes the container's process (exec, same pid), so that a signal to the started process reaches the
service and the namespace, with every mount below, goes away with it.

The view: this machine's root filesystem shown READ-ONLY (``readOnlyRootFilesystem: true``; the
image's ``/opt/venv`` and ``/opt/app`` recreations bound read-only over it), a fresh /proc, /sys and
/dev read-only, the container runtime's own writable /dev/shm, then the pod's volumes exactly at their
mountPaths (``spec["mounts"]``: a size-limited tmpfs per emptyDir, a read-only directory of files per
Secret/ConfigMap) and the pod's /etc/hosts. Then chroot, the working directory of the image, and
``setpriv`` to the rendered uid/gid with no supplementary groups, no new privileges and no
capabilities (``runAsUser``/``runAsGroup``, ``allowPrivilegeEscalation: false``, ``drop: [ALL]``).

When the spec names ``cgroups`` (the ``cgroup.procs`` files of groups testkit.cgroups made with the
container's rendered ``resources``), the launcher joins them first, so the service and every worker it
forks run under the container's memory and CPU limits.

A mount point missing from this machine (``/opt/app``, ``/etc/timesheets/gateway``) cannot be created
in the read-only view, nor on the machine: its deepest existing parent is shadowed by a tmpfs holding
bind mounts of that parent's entries, where the missing directories are created, read-only again after.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def shadow(root: Path, parent: Path, shadows: list[Path], mode: str = "0755") -> None:
    """Replace ``root/parent`` by a tmpfs holding bind mounts of the machine's entries of ``parent``."""
    target = root / parent.relative_to("/")
    entries = sorted(parent.iterdir()) if parent.is_dir() else []
    mount("-t", "tmpfs", "-o", f"size=1m,mode={mode}", "tmpfs", str(target))
    shadows.append(target)
    for entry in entries:
        place = target / entry.name
        if entry.is_symlink():
            place.symlink_to(os.readlink(entry))
        elif entry.is_dir():
            place.mkdir()
            mount("--rbind", str(entry), str(place))
        else:
            place.touch()
            mount("--bind", str(entry), str(place))


def mount_point(root: Path, path: str, shadows: list[Path], *, is_file: bool = False) -> Path:
    """``root/path``, created (directory, or empty file) in a shadow of its deepest existing parent."""
    target = root / path.lstrip("/")
    if target.exists():
        return target
    parent = Path(path).parent
    while not (root / str(parent).lstrip("/")).exists():
        parent = parent.parent
    if root / str(parent).lstrip("/") not in shadows:
        shadow(root, parent, shadows)
    if is_file:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch()
    else:
        target.mkdir(parents=True, exist_ok=True)
    return target


def main(spec_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    # the container's cgroups first (its resource limits, testkit.cgroups): whatever it starts follows
    for procs in spec.get("cgroups", []):
        Path(procs).write_text(str(os.getpid()))
    root = Path(spec["root"])
    root.mkdir(parents=True, exist_ok=True)
    shadows: list[Path] = []
    # the image's root: a tmpfs holding this machine's top-level entries, each bound (not recursively:
    # /proc, /sys, /dev and other mounts are not in them), so that a volume may be mounted at a new
    # top-level directory, as a container runtime creates one in the container's layer
    mount("-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(root))
    shadows.append(root)  # read-only at the end, as every shadow
    for entry in sorted(Path("/").iterdir()):
        place = root / entry.name
        if entry.is_symlink():
            place.symlink_to(os.readlink(entry))
        elif entry.is_dir():
            place.mkdir()
            if entry.name not in ("proc", "sys", "dev"):
                mount("--bind", str(entry), str(place))
                mount("-o", "remount,bind,ro", str(place))  # now: a volume may be mounted over it
        else:
            place.touch()
            mount("--bind", str(entry), str(place))
            mount("-o", "remount,bind,ro", str(place))
    mount("-t", "proc", "proc", str(root / "proc"))
    mount("--bind", "/sys", str(root / "sys"))
    mount("--bind", "/dev", str(root / "dev"))
    # the container runtime's own /dev/shm (writable, 64 MiB), not the chart's
    mount("-t", "tmpfs", "-o", "size=64m,mode=1777", "tmpfs", str(root / "dev" / "shm"))
    # the base interpreter of the runtime venv lives in this machine's /root (0700); an image's
    # python lives in a world-readable /usr/local: only the interpreter is shown there
    for extra in spec.get("readable", []):
        top = root / Path(extra).parts[1]
        mount("-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(top))
        shadows.append(top)
        (root / extra.lstrip("/")).mkdir(parents=True)
        mount("--bind", extra, str(root / extra.lstrip("/")))
        mount("-o", "remount,bind,ro", str(root / extra.lstrip("/")))
    for item in spec["mounts"]:
        target = mount_point(root, item["path"], shadows, is_file=item["kind"] == "file")
        if item["kind"] == "tmpfs":
            mount("-t", "tmpfs", "-o", f"size={item['size']},mode=0777", "tmpfs", str(target))
        else:  # a directory or a file of this machine, bound read-only (or writable when asked)
            mount("--bind", item["source"], str(target))
            if item.get("readOnly", True):
                mount("-o", "remount,bind,ro", str(target))
    for path in [root / "sys", root / "dev", *shadows]:
        mount("-o", "remount,bind,ro", str(path))
    os.chroot(root)
    os.chdir(spec["workingDir"])
    setpriv = [
        "setpriv",
        f"--reuid={spec['uid']}",
        f"--regid={spec['gid']}",
        "--clear-groups",
        "--no-new-privs",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--",
    ]
    os.execvpe(setpriv[0], [*setpriv, *spec["argv"]], spec["env"])


if __name__ == "__main__":
    main(sys.argv[1])
