"""A PgBouncer in front of a PostgreSQL, as a platform team may put one (``pool_mode`` given).

The Debian package's binary (``make system-deps``); it refuses to run as root, so a root test run
starts it as ``nobody`` with its files readable by that user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self
from urllib.parse import urlsplit

from testkit.fixtures import free_port

BINARY = "/usr/sbin/pgbouncer"


def available() -> bool:
    return Path(BINARY).is_file() or shutil.which("pgbouncer") is not None


class PgBouncer:
    """``start()``/``stop()``; :meth:`url` is ``dsn`` with PgBouncer's address in place of the server's."""

    def __init__(self, dsn: str, pool_mode: str = "transaction") -> None:
        self.target = urlsplit(dsn)
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="tsp-pgbouncer-"))
        self.dir.chmod(0o755)
        user = self.target.username or "postgres"
        (self.dir / "users.txt").write_text(f'"{user}" ""\n')
        (self.dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={self.target.hostname or '127.0.0.1'} port={self.target.port or 5432}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.dir / 'users.txt'}\n"
            f"pool_mode = {pool_mode}\nmax_client_conn = 100\ndefault_pool_size = 10\n"
            f"logfile = {self.dir / 'pgbouncer.log'}\n"
        )
        for path in self.dir.iterdir():
            path.chmod(0o644)
        if os.geteuid() == 0:  # it runs as nobody, writing its log here
            os.chown(self.dir, pwd.getpwnam("nobody").pw_uid, -1)
        self.process: subprocess.Popen[bytes] | None = None

    def url(self) -> str:
        userinfo = self.target.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return self.target._replace(netloc=netloc).geturl()

    def start(self, timeout: float = 10.0) -> Self:
        binary = BINARY if Path(BINARY).is_file() else shutil.which("pgbouncer") or BINARY
        as_user = ["-u", "nobody"] if os.geteuid() == 0 else []
        self.process = subprocess.Popen(
            [binary, *as_user, str(self.dir / "pgbouncer.ini")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"pgbouncer did not start: {self.logs()[-2000:]}")

    def logs(self) -> str:
        path = self.dir / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(5)
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(5)
            self.process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
