"""Test fixtures and helpers shared by every service's tests (loaded from the root conftest).

Tests never touch dev data: each session gets its own Postgres database (created on the server
named by ``DATABASE_URL``, dropped afterwards) and its own Redis key prefix. Services under test run
as real HTTP servers on loopback, either in-process (:func:`serve_app`) or as subprocesses started
exactly as in production (:class:`ServiceProcess`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import pytest
import uvicorn
from starlette.types import ASGIApp, Receive, Send
from svckit.db import Database
from svckit.identity import GATEWAY, PAIRS, Identity, IdentitySigner, pair_variable, request_target
from svckit.listen import url_host
from svckit.metrics import MetricsServer
from svckit.migrations import migrate
from svckit.roles import RuntimeRole, role_url
from svckit.server import KEEP_ALIVE_SECONDS, ProblemHttpProtocol
from svckit.settings import parse_identity_keys

from testkit.clihost import CliHost

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[1]
_embedded: list[Any] = []

#: This test session's id: in its database names, Redis prefix and database role names.
RUN_ID = f"{os.getpid()}_{secrets.token_hex(3)}"
#: Every database role this session creates starts with this (see "database roles" below).
ROLE_PREFIX = f"tspt_{RUN_ID}_"
_ROLE_PASSWORD = secrets.token_urlsafe(24)


#: The ``pytest -n`` worker running this process (``gw0``, ``gw1``…; ``""`` without xdist). Every name
#: this session makes on a shared server already carries :data:`RUN_ID` (a process id), so workers never
#: meet there; ports come from a range of the worker's own (:func:`worker_ports`); what cannot be named
#: per worker (devstack's fixed ports) is one unit of work (:data:`testkit.xdistsched.GROUPS`).
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")


def server_url() -> str:
    """The Postgres server tests create their databases on (``DATABASE_URL``'s server)."""
    return os.environ["DATABASE_URL"]


#: Fixtures that reach a server; the fast tier (``-m unit``) may use none of them.
SERVER_FIXTURES = frozenset(
    {
        "database_url",
        "redis_url",
        "redis_prefix",
        "redis_user",
        "service_redis",
        "service_env",
        "isolated_env",
    }
)


def _unit_only(config: pytest.Config) -> bool:
    return str(config.getoption("markexpr", "") or "").strip() == "unit"


def pytest_configure(config: pytest.Config) -> None:
    """Like ``make dev``: use ``DATABASE_URL`` / ``REDIS_URL`` when set, else start embedded servers.

    ``make unit`` (``-m unit``) starts none: the fast tier runs in process.
    """
    if _unit_only(config):
        return
    if not os.environ.get("DATABASE_URL") or not os.environ.get("REDIS_URL"):
        from devstack.backing import EmbeddedPostgres, EmbeddedRedis

        state = REPO_ROOT / ".local" / "test"
        if not os.environ.get("DATABASE_URL"):
            postgres = EmbeddedPostgres(state, port=5434)
            os.environ["DATABASE_URL"] = postgres.start()
            _embedded.append(postgres)
        if not os.environ.get("REDIS_URL"):
            redis_server = EmbeddedRedis(state, port=6381)
            os.environ["REDIS_URL"] = redis_server.start()
            _embedded.append(redis_server)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadgroup`` (``make test``) with a test file as the unit outside the groups
    (:mod:`testkit.xdistsched`); the other ``--dist`` modes are xdist's own."""
    if config.getoption("dist") != "loadgroup":
        return None
    from testkit.xdistsched import FileGroupScheduling

    return FileGroupScheduling(config, log)


def pytest_unconfigure(config: pytest.Config) -> None:
    if not _unit_only(config) and os.environ.get("DATABASE_URL"):
        try:
            _run_async(drop_templates())  # before the roles: nothing of theirs is left in them
            _run_async(drop_runtime_roles(server_url()))
        except (OSError, asyncpg.PostgresError) as exc:  # never hide the session's own result
            print(
                f"testkit: could not drop the templates or the runtime roles {ROLE_PREFIX}*: {exc}",
                file=sys.stderr,
            )
    while _embedded:
        _embedded.pop().stop()
    while _in_process_metrics:
        _in_process_metrics.pop().stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test marked ``unit`` that needs a server is mislabelled: refuse the run, in every tier."""
    wrong = [
        f"{item.nodeid} uses {sorted(servers)}"
        for item in items
        if item.get_closest_marker("unit") is not None
        and (servers := SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())))
    ]
    if wrong:
        raise pytest.UsageError("tests marked 'unit' must run in process:\n  " + "\n  ".join(wrong))


#: A test report's ``user_properties`` entry ``(SUMMARY + title, lines)`` is printed in the terminal
#: summary under ``title`` (the last report's lines for each title). Why not a conftest's own
#: ``pytest_terminal_summary``: under ``pytest -n`` the test runs in a worker, whose terminal nobody
#: sees, and the controller loads no conftest below the test paths; reports reach it.
SUMMARY = "testkit-summary:"
_summaries: dict[str, list[str]] = {}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """The worker that runs the test and when its set-up began, in its report (``--junitxml`` writes
    them as properties ``xdist-worker`` and ``started-at``, seconds since the epoch): what a CI run's
    critical path is read from — which worker ran what, in what order, and whether one idled at the
    end — which the report's durations alone do not say."""
    item.user_properties.append(("xdist-worker", WORKER or "main"))
    item.user_properties.append(("started-at", f"{time.time():.1f}"))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for name, value in report.user_properties:
        if isinstance(name, str) and name.startswith(SUMMARY) and isinstance(value, list):
            _summaries[name.removeprefix(SUMMARY)] = [str(line) for line in value]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for title, lines in _summaries.items():
        terminalreporter.section(title)
        for line in lines:
            terminalreporter.write_line(line)


_HANDED_OUT: set[int] = set()


async def answer_lifespan(receive: Receive, send: Send) -> None:
    """A raw ASGI test app's lifespan with nothing to start or stop: startup, then shutdown, completed."""
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})


def worker_ports(worker: str, workers: int, ephemeral_from: int) -> range | None:
    """The ports ``free_port`` hands out on xdist worker ``worker`` (``gw0``…) of ``workers``; ``None``
    without xdist (the kernel picks, ``bind(0)``).

    Why: a port from ``bind(("127.0.0.1", 0))`` is free when asked for, and a service binds it a second
    later; meanwhile another worker asking the kernel may be handed the same number, and one of the
    two services fails to start. Slices are disjoint between workers, and lie below the kernel's
    ephemeral range (``ip_local_port_range``, from ``ephemeral_from``), which it never hands out on its
    own, so no other process takes them either.
    """
    match = re.fullmatch(r"gw(\d+)", worker)
    if match is None:
        return None
    width = (ephemeral_from - WORKER_PORTS_FROM) // max(workers, 1)
    if width < 500:
        return None
    start = WORKER_PORTS_FROM + int(match[1]) * width
    return range(start, start + width)


def _ephemeral_from() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


WORKER_PORTS_FROM = 10_000  # above the usual fixed ports (devstack's 8080-9103, databases, brokers)
_WORKER_PORTS = worker_ports(WORKER, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")), _ephemeral_from())
# a random start: two parallel runs at once (two CI clones) rarely walk the same numbers at the same time
_next_port = secrets.randbelow(len(_WORKER_PORTS)) if _WORKER_PORTS else 0


def free_port() -> int:
    """A loopback port nobody listens on, never one this process handed out before.

    The kernel may give a just-closed ephemeral port again: a replica restarted on its old port while
    its metrics listener asks for a fresh one got the same number twice (and refused to start). Under
    ``pytest -n`` the port comes from this worker's own range (:func:`worker_ports`).
    """
    global _next_port
    if _WORKER_PORTS is not None:
        for _ in range(len(_WORKER_PORTS)):
            port = _WORKER_PORTS[_next_port % len(_WORKER_PORTS)]
            _next_port += 1
            if port in _HANDED_OUT:
                continue
            with socket.socket() as sock:
                try:  # no SO_REUSEADDR: a port with connections still in TIME_WAIT is skipped too
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _HANDED_OUT.add(port)
            return port
        raise RuntimeError(f"no free port left in this worker's range {_WORKER_PORTS}")
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


#: Set on every database the tests create on the machine's shared server: a commit is answered before
#: its WAL reaches the disk (2.4-4.4 ms a commit on this machine with it on, 0.15-0.2 ms off). Nothing
#: here crashes that server, so nothing acknowledged is lost; what a crash does to acknowledged commits
#: is the fault suite's, on servers of its own (testkit.pgproc, where fsync is off and crashes are real).
WRITES_NOT_AWAITED_ON_DISK = 'ALTER DATABASE "{name}" SET synchronous_commit = off'


async def create_database(name: str) -> str:
    admin = await asyncpg.connect(server_url())
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.execute(WRITES_NOT_AWAITED_ON_DISK.format(name=name))
    finally:
        await admin.close()
    return with_database(server_url(), name)


async def drop_database(name: str) -> None:
    admin = await asyncpg.connect(server_url())
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def new_identity_keys(*kids: str) -> str:
    """One pair's keys (``kid:secret[,kid:secret…]``) with fresh random secrets."""
    return ",".join(f"{kid}:{secrets.token_urlsafe(32)}" for kid in (kids or ("test1",)))


def new_pair_keys(*generations: str) -> dict[str, str]:
    """Fresh keys for every pair of :data:`svckit.identity.PAIRS`, as environment variables.

    Test environments hold all pairs at once (one ``service_env`` for every service under test); each
    service reads only the pairs it is an end of, exactly as it does in production where it is given
    no others. Key ids name their pair (``gateway-audit-1``), so they are unique per receiver.
    """
    generations = generations or ("1", "0")
    return {
        pair_variable(sender, receiver): new_identity_keys(
            *(f"{sender}-{receiver}-{generation}" for generation in generations)
        )
        for sender, receiver in PAIRS
    }


def pair_signer(keys: Mapping[str, str], sender: str, receiver: str) -> IdentitySigner:
    """The signer ``sender`` uses towards ``receiver`` with the pair keys of :func:`new_pair_keys`."""
    variable = pair_variable(sender, receiver)
    if variable not in keys:
        raise LookupError(f"{sender} → {receiver} is no signing pair (svckit.identity.PAIRS)")
    return IdentitySigner(parse_identity_keys(keys[variable]))


def receiver_env(keys: Mapping[str, str], service: str = "timesheets", **extra: str) -> dict[str, str]:
    """Settings of a kit-level test app that receives signed requests as ``service`` (``SERVICE_NAME``
    picks the pairs it verifies)."""
    return {**keys, "SERVICE_NAME": service, **extra}


def pair_fields(env: Mapping[str, str]) -> dict[str, Any]:
    """The pair keys of an environment as settings keyword arguments (``GatewaySettings(**...)``)."""
    return {name.lower(): value for name, value in env.items() if name.startswith("IDENTITY_KEYS_")}


_services: dict[int, str] = {}  # public port of a service under test → its service name


def service_at(url: str) -> str:
    """The name of the service a test started at ``url`` (the receiver a request to it is signed for)."""
    port = urlsplit(url).port
    if port is None or port not in _services:
        raise LookupError(f"{url} was not started by serve_app or ServiceProcess: its service is unknown")
    return _services[port]


class Caller:
    """Signs requests the way their legitimate sender does, for tests that call a service directly:
    the gateway for users and clients, the service itself for a service principal; the receiver is
    the service the URL belongs to (:func:`service_at`)."""

    def __init__(self, identity_keys: Mapping[str, str]) -> None:
        self.keys = dict(identity_keys)

    def signer(self, receiver: str, sender: str = GATEWAY) -> IdentitySigner:
        return pair_signer(self.keys, sender, receiver)

    def headers(self, identity: Identity, method: str, url: str, **kwargs: Any) -> dict[str, str]:
        """Signed headers for one request; pass ``body=`` (the exact bytes) when it has one."""
        parts = urlsplit(url)
        sender = identity.subject if identity.kind == "service" else GATEWAY
        return self.signer(service_at(url), sender).headers(
            identity, method=method, target=request_target(parts.path, parts.query), **kwargs
        )


def user(
    subject: str,
    *scopes: str,
    issuer: str = "http://localhost:9000/",
    client_id: str = "timesheets-spa",
    name: str = "",
) -> Identity:
    return Identity(issuer, subject, "user", client_id, frozenset(scopes), name or subject)


# ---- metrics of services under test ------------------------------------------------------------
#
# Services serve /metrics on a port of their own (METRICS_PORT), never on their public listener.
# ``metrics_url(service_url)`` is the one way tests find it, whichever way the service was started.

#: Every request method the HTTP parser (llhttp, through httptools) takes in HTTP mode — what a caller
#: can put in ``scope["method"]``; CONNECT wants an authority-form target, so it is not among them.
HTTP_PARSER_METHODS = (
    *("DELETE", "GET", "HEAD", "POST", "PUT", "OPTIONS", "TRACE", "COPY", "LOCK", "MKCOL", "MOVE"),
    *("PROPFIND", "PROPPATCH", "SEARCH", "UNLOCK", "BIND", "REBIND", "UNBIND", "ACL", "REPORT"),
    *("MKACTIVITY", "CHECKOUT", "MERGE", "M-SEARCH", "NOTIFY", "SUBSCRIBE", "UNSUBSCRIBE", "PATCH"),
    *("PURGE", "MKCALENDAR", "LINK", "UNLINK", "SOURCE", "QUERY"),
)
#: what a ``method`` label may say (svckit.metrics.method_label)
METHOD_LABELS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"})

_metrics_urls: dict[int, str] = {}  # public port of a service process → its metrics URL
_in_process: set[int] = set()  # public ports of apps served in this process by serve_app
_in_process_metrics: list[MetricsServer] = []


def metrics_url(service_url: str) -> str:
    """The ``/metrics`` URL of a service under test, given its base URL.

    A :class:`ServiceProcess` has its own metrics listener (``METRICS_PORT`` on a free port). Apps
    served in this process by :func:`serve_app` share this process's registry, as they would share a
    process in production, so they share one metrics listener — the kit's own
    :class:`~svckit.metrics.MetricsServer`, started on first use.
    """
    port = urlsplit(service_url).port  # 127.0.0.1 or localhost: services under test are on loopback
    if port in _metrics_urls:
        return _metrics_urls[port]
    if port in _in_process:
        if not _in_process_metrics:
            _in_process_metrics.append(MetricsServer("127.0.0.1", 0).start())
        return _in_process_metrics[0].url
    raise LookupError(f"{service_url} was not started by serve_app or ServiceProcess: no metrics port known")


class _QuickDrainProtocol(ProblemHttpProtocol):
    """The kit's protocol as services run it, closing idle connections at once when a test ends."""

    idle_grace_seconds = 0.0


def _quick_drain(app: ASGIApp) -> type[ProblemHttpProtocol]:
    """The protocol the app is served with in production (``app.http_protocol``, a subclass of the
    kit's, as the gateway declares), closing idle connections at once when a test ends."""
    protocol = getattr(app, "http_protocol", None)
    if protocol is None:
        return _QuickDrainProtocol
    return type(f"_QuickDrain{protocol.__name__}", (protocol,), {"idle_grace_seconds": 0.0})


@contextlib.asynccontextmanager
async def serve_app(app: ASGIApp, port: int | None = None) -> AsyncIterator[str]:
    """Run an ASGI app on a real loopback socket inside the test's event loop; yield its base URL
    (its metrics: :func:`metrics_url`). Served with the kit's HTTP protocol, as ``python -m`` does
    (problem bodies from the server layer, head limits)."""
    port = port or free_port()
    # proxy_headers off, as svckit.cli serves every service: uvicorn's default wraps the app in its
    # proxy-headers middleware, which production does not have, and behind which the gateway's own
    # protocol could not find the gateway (its API path went untested)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        lifespan="on",
        http=_quick_drain(app),
        proxy_headers=False,
        ws="none",  # as svckit.cli.SERVING_OPTIONS: an Upgrade is plain HTTP to the app
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("server exited during start-up")
        await asyncio.sleep(0.01)
    _in_process.add(port)
    settings = getattr(getattr(app, "state", None), "settings", None)
    if settings is not None:
        _services[port] = settings.service_name
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        _in_process.discard(port)
        server.should_exit = True
        await task


class ServiceProcess:
    """A service started as ``python -m <package>`` with the given environment."""

    def __init__(
        self,
        package: str,
        env: Mapping[str, str],
        *,
        args: tuple[str, ...] = (),
        port: int | None = None,
        log_dir: Path | None = None,
        preexec_fn: Callable[[], None] | None = None,
        host: str = "127.0.0.1",
        bind_host: str | None = None,
    ) -> None:
        """``preexec_fn``: run in the child before the service starts (``subprocess.Popen``'s; a
        test's ``setrlimit``, say). ``host``: the address the service is reached at (``::1`` for an
        IPv6-only stack); ``bind_host``: its ``BIND_HOST``, ``host`` unless given (``::``, say, as
        the chart renders it)."""
        self.package = package
        self.host = host
        self.preexec_fn = preexec_fn
        self.port = port or free_port()
        self.metrics_port = free_port()
        self.env = {
            **os.environ,
            **env,
            "PORT": str(self.port),
            "METRICS_PORT": str(self.metrics_port),
            "BIND_HOST": bind_host or host,
        }
        _metrics_urls[self.port] = self.metrics_url
        _services[self.port] = package
        self.args = args
        self.log_path = (log_dir or Path(tempfile.gettempdir())) / (
            f"{package}-{self.port}-{uuid.uuid4().hex[:6]}.log"
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{url_host(self.host)}:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{url_host(self.host)}:{self.metrics_port}/metrics"

    def start(self, wait_path: str = "/healthz", timeout: float = 30.0) -> ServiceProcess:
        if self.process is not None and self.process.poll() is None:
            return self  # already running: ``with ServiceProcess(...).start(...)`` must not start a second
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.package, *self.args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            preexec_fn=self.preexec_fn,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.package} exited early:\n{self.logs()}")
            try:
                with urllib.request.urlopen(self.url + wait_path, timeout=1) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.package} did not answer {wait_path} in {timeout}s:\n{self.logs()}")

    def logs(self, tail: int | None = 8000) -> str:
        """The process's log, its last ``tail`` characters (enough for a failure message); ``None``:
        all of it, for a check that must not miss an early line."""
        try:
            text = self.log_path.read_text(errors="replace")
            return text if tail is None else text[-tail:]
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# A simple-query protocol message ('Q', int32 length) whose text is a COMMIT (asyncpg sends "COMMIT;").
_COMMIT_MESSAGE = re.compile(rb"Q.{4}(?:COMMIT|END)\b", re.DOTALL | re.IGNORECASE)
# An extended-protocol Execute of the unnamed portal (asyncpg's; any row limit): where a statement
# sent outside BEGIN/COMMIT runs, and so commits.
_EXECUTE_MESSAGE = re.compile(rb"E\x00\x00\x00\x09\x00.{4}", re.DOTALL)


class TcpProxy:
    """A loopback TCP forwarder that a test can cut and restore, to make a backend 'go away'.

    In front of Postgres it can also break a connection exactly around ``COMMIT``
    (:meth:`cut_at_commit`): before the command reaches the server (nothing committed), or after the
    server answered it (committed, but the client never hears so) — the two cases a client cannot
    tell apart.
    """

    def __init__(self, target_host: str, target_port: int, unix_socket: str | None = None) -> None:
        self.target = (target_host, target_port)
        self.unix_socket = unix_socket
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self._pairs: dict[asyncio.StreamWriter, asyncio.StreamWriter] = {}  # client side → server side
        self._commit_cut: Literal["before", "after"] | None = None
        self._drop_reply_of: asyncio.StreamWriter | None = None
        self._commit_marker = b""
        self._commit_pattern = _COMMIT_MESSAGE
        self._marked: set[asyncio.StreamWriter] = set()
        self.commit_cut_done = asyncio.Event()
        self._hung = False

    @classmethod
    def for_postgres(cls, dsn: str) -> TcpProxy:
        """A proxy in front of the server of ``dsn``, over TCP or its Unix socket (``?host=/dir``)."""
        parts = urlsplit(dsn)
        socket_dir = parse_qs(parts.query).get("host", [""])[0]
        port = parts.port or 5432
        if socket_dir.startswith("/"):
            return cls("", port, unix_socket=f"{socket_dir}/.s.PGSQL.{port}")
        return cls(parts.hostname or "127.0.0.1", port)

    def cut_at_commit(
        self, when: Literal["before", "after"], *, after_sending: bytes = b"", autocommit: bool = False
    ) -> asyncio.Event:
        """Arm a one-shot break of the next connection that sends ``COMMIT``: ``before`` it reaches the
        server, or ``after`` the server's answer arrived (which is then dropped). With
        ``after_sending``, only a connection that sent those bytes since (say ``b"INSERT INTO entries"``)
        counts, so a background task's COMMIT does not take the cut meant for a request. Every open
        link is cut at that moment; the proxy keeps accepting new ones. The event fires when done.

        ``autocommit``: the write is one statement outside ``BEGIN``/``COMMIT``
        (:meth:`svckit.db.Database.write_once`), which commits where it runs: the cut is at its
        ``Execute`` instead."""
        self._commit_pattern = _EXECUTE_MESSAGE if autocommit else _COMMIT_MESSAGE
        self._commit_cut = when
        self._commit_marker = after_sending
        self._marked = set()
        self.commit_cut_done = asyncio.Event()
        return self.commit_cut_done

    def hang(self) -> None:
        """From now on nothing is forwarded either way and new connections are accepted but never
        answered: a server that hangs (``SIGSTOP``, a frozen VM), not one that went away."""
        self._hung = True

    def resume(self) -> None:
        """Undo :meth:`hang`: forwarding resumes on the open links (what was sent meanwhile is lost)
        and new connections reach the server; the ones accepted while hung stay unanswered."""
        self._hung = False

    def retarget(self, port: int, host: str = "127.0.0.1", *, cut: bool = False) -> None:
        """New connections reach ``host:port`` from now on (a Service or DNS name moved by a failover).
        The open ones stay with the old server, as TCP connections do, unless ``cut`` drops them
        (the old server died with its sessions)."""
        self.target = (host, port)
        self.unix_socket = None
        if cut:
            self._abort_links()

    def _abort_links(self) -> None:
        for writer in list(self._links):
            writer.transport.abort()
        self._links.clear()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, to_server: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                if self._hung:
                    continue
                if to_server and self._commit_cut is not None and self._commit_marker in data:
                    self._marked.add(writer)
                if (
                    to_server
                    and self._commit_cut is not None
                    and writer in self._marked
                    and self._commit_pattern.search(data)
                ):
                    when, self._commit_cut = self._commit_cut, None
                    if when == "before":
                        self._abort_links()
                        self.commit_cut_done.set()
                        return
                    self._drop_reply_of = writer
                elif not to_server and self._drop_reply_of is not None and self._reply_belongs(writer):
                    self._drop_reply_of = None  # the server committed; its answer never arrives
                    self._abort_links()
                    self.commit_cut_done.set()
                    return
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def _reply_belongs(self, client_writer: asyncio.StreamWriter) -> bool:
        return self._pairs.get(client_writer) is self._drop_reply_of

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self._hung:  # accepted, never answered
            self._links.add(client_w)
            try:
                while await client_r.read(65536):
                    pass
            except ConnectionError:
                pass
            finally:
                self._links.discard(client_w)
            return
        try:
            if self.unix_socket:
                server_r, server_w = await asyncio.open_unix_connection(self.unix_socket)
            else:
                server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.close()
            return
        if self._server is None:  # cut() ran while this link was being set up: it must not survive
            server_w.transport.abort()
            client_w.transport.abort()
            return
        self._links.update({client_w, server_w})
        self._pairs[client_w] = server_w
        try:
            await asyncio.gather(
                self._pipe(client_r, server_w, to_server=True),
                self._pipe(server_r, client_w, to_server=False),
            )
        finally:
            self._links.difference_update({client_w, server_w})
            self._pairs.pop(client_w, None)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def cut(self) -> None:
        """Stop listening and drop every open connection, as if the backend died."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self._abort_links()

    def url_for(self, url: str) -> str:
        parts = urlsplit(url)
        netloc = parts.netloc.rsplit("@", 1)
        auth = netloc[0] + "@" if len(netloc) == 2 else ""
        query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "host"])
        return urlunsplit((parts.scheme, f"{auth}127.0.0.1:{self.port}", parts.path, query, ""))


# ---- pytest fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def cli_host() -> Iterator[CliHost]:
    """The session's command host (:mod:`testkit.clihost`): a test that runs the cases of a command
    line's corpus there, each wiring of it keeping a real ``python -m`` run of its own."""
    host = CliHost()
    yield host
    host.close()


@pytest.fixture(scope="session")
def test_run_id() -> str:
    return RUN_ID


@pytest.fixture(scope="session")
async def database_url(test_run_id: str) -> AsyncIterator[str]:
    """A fresh database for this test session, on the server ``DATABASE_URL`` points at."""
    name = f"tsp_test_{test_run_id}"
    url = await create_database(name)
    yield url
    await drop_database(name)


@pytest.fixture(scope="session")
def redis_url() -> str:
    return os.environ["REDIS_URL"]


@pytest.fixture(scope="session")
async def redis_prefix(test_run_id: str, redis_url: str) -> AsyncIterator[str]:
    """A key prefix of this session's own; its keys are deleted afterwards."""
    import redis.asyncio as aioredis

    prefix = f"tsp-test:{test_run_id}:"
    yield prefix
    client = aioredis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=prefix + "*", count=500)]
        if keys:
            await client.delete(*keys)
    except OSError:
        pass
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
def redis_user(redis_url: str) -> Iterator[Callable[..., str]]:
    """``redis_user("gateway", prefix)`` → the URL of a new Redis user with the gateway's ACL
    (svckit.redisacl) for keys under ``prefix`` (``any_suffix=True``: under any prefix starting so),
    as the service connects in production; every user is deleted after the session."""
    from testkit.redisusers import RedisUsers

    users = RedisUsers(redis_url)

    def create(component: str, prefix: str, *, any_suffix: bool = False) -> str:
        return _run_async(users.create(component, prefix, any_suffix=any_suffix))

    yield create
    _run_async(users.close())


class ServiceRedis:
    """This session's Redis as each component connects to it under test: as its own ACL user
    (svckit.redisacl), never as the admin ``REDIS_URL`` the tests themselves use, so that a command or
    a key a service uses and its user is not granted fails that service's tests (``NOPERM``: the
    replay memory's circuit opens, and unsafe requests get 503) before it fails in a cluster.

    One user per component for the session, created on first use, for keys under the session's
    prefix and under any prefix that starts so (an :class:`IsolatedEnv`'s, a test's own)."""

    def __init__(self, create: Callable[..., str], prefix: str) -> None:
        self._create = create
        self.prefix = prefix
        self._urls: dict[str, str] = {}

    def url(self, component: str) -> str:
        """``component``'s ``REDIS_URL`` (its user's name and password, on the session's server)."""
        if component not in self._urls:
            self._urls[component] = self._create(component, self.prefix, any_suffix=True)
        return self._urls[component]

    def user(self, component: str) -> str:
        """The name of ``component``'s user."""
        return urlsplit(self.url(component)).username or ""

    def runtime_env(self, env: Mapping[str, str], service: str) -> dict[str, str]:
        """``env`` (the owner's, the admin's) as ``service`` runs in production: its runtime database
        role (:func:`runtime_env`) and its own Redis user."""
        return {**runtime_env(env, service), "REDIS_URL": self.url(service)}


@pytest.fixture(scope="session")
def service_redis(redis_user: Callable[..., str], redis_prefix: str) -> ServiceRedis:
    """``service_redis.url("timesheets")`` → the ``REDIS_URL`` a service under test runs with."""
    return ServiceRedis(redis_user, redis_prefix)


@pytest.fixture(scope="session")
def identity_keys() -> dict[str, str]:
    """This session's pair keys (:func:`new_pair_keys`), as environment variables."""
    return new_pair_keys()


@pytest.fixture(scope="session")
def caller(identity_keys: dict[str, str]) -> Caller:
    return Caller(identity_keys)


@pytest.fixture(scope="session")
def checkpoint_keys() -> str:
    """``AUDIT_CHECKPOINT_KEYS`` of this session: the audit service signs checkpoints, as in production."""
    from audit.checkpoints import CheckpointKeys

    return CheckpointKeys.generate("test-ck1")


@pytest.fixture(scope="session")
def service_env(
    database_url: str, redis_url: str, redis_prefix: str, identity_keys: dict[str, str], checkpoint_keys: str
) -> dict[str, str]:
    """Environment for a service under test: the test database, the test Redis prefix, test keys."""
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": redis_prefix,
        **identity_keys,
        "AUDIT_CHECKPOINT_KEYS": checkpoint_keys,
        "LOG_LEVEL": "INFO",
        # The machine's Postgres is shared by every worker's services and every stack a test module
        # starts on it (max_connections 100): with the default 10 per pool a run peaked at 93 sessions
        # and one service met "too many clients". 5 keeps audit's listings at their default 4 at once.
        "DB_POOL_MAX": "5",
        # A worker keeps every package's session services running to its end, mostly idle while it
        # runs other files: their pools go back to DB_POOL_MIN (1) after a burst instead of holding
        # up to 5 sessions each for asyncpg's default 300 s (svckit.settings, DB_POOL_IDLE_SECONDS).
        "DB_POOL_IDLE_SECONDS": "10",
    }


class IsolatedEnv:
    """Gives a test area a database and Redis prefix of its own, dropped at the end of the session.

    The session database is shared by every test; a suite that brings up whole services with their own
    secrets (the identity service encrypts its signing keys with its own key, say) needs state nobody
    else wrote, or the two runs read each other's rows.
    """

    def __init__(self, run_id: str, redis_prefix: str, base: Mapping[str, str]) -> None:
        self.run_id = run_id
        self.redis_prefix = redis_prefix
        self.base = dict(base)
        self.databases: list[str] = []

    def __call__(self, label: str) -> dict[str, str]:
        """A ``service_env`` copy with its own ``DATABASE_URL`` and ``REDIS_KEY_PREFIX``."""
        if not re.fullmatch(r"[a-z0-9_]{1,20}", label):
            raise ValueError("label: 1-20 lower-case letters, digits or _")
        name = f"tsp_test_{self.run_id}_{label}"
        url = _run_async(create_database(name))
        self.databases.append(name)
        return {
            **self.base,
            "DATABASE_URL": url,
            "REDIS_KEY_PREFIX": f"{self.redis_prefix}{label}:",
            # a devstack.Platform on this database names its runtime roles so (dropped with the session's)
            "DB_ROLE_PREFIX": f"{ROLE_PREFIX}{label}_",
        }

    def close(self) -> None:
        for name in self.databases:
            _run_async(drop_database(name))
        self.databases.clear()


def _run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine from sync code even when the calling thread already has a running loop."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


@pytest.fixture(scope="session")
def isolated_env(test_run_id: str, redis_prefix: str, service_env: dict[str, str]) -> Iterator[IsolatedEnv]:
    """``isolated_env("browser")`` → an environment like ``service_env`` with a fresh database."""
    factory = IsolatedEnv(test_run_id, redis_prefix, service_env)
    yield factory
    factory.close()


# ---- database roles: services under test run as their runtime roles, as in production ---------------
#
# ``database_url`` (and every URL ``create_database`` returns) is the migration role: the owner, the
# one tests use to look at rows or to play an attacker with full database rights. ``migrate_schema``
# prepares the schema's runtime role (svckit.roles), and services get its URL through
# ``runtime_url`` / ``runtime_env``. Roles are global to the Postgres cluster, so their names carry this
# session's id, and every role with that prefix is dropped when the session ends.


def runtime_role(service: str) -> RuntimeRole:
    """The runtime role of ``service`` (its schema's name) in this session."""
    return RuntimeRole(ROLE_PREFIX + service, _ROLE_PASSWORD)


def runtime_url(url: str, service: str) -> str:
    """``url`` (a database of this session) as ``service``'s runtime role would connect."""
    return role_url(url, ROLE_PREFIX + service, _ROLE_PASSWORD)


@contextlib.asynccontextmanager
async def replica_pools(url: str, schema: str, replicas: int = 2) -> AsyncIterator[list[Database]]:
    """One small pool per replica on ``schema`` of ``url``, as its runtime role, each connected: what
    several processes of one service hold (the replay fallback's tests share one table this way)."""
    pools = [Database(runtime_url(url, schema), schema=schema, max_size=2) for _ in range(replicas)]
    try:
        for pool in pools:
            await pool.wait_connected(10)
        yield pools
    finally:
        for pool in pools:
            await pool.close()


def runtime_env(env: Mapping[str, str], service: str) -> dict[str, str]:
    """A copy of ``env`` whose ``DATABASE_URL`` is ``service``'s runtime role's."""
    return {**env, "DATABASE_URL": runtime_url(env["DATABASE_URL"], service)}


def migrate_role_env(service: str) -> dict[str, str]:
    """What ``python -m <service> migrate`` needs to prepare the session's runtime role."""
    return {"DB_RUNTIME_ROLE": ROLE_PREFIX + service, "DB_RUNTIME_PASSWORD": _ROLE_PASSWORD}


async def migrate_schema(database_url: str, schema: str, package_dir: Path) -> list[int]:
    """Migrate as the owner (``database_url``) and prepare the schema's runtime role."""
    return await migrate(database_url, schema, package_dir / "migrations", role=runtime_role(schema))


#: Template databases of this session, by schema and migrations folder (:func:`create_migrated_database`).
_templates: dict[tuple[str, Path], str] = {}


async def create_migrated_database(name: str, schema: str, package_dir: Path) -> str:
    """A fresh database ``name`` with ``schema`` migrated (as :func:`migrate_schema`), for tests that
    need a database of their own per test.

    Why: running every migration again for each such test cost about half a second a database (13
    audit migrations; more on a loaded machine), paid by dozens of tests. The migrations run once per
    session into a template database, and each test's database is a copy (``CREATE DATABASE …
    TEMPLATE``, a file copy). :func:`migrate_schema` then runs on the copy as before: it finds every
    migration applied (so the copy is what the migrations make), and brings the runtime role to its
    privileges on this database (``CONNECT`` is a grant on the database, not copied with it).
    Templates are dropped when the session ends."""
    key = (schema, package_dir.resolve())
    template = _templates.get(key)
    if template is None:
        template = f"tsp_test_{RUN_ID}_tpl{len(_templates)}"
        await migrate_schema(await create_database(template), schema, package_dir)
        _templates[key] = template
    admin = await asyncpg.connect(server_url())
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        await admin.execute(WRITES_NOT_AWAITED_ON_DISK.format(name=name))  # not copied with the template
    finally:
        await admin.close()
    url = with_database(server_url(), name)
    await migrate_schema(url, schema, package_dir)
    return url


async def drop_templates() -> None:
    """Drop the template databases of :func:`create_migrated_database` (at the end of the session)."""
    while _templates:
        await drop_database(_templates.popitem()[1])


async def drop_runtime_roles(server: str, prefix: str = ROLE_PREFIX) -> list[str]:
    """Drop every role whose name starts with ``prefix``: first what they hold in each database
    (grants, default privileges: ``DROP OWNED``), then the roles. Returns the names dropped."""
    admin = await asyncpg.connect(server)
    try:
        names = [
            row["rolname"]
            for row in await admin.fetch(
                "SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1) ORDER BY rolname", prefix
            )
        ]
        if not names:
            return []
        databases = await admin.fetch(
            """SELECT DISTINCT d.datname FROM pg_shdepend s JOIN pg_database d ON d.oid = s.dbid
               WHERE s.refclassid = 'pg_authid'::regclass
                 AND s.refobjid IN (SELECT oid FROM pg_roles WHERE rolname = ANY($1::text[]))""",
            names,
        )
        quoted = ", ".join('"' + name + '"' for name in names)
        for row in databases:
            conn = await asyncpg.connect(with_database(server, row["datname"]))
            try:
                await conn.execute(f"DROP OWNED BY {quoted}")
            finally:
                await conn.close()
        await admin.execute(f"DROP OWNED BY {quoted}")  # grants on shared objects (databases)
        for name in names:
            await admin.execute(f'DROP ROLE IF EXISTS "{name}"')
        return names
    finally:
        await admin.close()


async def assert_migrate_command_repeatable(
    service: str, database: str, service_env: Mapping[str, str]
) -> None:
    """``python -m <service> migrate`` (the Helm hook Job) twice on a fresh database, preparing the
    service's runtime role: both succeed."""
    url = await create_database(database)
    try:
        for _ in range(2):
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                service,
                "migrate",
                env={**os.environ, **service_env, "DATABASE_URL": url, **migrate_role_env(service)},
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            output, _ = await process.communicate()
            assert process.returncode == 0, output.decode()
    finally:
        await drop_database(database)


async def scrape(service_url: str) -> str:
    """The metrics exposition of a service under test (from its metrics port, :func:`metrics_url`)."""
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(metrics_url(service_url)) as response:
        assert response.status == 200, response.status
        return await response.text()


async def wait_for_metrics(base_url: str, series: Iterable[str], timeout: float = 20.0) -> str:
    """Poll the service's metrics until every series appears, and return that exposition: gauges that
    background tasks refresh on their own schedule (outbox relays, reconcilers) show up a few seconds
    after the traffic that made them."""
    wanted = tuple(series)
    deadline = time.monotonic() + timeout
    while True:
        text = await scrape(base_url)
        missing = [name for name in wanted if name not in text]
        if not missing:
            return text
        assert time.monotonic() < deadline, missing
        await asyncio.sleep(0.5)


@contextlib.contextmanager
def loop_failures() -> Iterator[list[dict[str, Any]]]:
    """What the running loop's exception handler is handed meanwhile: a task that failed with nobody
    awaiting it ("Task exception was never retrieved") ends up there, and in the service's log."""
    loop = asyncio.get_running_loop()
    handed: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: handed.append(context))
    try:
        yield handed
    finally:
        loop.set_exception_handler(previous)
