"""Start, watch and stop the whole platform as local processes."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from svckit import redisacl
from svckit.settings import RedisSettings

from .backing import (
    REDIS_ADMIN,
    EmbeddedPostgres,
    EmbeddedRedis,
    embedded_redis_acl,
    npm_available,
    npm_install_lock,
    port_is_free,
)
from .roles import identity_key_visible, migrate_env, redis_password_variable, service_database
from .secrets_file import load_or_create

ROOT = Path(__file__).resolve().parents[1]

LineSink = Callable[[str, str], None]


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    port: int
    schema: str | None
    colour: int
    metrics_port: int  # METRICS_PORT: /metrics is never on the public port


SERVICES = (
    ServiceSpec("identity", 9000, "identity", 35, 9010),
    ServiceSpec("timesheets", 8101, "timesheets", 32, 9101),
    ServiceSpec("approvals", 8102, "approvals", 33, 9102),
    ServiceSpec("audit", 8103, "audit", 36, 9103),
    ServiceSpec("gateway", 8080, None, 34, 9080),
)

DEFAULTS = {
    "OIDC_ISSUER": "http://localhost:9000/",  # the gateway's trusted issuers (a comma-separated list)
    "IDENTITY_ISSUER": "http://localhost:9000/",  # the bundled provider's own issuer
    "OIDC_AUDIENCE": "https://timesheets.abc.example/api",
    "TIMESHEETS_URL": "http://127.0.0.1:8101",
    "APPROVALS_URL": "http://127.0.0.1:8102",
    "AUDIT_URL": "http://127.0.0.1:8103",
    "IDENTITY_URL": "http://127.0.0.1:9000",
    "DEMO_PASSWORD": "demo",
    "LOG_LEVEL": "INFO",
}

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Children get SIGTERM if the orchestrator dies, so no service outlives a killed ``make dev``."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def die_with_parent() -> None:
    _die_with_parent()


def print_sink(name: str, line: str) -> None:
    spec = next((s for s in SERVICES if s.name == name), None)
    colour = spec.colour if spec else 37
    prefix = f"{name:<10}|"
    if sys.stdout.isatty():
        prefix = f"\033[{colour}m{prefix}\033[0m"
    sys.stdout.write(f"{prefix} {line}\n")
    sys.stdout.flush()


class Platform:
    """The platform on one machine.

    ``env`` overrides anything (the same variables the services read). Without ``DATABASE_URL`` /
    ``REDIS_URL`` embedded servers are started with their data in ``state_dir``. Logs go to ``sink``
    (``name, line``) — by default printed with a coloured prefix — and to ``state_dir/logs/<name>.log``.
    """

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        state_dir: Path | None = None,
        sink: LineSink = print_sink,
        build_spa: bool = True,
        prometheus: bool = False,
    ) -> None:
        self.overrides = dict(env if env is not None else os.environ)
        self.state_dir = state_dir or ROOT / ".local"
        self.sink = sink
        self.build_spa = build_spa
        self.prometheus = prometheus
        self.env: dict[str, str] = {}
        self.generated_secrets: list[str] = []
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._threads: list[threading.Thread] = []
        self._postgres: EmbeddedPostgres | None = None
        self._redis: EmbeddedRedis | None = None
        self.redis_urls: dict[str, str] = {}  # component → its own Redis user's URL (embedded Redis)
        self._stopping = False

    # ---- start-up ------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Backing services, secrets, environment, migrations, seed and SPA build."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "logs").mkdir(exist_ok=True)
        secrets, self.generated_secrets = load_or_create(self.state_dir / "secrets.env")
        env = {**DEFAULTS, **secrets, **self.overrides}
        if not self.overrides.get("DATABASE_URL"):
            self.log("devstack", "DATABASE_URL not set: starting embedded PostgreSQL (.local/postgres)")
            self.start_postgres(env)
        if not self.overrides.get("REDIS_URL"):
            self.log(
                "devstack",
                "REDIS_URL not set: starting embedded Redis (Valkey, .local/valkey): each service as its"
                " own user, admin with ADMIN_REDIS_PASSWORD (.local/secrets.env), PING only without",
            )
            self.start_redis(env)
        # the gateway's workers' metrics files: python -m gateway creates the directory and clears the
        # previous run's files at each start (svckit.metricfiles.start_run)
        env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(self.state_dir / "prometheus-multiproc"))
        env.setdefault("SPA_DIST_DIR", str(ROOT / "spa" / "dist"))
        self.env = env
        trusted = [issuer.strip() for issuer in env["OIDC_ISSUER"].split(",") if issuer.strip()]
        if env["IDENTITY_ISSUER"] not in trusted:
            self.log(
                "devstack",
                f"IDENTITY_ISSUER {env['IDENTITY_ISSUER']} is not in OIDC_ISSUER: "
                "the gateway will refuse the bundled provider's tokens",
            )
        # Each schema as its owner, preparing the service's runtime role (devstack.roles). The schemas
        # are the services' own, so the migrations run side by side (as the pods migrate on a chart
        # install), a few seconds sooner than one after the other; the seed needs identity's.
        with ThreadPoolExecutor(len(SERVICES)) as pool:
            migrations = [
                pool.submit(
                    self.run_step,
                    spec.name,
                    [sys.executable, "-m", spec.name, "migrate"],
                    migrate_env(env, spec.name),
                )
                for spec in SERVICES
                if spec.schema
            ]
            for migration in migrations:
                migration.result()
        self.run_step("identity", [sys.executable, "-m", "identity", "seed"])
        if self.build_spa:
            self.build_spa_bundle()

    def start_postgres(self, env: dict[str, str], port: int | None = None) -> None:
        """Start the embedded PostgreSQL (on 127.0.0.1, ``make dev``'s port or another free one);
        ``DATABASE_URL`` in ``env`` becomes its owner's URL, the one the banner shows: the port is only
        known once the server is up, and a developer's ``psql`` needs it."""
        self._postgres = (
            EmbeddedPostgres(self.state_dir) if port is None else EmbeddedPostgres(self.state_dir, port=port)
        )
        env["DATABASE_URL"] = self._postgres.start()

    def start_redis(self, env: dict[str, str], port: int = 6380) -> None:
        """Start the embedded Redis, closed as the chart's bundled one is: each component a user of its
        own (svckit.redisacl; devstack.roles) in :attr:`redis_urls`; ``REDIS_URL`` in ``env`` becomes
        the admin user's (``ADMIN_REDIS_PASSWORD``: devstack's own setup, and you); without a password,
        only ``PING`` (devstack.backing.embedded_redis_acl)."""
        prefix = env.get("REDIS_KEY_PREFIX") or RedisSettings.model_fields["redis_key_prefix"].default
        passwords = {c: env[redis_password_variable(c)] for c in redisacl.COMPONENTS}
        admin_password = env[redis_password_variable(REDIS_ADMIN)]
        self._redis = EmbeddedRedis(
            self.state_dir, port, acl=embedded_redis_acl(prefix, passwords, admin_password)
        )
        server = self._redis.start()
        env["REDIS_URL"] = redisacl.user_url(server, REDIS_ADMIN, admin_password)
        self.redis_urls = {c: redisacl.user_url(server, c, pw) for c, pw in passwords.items()}

    def service_env(self, spec: ServiceSpec) -> dict[str, str]:
        """A service's environment: its own database role's and Redis user's URLs, no other database
        or Redis credential."""
        env = service_database({**os.environ, **self.env}, spec.name, spec.schema)
        if spec.name in self.redis_urls:
            env["REDIS_URL"] = self.redis_urls[spec.name]
        env.update({"PORT": str(spec.port), "METRICS_PORT": str(spec.metrics_port)})
        env.setdefault("BIND_HOST", "127.0.0.1")
        if spec.name != "gateway":
            env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        return env

    def run_step(self, name: str, command: list[str], extra_env: Mapping[str, str] | None = None) -> None:
        result = subprocess.run(
            command,
            env={
                name: value
                for name, value in {**os.environ, **self.env, **(extra_env or {})}.items()
                # migrations and seeding sign nothing, and write no metrics into the gateway's directory
                if identity_key_visible(name, None) and name != "PROMETHEUS_MULTIPROC_DIR"
            },
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        for line in (result.stdout + result.stderr).splitlines():
            self.log(name, line)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command[1:])} failed with exit code {result.returncode}")

    def build_spa_bundle(self) -> None:
        spa = ROOT / "spa"
        if not (spa / "package.json").exists():
            return
        if not npm_available():
            self.log("devstack", "npm not found: the SPA is not built (the gateway says so at /)")
            return
        lock = spa / "package-lock.json"
        installed = spa / "node_modules" / ".package-lock.json"
        with npm_install_lock(spa):
            if not installed.exists() or (lock.exists() and lock.stat().st_mtime > installed.stat().st_mtime):
                self.run_step("spa", ["npm", "ci", "--no-audit", "--no-fund", "--prefix", str(spa)])
        built = spa / "dist" / "index.html"
        sources = [p for p in spa.rglob("*") if "node_modules" not in p.parts and "dist" not in p.parts]
        newest = max((p.stat().st_mtime for p in sources if p.is_file()), default=0.0)
        if not built.exists() or newest > built.stat().st_mtime:
            self.run_step("spa", ["npm", "run", "build", "--prefix", str(spa)])

    def start(self, timeout: float = 90.0) -> Platform:
        busy = [
            f"{spec.name} :{port}"
            for spec in SERVICES
            for port in (spec.port, spec.metrics_port)
            if not port_is_free(port)
        ]
        if busy:
            raise RuntimeError(f"ports already in use: {', '.join(busy)} (is another `make dev` running?)")
        self.prepare()
        for spec in SERVICES:
            self.spawn(spec.name, [sys.executable, "-m", spec.name], self.service_env(spec))
        if self.prometheus:
            self.start_prometheus()
        self.wait_ready(timeout)
        return self

    def spawn(self, name: str, command: list[str], env: Mapping[str, str]) -> None:
        process = subprocess.Popen(
            command,
            env=dict(env),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        self.processes[name] = process
        thread = threading.Thread(target=self._pump, args=(name, process.stdout), daemon=True)
        thread.start()
        self._threads.append(thread)

    def start_prometheus(self) -> None:
        config = ROOT / "deploy" / "prometheus" / "prometheus-local.yml"
        if not config.exists():
            self.log("devstack", "deploy/prometheus/prometheus-local.yml missing: Prometheus not started")
            return
        self.spawn(
            "prometheus",
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={self.state_dir / 'prometheus'}",
                "--web.listen-address=127.0.0.1:9090",
            ],
            os.environ,
        )

    def _pump(self, name: str, stream: IO[bytes] | None) -> None:
        if stream is None:
            return
        with (self.state_dir / "logs" / f"{name}.log").open("a", encoding="utf-8") as logfile:
            for raw in stream:
                line = raw.decode("utf-8", "replace").rstrip()
                logfile.write(line + "\n")
                logfile.flush()
                self.sink(name, line)

    def log(self, name: str, line: str) -> None:
        self.sink(name, line)

    def url(self, name: str) -> str:
        spec = next(s for s in SERVICES if s.name == name)
        return f"http://127.0.0.1:{spec.port}"

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = {spec.name for spec in SERVICES}
        while pending:
            for name in sorted(pending):
                process = self.processes[name]
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with code {process.returncode} during start-up")
                try:
                    with urllib.request.urlopen(self.url(name) + "/readyz", timeout=2) as response:  # noqa: S310
                        if response.status == 200:
                            pending.discard(name)
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    pass
            if pending and time.monotonic() > deadline:
                raise RuntimeError("not ready in time: " + ", ".join(sorted(pending)))
            if pending:
                time.sleep(0.25)

    # ---- running and stopping ------------------------------------------------------------------

    def banner(self) -> str:
        password = self.env.get("DEMO_PASSWORD", "demo")
        lines = [
            "",
            "Timesheets platform is up.",
            "  Open           http://localhost:8080/",
            f"  Sign in as     alice / {password} (employee), bob / {password} (manager), "
            f"carol / {password} (auditor)",
            "  Identity       http://localhost:9000/.well-known/openid-configuration",
            "  Services       timesheets :8101, approvals :8102, audit :8103 (/healthz /readyz)",
            "  Metrics        "
            + ", ".join(f"{spec.name} :{spec.metrics_port}" for spec in SERVICES)
            + " (/metrics, Prometheus format)",
        ]
        if "BATCH_CLIENT_SECRET" in self.generated_secrets or not os.environ.get("BATCH_CLIENT_SECRET"):
            lines.append(
                f"  Batch client   timesheets-batch / {self.env.get('BATCH_CLIENT_SECRET', '?')} "
                "(client_credentials, batch:upload)"
            )
        if self._postgres is not None:
            lines.append(
                f"  Postgres       {self.env['DATABASE_URL']} (embedded; the schemas' owner, each "
                "service connects as its own role)"
            )
        if self._redis is not None:
            lines.append(
                f"  Redis          {self.env['REDIS_URL']} (admin; each service connects as its own "
                "user, and without a password only PING is allowed)"
            )
        if self.prometheus:
            lines.append("  Prometheus     http://localhost:9090/")
        lines.append("  Stop with Ctrl-C.")
        return "\n".join(lines)

    def wait(self) -> int:
        """Block until a service dies or a stop is requested; returns the first exit code seen."""
        while not self._stopping:
            for name, process in self.processes.items():
                if process.poll() is not None and not self._stopping:
                    self.log("devstack", f"{name} exited with code {process.returncode}; stopping")
                    return process.returncode or 1
            time.sleep(0.3)
        return 0

    def request_stop(self) -> None:
        self._stopping = True

    def stop(self, timeout: float = 25.0) -> None:
        self._stopping = True
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in self.processes.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for thread in self._threads:
            thread.join(2)
        if self._redis is not None:
            self._redis.stop()
        if self._postgres is not None:
            self._postgres.stop()

    def __enter__(self) -> Platform:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
