"""``python -m <service> [serve|migrate|<extra>]``: one entry point shape for every service."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import ssl
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import uvicorn
from uvicorn.supervisors import ChangeReload

from . import server
from .db import LOCK_ERRORS, LOCK_REFUSAL, READ_ONLY_ERRORS, UNAVAILABLE_ERRORS
from .dbtls import DatabaseTls, SslMode, describe_connect_error
from .fdlimit import check_open_files
from .listen import url_host
from .logs import configure_logging
from .metrics import MetricsServer, forget_dead_processes, http_max_connections
from .metrics import bind_listener as metrics_socket
from .migrations import LOCK_ATTEMPTS, LOCK_TIMEOUT_SECONDS, MigrationError, migrate
from .roles import RoleError, RuntimeRole
from .server import ProblemHttpProtocol
from .settings import DatabaseSettings, ServiceSettings, copy_with, load_settings

S = TypeVar("S", bound=ServiceSettings)

Command = Callable[[S, list[str]], int]

log = logging.getLogger("svckit.cli")

#: how uvicorn serves every service (besides the kit's protocol): the kit's own JSON logs and no access
#: log of uvicorn's (the front writes one), no ``server`` header, no proxy headers (the gateway's
#: forwarding is the only one trusted), the kit's keep-alive, a lifespan that must succeed
SERVING_OPTIONS: dict[str, Any] = {
    "log_config": None,
    "access_log": False,
    "server_header": False,
    "proxy_headers": False,
    # no WebSocket routes anywhere: an Upgrade request is plain HTTP to the app (uvicorn[standard]
    # would otherwise answer it itself, in text/plain, before the kit's problem documents)
    "ws": "none",
    "timeout_keep_alive": server.KEEP_ALIVE_SECONDS,
    "lifespan": "on",
}


def serving_limits(settings: ServiceSettings) -> dict[str, Any]:
    """The kit's serving settings as :class:`svckit.server.ServingConfig` takes them: the timeouts of
    clients that stop sending or reading, the open connections of a worker, and how long a worker's
    event loop may be silent (or a worker take to start) before its supervisor kills it."""
    return {
        "request_head_timeout": settings.request_head_timeout_seconds,
        "request_body_timeout": settings.request_body_timeout_seconds,
        "response_send_timeout": settings.response_send_timeout_seconds,
        "max_connections": settings.max_connections_per_worker,
        "worker_stuck_seconds": settings.worker_stuck_seconds,
        "worker_start_seconds": settings.worker_start_seconds,
    }


def serve(
    app_factory: str,
    settings: ServiceSettings,
    workers: int = 1,
    http_protocol: type[ProblemHttpProtocol] = ProblemHttpProtocol,
) -> int:
    """Serve with the kit's HTTP protocol and shutdown (:mod:`svckit.server`): SIGTERM stops
    accepting (later connections are refused, queued ones served), lets in-flight requests finish up
    to the bound with ``Connection: close``, then runs the lifespan shutdown that closes pools. The
    request head and body timeouts, the send timeout and the connection limit come from the settings
    (:class:`svckit.server.ServingConfig`).
    ``http_protocol``: a subclass of the kit's protocol (the gateway serves its API through its own)."""
    config = server.ServingConfig(
        app_factory,
        factory=True,
        host=settings.bind_host,
        port=settings.port,
        workers=workers,
        http=http_protocol,
        timeout_graceful_shutdown=int(settings.shutdown_timeout_seconds),
        **serving_limits(settings),
        **SERVING_OPTIONS,
    )
    return server.serve(config, workers)


class ReloadedProcess:
    """What DEV_RELOAD's reloader runs in each child it starts: the metrics listener, on the socket
    the reloader bound once, then uvicorn. The listener is in the application's process, as without
    DEV_RELOAD, so ``/metrics`` is the same: it was in the reloader, reading the child's samples from
    multiprocess files, which hold neither what a collector reads at scrape time (the database pool's
    ``db_pool_connections``) nor the runtime's collectors nor the counters' ``_created``. A class of
    this module, so the reloader can hand it to the spawned child."""

    def __init__(self, config: uvicorn.Config, metrics_listener: socket.socket) -> None:
        self.config = config
        self.metrics_listener = metrics_listener

    def __call__(self, sockets: list[socket.socket] | None = None) -> None:
        forget_dead_processes()  # the gateway's multiprocess files: the previous child's live gauges
        host, port = self.metrics_listener.getsockname()[:2]
        if isinstance(self.config, server.ServingConfig):  # this child's gauge, not the reloader's
            http_max_connections.set(self.config.max_connections)
        heartbeat, readiness = server.probe_slots()
        server.serving_alone(heartbeat, readiness)  # the probes of this child's metrics listener
        metrics = MetricsServer(host, port, listener=self.metrics_listener).start()
        try:
            server.BeatingServer(self.config, heartbeat=heartbeat).run(sockets=sockets)
        finally:
            metrics.stop()


def serve_reloading(
    app_factory: str,
    settings: ServiceSettings,
    http_protocol: type[ProblemHttpProtocol] = ProblemHttpProtocol,
    *,
    metrics_listener: socket.socket,
) -> int:
    """Development only (DEV_RELOAD; the chart's devMode.sourceSync under `skaffold dev`): uvicorn's
    reloader restarts the app whenever a Python file under PYTHONPATH changes — where skaffold syncs
    edited sources. The app runs in a child process, with the metrics listener on
    ``metrics_listener`` (:class:`ReloadedProcess`). The child gets the kit's configuration, so the
    same HTTP layer, request timeouts and metrics as in production: only the restarts differ."""
    watched = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p] or [os.getcwd()]
    config = server.ServingConfig(
        app_factory,
        factory=True,
        host=settings.bind_host,
        port=settings.port,
        reload=True,
        reload_dirs=watched,
        http=http_protocol,
        **serving_limits(settings),
        **SERVING_OPTIONS,
    )
    listener = config.bind_socket()
    try:
        # uvicorn.Server, not the kit's DrainingServer: each restart hands the same listener on
        ChangeReload(config, target=ReloadedProcess(config, metrics_listener), sockets=[listener]).run()
    finally:
        listener.close()
    return 0


def bind_metrics_listener(settings: ServiceSettings) -> socket.socket | None:
    """The metrics listener's socket on METRICS_PORT, bound before anything else starts. ``None``
    (after one line on stderr) when the port cannot be bound."""
    try:
        return metrics_socket(settings.bind_host, settings.metrics_port)
    except OSError as exc:
        print(
            f"cannot serve metrics on {url_host(settings.bind_host)}:{settings.metrics_port} (METRICS_PORT): "
            f"{exc.strerror or exc}",
            file=sys.stderr,
            flush=True,
        )
        return None


def start_metrics_listener(settings: ServiceSettings) -> MetricsServer | None:
    """The metrics listener on METRICS_PORT, in this process — with several workers that is uvicorn's
    supervisor, which aggregates the workers' samples — started before uvicorn and kept through the
    drain. ``None`` (after one line on stderr) when the port cannot be bound."""
    listener = bind_metrics_listener(settings)
    if listener is None:
        return None
    return MetricsServer(settings.bind_host, settings.metrics_port, listener=listener).start()


async def migrate_with_wait(
    dsn: str,
    schema: str,
    directory: Path,
    wait_seconds: float,
    tls: ssl.SSLContext | SslMode | None = None,
    role: RuntimeRole | None = None,
    lock_timeout: float = LOCK_TIMEOUT_SECONDS,
    lock_attempts: int = LOCK_ATTEMPTS,
) -> list[int]:
    """A migration Job may start before Postgres is ready; wait for it instead of crash-looping.
    A TLS failure (a refused certificate, no TLS at the server) does not go away by waiting: it
    fails at once."""
    deadline = time.monotonic() + wait_seconds
    delay = 0.5
    while True:
        try:
            return await migrate(
                dsn,
                schema,
                directory,
                ssl=tls,
                role=role,
                lock_timeout=lock_timeout,
                lock_attempts=lock_attempts,
            )
        except UNAVAILABLE_ERRORS as exc:
            if time.monotonic() > deadline or describe_connect_error(exc).startswith("TLS"):
                raise
            if isinstance(exc, READ_ONLY_ERRORS):  # reachable, but a standby: a failover may end it
                log.warning(
                    "the database takes no writes (a hot standby or a demoted primary: migrations need "
                    "the primary), retrying migration",
                    extra={"retry_in": delay, "error": f"{type(exc).__name__}: {exc}"[:200]},
                )
            else:
                log.warning("database not reachable yet, retrying migration", extra={"retry_in": delay})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def refused_login(exc: asyncpg.PostgresError) -> bool:
    """The server refused the connection itself: the login (SQLSTATE class 28: an unknown role, a
    wrong password, pg_hba) or the database name (3D000). Waiting does not help, unlike an unreachable
    server; the message names the SQLSTATE, never the URL."""
    sqlstate = str(getattr(exc, "sqlstate", "") or "")
    return sqlstate.startswith("28") or sqlstate == "3D000"


#: what :func:`database_failure` sorts out of a command's errors
DATABASE_ERRORS: tuple[type[BaseException], ...] = (*UNAVAILABLE_ERRORS, asyncpg.PostgresError)


def database_failure(exc: BaseException, tls: DatabaseTls | None) -> str | None:
    """Why a command could not use its database, in one line for an operator (never the URL), or
    ``None`` when ``exc`` is about something else (a statement that failed: its traceback says where)."""
    if isinstance(exc, LOCK_ERRORS):
        return LOCK_REFUSAL
    if isinstance(exc, READ_ONLY_ERRORS):
        return (
            f"the database takes no writes ({type(exc).__name__}, SQLSTATE 25006): DATABASE_URL reaches "
            "a hot standby or a demoted primary, not the primary"
        )
    if isinstance(exc, UNAVAILABLE_ERRORS):
        reason = describe_connect_error(exc, tls)
        return reason if reason.startswith("TLS") else f"database unreachable ({reason})"
    if isinstance(exc, asyncpg.PostgresError) and refused_login(exc):
        return (
            f"the database refused the connection ({type(exc).__name__}, SQLSTATE {exc.sqlstate}): "
            "the role, its password or the database name"
        )
    return None


def run_cli(
    *,
    name: str,
    settings_cls: type[S],
    app_factory: str,
    schema: str | None = None,
    migrations: Path | None = None,
    commands: Mapping[str, Command[S]] | None = None,
    workers: Callable[[S], int] | None = None,
    argv: Sequence[str] | None = None,
    http_protocol: type[ProblemHttpProtocol] = ProblemHttpProtocol,
    open_files: Callable[[S], int] | None = None,
    files_per_connection: int = 1,
) -> int:
    """The entry point of ``name``. ``open_files``: the descriptors a worker of this service holds
    besides the kit's and its client connections, at most (the gateway's upstream pools), for the
    start-up check of the open-file limit (:mod:`svckit.fdlimit`); ``files_per_connection``: the
    descriptors one client connection may hold, itself included (the gateway's 2: an SPA file it
    streams)."""
    extra = dict(commands or {})
    choices = ["serve", *(["migrate"] if migrations else []), *extra]
    parser = argparse.ArgumentParser(prog=f"python -m {name}", description=f"The {name} service.")
    parser.add_argument("command", nargs="?", default="serve", choices=choices)
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the command")
    parsed = parser.parse_args(argv)

    settings = load_settings(settings_cls)
    configure_logging(name, settings.log_level)

    if parsed.command == "serve":
        if missing := settings.missing_identity_pairs():
            print(f"invalid configuration: {missing}", file=sys.stderr, flush=True)
            return 2
        files = check_open_files(settings, open_files(settings) if open_files else 0, files_per_connection)
        if files.refusal is not None:
            print(files.refusal, file=sys.stderr, flush=True)
            return 2
        if files.max_connections != settings.max_connections_per_worker:  # the default, lowered to fit
            settings = copy_with(settings, max_connections_per_worker=files.max_connections)
        http_max_connections.set(settings.max_connections_per_worker)
        if settings.dev_reload:  # the listener is served by the application's process (ReloadedProcess)
            listener = bind_metrics_listener(settings)
            if listener is None:
                return 1
            try:
                return serve_reloading(app_factory, settings, http_protocol, metrics_listener=listener)
            finally:
                listener.close()
        metrics = start_metrics_listener(settings)
        if metrics is None:
            return 1
        try:
            return serve(app_factory, settings, workers(settings) if workers else 1, http_protocol)
        finally:
            metrics.stop()
    if parsed.command == "migrate":
        assert migrations is not None
        assert schema is not None
        if not isinstance(settings, DatabaseSettings):
            raise TypeError("migrate needs DatabaseSettings")
        tls = settings.database_tls
        try:
            role = settings.runtime_role
            if role is None:
                log.warning(
                    "DB_RUNTIME_ROLE is not set: no runtime role is prepared, so the service can only run "
                    "as the owner of its tables (svckit.roles; not for production)",
                    extra={"schema": schema},
                )
            applied = asyncio.run(
                migrate_with_wait(
                    settings.database_url,
                    schema,
                    migrations,
                    wait_seconds=60,
                    tls=tls.context(),
                    role=role,
                    lock_timeout=settings.db_migration_lock_timeout_seconds,
                    lock_attempts=settings.db_migration_lock_attempts,
                )
            )
        except (MigrationError, RoleError) as exc:
            print(f"migration refused: {exc}", file=sys.stderr, flush=True)
            return 1
        except DATABASE_ERRORS as exc:
            reason = database_failure(exc, tls)
            if reason is None:
                raise  # a statement of a migration failed: its traceback says where
            print(f"migration failed: {reason}", file=sys.stderr, flush=True)
            return 1
        log.info("migrations complete", extra={"schema": schema, "applied": applied})
        return 0
    try:
        return extra[parsed.command](settings, list(parsed.args))
    except DATABASE_ERRORS as exc:
        # an operator's command (a Job, a kubectl exec) while Postgres is away, full or misnamed: one
        # line, as migrate says it, not a traceback; any other database error keeps its traceback
        db_tls = settings.database_tls if isinstance(settings, DatabaseSettings) else None
        if (reason := database_failure(exc, db_tls)) is None:
            raise
        print(f"{parsed.command} failed: {reason}", file=sys.stderr, flush=True)
        return 1
