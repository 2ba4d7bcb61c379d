"""A private Postgres server for tests that stop it (``pg_ctl stop -m fast`` / ``-m immediate``) or
freeze it (``pause()``: SIGSTOP of every process of the cluster, a hung server; ``resume()``).

The machine's shared Postgres must never be stopped or reconfigured (other test runs use it), so a
fault test starts a cluster of its own: made with ``initdb`` and run with ``pg_ctl`` from the system's
PostgreSQL binaries, on a free port, in a temporary directory removed afterwards. As root, Postgres
refuses to run, so the cluster then belongs to the ``postgres`` system user. (Redis: see
:mod:`testkit.redisproc`.)
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from svckit.listen import url_host

from testkit.fixtures import free_port
from testkit.tmpfs import Tmpfs

PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
StopMode = Literal["smart", "fast", "immediate"]


def postgres_bin() -> Path | None:
    """The newest system PostgreSQL with ``initdb`` and ``pg_ctl``, if any."""
    for directory in PG_BIN_DIRS:
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else None


def _wait_port(port: int, timeout: float, host: str = "127.0.0.1") -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.settimeout(0.2)
            if sock.connect_ex((host, port)) == 0:
                return True
        time.sleep(0.05)
    return False


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own: ``start()``, ``stop(mode)``, ``start()``, ``remove()``."""

    def __init__(
        self,
        bin_dir: Path | None = None,
        *,
        passwords: bool = False,
        log_statements: bool = False,
        settings: Mapping[str, str] | None = None,
        standby_of: PrivatePostgres | None = None,
        data_disk_mb: int | None = None,
        wal_disk_mb: int | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        """``standby_of``: a streaming hot standby of that (running) server instead of a new cluster
        (``pg_basebackup -R``: a copy of its data that follows its WAL and answers reads only, until
        :meth:`promote`): what a failover promotes, or what a Service name points at by mistake.
        ``passwords``: every role but ``postgres`` must log in over TCP with its SCRAM password (the
        shared server trusts loopback). ``log_statements``: the server log records every statement.
        ``settings``: more server parameters, as ``postgresql.conf`` writes them (quoted where it must):
        what a test needs of the server that the shared one must not be reconfigured for (say
        ``shared_preload_libraries = 'pg_stat_statements'``, to count what the services send).
        ``data_disk_mb`` / ``wal_disk_mb``: the data directory / ``pg_wal`` (then a directory of its own,
        ``initdb --waldir``, in 1 MB segments) on a tmpfs of that size (:mod:`testkit.tmpfs`, root
        only): :attr:`data_disk` / :attr:`wal_disk`, to fill and free as a full volume.
        ``host``: the one address it listens on (``::1``: an IPv6-only server, nothing on 127.0.0.1)."""
        self.host = host
        self.passwords = passwords
        self.log_statements = log_statements
        self.settings = dict(settings or {})
        found = bin_dir or postgres_bin()
        if found is None:
            raise RuntimeError("no PostgreSQL binaries (initdb, pg_ctl) on this machine")
        self.bin = found
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="tsp-pg-"))
        self.data = self.root / "data"
        self.wal = self.root / "wal"
        self.log = self.root / "server.log"
        self._user: str | None = None
        uid = gid = 0
        if os.geteuid() == 0:
            self._user = "postgres"
            user = pwd.getpwnam(self._user)  # KeyError: no such user on this machine
            uid, gid = user.pw_uid, user.pw_gid
            self.root.chmod(0o755)
            shutil.chown(self.root, self._user)
        self.data_disk = None if data_disk_mb is None else Tmpfs(self.data, data_disk_mb, uid=uid, gid=gid)
        self.wal_disk = None if wal_disk_mb is None else Tmpfs(self.wal, wal_disk_mb, uid=uid, gid=gid)
        try:
            for disk in (self.data_disk, self.wal_disk):
                if disk is not None:
                    disk.mount()
            if standby_of is None:
                self._initdb()
            else:
                self._basebackup(standby_of)
        except BaseException:
            self._unmount()
            shutil.rmtree(self.root, ignore_errors=True)  # no server of it to remove later
            raise

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@{url_host(self.host)}:{self.port}/postgres"

    def _run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            check=check,
            capture_output=True,
            text=True,
            timeout=timeout,
            user=self._user,
            cwd=self.root,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"},
        )

    def _initdb(self) -> None:
        separate_wal = ["--waldir", str(self.wal), "--wal-segsize=1"] if self.wal_disk is not None else []
        self._run(
            "initdb",
            "-D",
            str(self.data),
            *separate_wal,
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        )
        settings = {
            "listen_addresses": f"'{self.host}'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
            "fsync": "off",  # crash recovery (stop -m immediate) needs the WAL, not fsync
            "full_page_writes": "off",
            "max_connections": "60",
            "shared_buffers": "32MB",
            "logging_collector": "off",
        }
        if self.wal_disk is not None:  # 1 MB segments: a few MB of WAL between checkpoints
            settings |= {"min_wal_size": "4MB", "max_wal_size": "16MB"}
        if self.log_statements:
            settings["log_statement"] = "'all'"
        settings |= self.settings
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
        if self.passwords:
            (self.data / "pg_hba.conf").write_text(
                "local all all trust\n"
                "host all postgres 127.0.0.1/32 trust\n"
                "host all postgres ::1/128 trust\n"
                "host all all 127.0.0.1/32 scram-sha-256\n"
                "host all all ::1/128 scram-sha-256\n"
            )

    def _basebackup(self, primary: PrivatePostgres) -> None:
        self._run(
            "pg_basebackup",
            "-D",
            str(self.data),
            "-h",
            primary.host,
            "-p",
            str(primary.port),
            "-U",
            "postgres",
            "-X",
            "stream",
            "-R",  # standby.signal and primary_conninfo: a standby of ``primary`` once started
            "--checkpoint=fast",
            "--no-sync",
        )
        with (self.data / "postgresql.conf").open("a") as conf:  # the last setting of a name wins
            conf.write(f"port = {self.port}\nunix_socket_directories = '{self.root}'\n")

    def promote(self, timeout: float = 30.0) -> None:
        """End a standby's recovery (``pg_ctl promote``): it takes writes from now on, its open
        sessions included."""
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", str(int(timeout)), "promote")

    def start(self, timeout: float = 30.0) -> PrivatePostgres:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", str(int(timeout)), "start")
        if not _wait_port(self.port, timeout, self.host):
            raise RuntimeError(f"postgres did not listen on {self.port}:\n{self.logs()}")
        return self

    def stop(self, mode: StopMode = "fast", timeout: float = 30.0) -> None:
        self._run(
            "pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", str(int(timeout)), "stop", check=False
        )

    def _processes(self) -> list[int]:
        """The postmaster first, then its children (backends, checkpointer, walwriter...)."""
        try:
            postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return []
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                # "pid (comm) state ppid ...": the name may hold spaces, the fields after ")" do not
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == postmaster:
                children.append(int(stat.parent.name))
        return [postmaster, *children]

    def pause(self) -> None:
        """SIGSTOP to every process of the cluster: connections are still accepted by the kernel (the
        listen backlog), nothing is answered, open sessions hang mid-statement (a hung server, a VM
        frozen). The postmaster first, so that it starts no new backend meanwhile."""
        for pid in self._processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT to every process of the cluster (the children first, then the postmaster)."""
        for pid in reversed(self._processes()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def running(self) -> bool:
        result = self._run("pg_ctl", "-D", str(self.data), "status", check=False)
        return result.returncode == 0

    def logs(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-6000:]
        except FileNotFoundError:
            return ""

    def remove(self) -> None:
        self.resume()  # a stopped cluster cannot stop
        if self.data.exists() and self.running():
            self.stop("immediate")
        self._unmount()
        shutil.rmtree(self.root, ignore_errors=True)

    def _unmount(self) -> None:
        for disk in (self.data_disk, self.wal_disk):
            if disk is not None:
                disk.unmount()

    def __enter__(self) -> PrivatePostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.remove()
