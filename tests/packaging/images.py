"""The service images without Docker: the one Dockerfile read for a SERVICE, the image recreated on disk.

No container runtime exists on this machine, so the tests rebuild what an image holds the way the
Dockerfile does for ``--build-arg SERVICE=<service>`` — the locked runtime-only virtualenv (``uv sync
--frozen --no-dev --no-install-project``, compiled to bytecode) for ``/opt/venv``, the build stage's
``COPY services/…`` lines for ``/opt/app``, the ``ENV`` of the stages the image is made of with those
two paths mapped — and run the services from there with the image's entrypoint (``python -m <service>``).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from testkit.fixtures import free_port
from tests.packaging.support import REPO

SERVICES = {"gateway": 8080, "identity": 9000, "timesheets": 8101, "approvals": 8102, "audit": 8103}


DOCKERFILE = REPO / "Dockerfile"


def dockerfile() -> str:
    """The one Dockerfile of every image (the SERVICE build argument picks the service)."""
    return DOCKERFILE.read_text()


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        word, _, rest = stripped.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages(text: str) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instructions(text):
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def stage_name(stage: list[tuple[str, str]]) -> str:
    parts = stage[0][1].split()
    return parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else ""


def service_stages(service: str) -> dict[str, list[tuple[str, str]]]:
    """The stages as a build with ``--build-arg SERVICE=<service>`` sees them, by name ("" = the final)."""
    text = dockerfile().replace("${SERVICE}", service)
    return {stage_name(stage): stage for stage in stages(text)}


def image_chain(service: str) -> list[list[tuple[str, str]]]:
    """The stages the service's image is made of, from its base stage to the final one (each FROM
    naming a stage of the file is followed; the Python base image ends the chain)."""
    by_name = service_stages(service)
    chain = [by_name[""]]
    while (base := chain[0][0][1].split()[0]) in by_name:
        chain.insert(0, by_name[base])
    return chain


def image_layout(service: str, root: Path) -> Path:
    """``/opt/app`` of the service's image, recreated under ``root`` from the build stage's COPY lines."""
    app = root / "app"
    app.mkdir(parents=True)
    for word, args in service_stages(service)["build"]:
        if word == "COPY" and not args.startswith("--from") and args.startswith("services/"):
            source, dest = args.split()
            # as .dockerignore: no bytecode caches of the working tree
            shutil.copytree(
                REPO / source, app / Path(dest).name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
    return app


def image_env(service: str, venv: Path, app: Path) -> dict[str, str]:
    """The image's ENV (every stage of its chain), with /opt/venv and /opt/app mapped to their
    recreations."""
    env: dict[str, str] = {}
    for stage in image_chain(service):
        for word, args in stage:
            if word != "ENV":
                continue
            for pair in args.split():
                name, _, value = pair.partition("=")
                value = value.replace("$PATH", os.environ.get("PATH", "/usr/bin:/bin"))
                value = value.replace("/opt/venv", str(venv)).replace("/opt/app", str(app))
                env[name] = value
    return env


def find_uv() -> str | None:
    """uv on PATH, else where `make install` puts it (.local/uv), else the workstation's copy."""
    candidates = [shutil.which("uv"), str(REPO / ".local" / "uv" / "bin" / "uv"), "/tmp/vt/bin/uv"]
    return next((c for c in candidates if c and Path(c).exists()), None)


def runtime_venv(uv: str) -> Path:
    """``/opt/venv``: the locked runtime dependencies only. Kept under .local/ between runs, keyed by
    the lock file, so that `uv sync` usually only verifies it."""
    lock_hash = hashlib.sha256((REPO / "uv.lock").read_bytes()).hexdigest()[:12]
    venv = REPO / ".local" / "packaging" / f"runtime-venv-{lock_hash}"
    env = dict(
        os.environ, UV_PROJECT_ENVIRONMENT=str(venv), UV_PYTHON=sys.executable, UV_COMPILE_BYTECODE="1"
    )
    env.pop("VIRTUAL_ENV", None)
    subprocess.run(
        [uv, "sync", "--frozen", "--no-dev", "--no-install-project", "--quiet"],
        cwd=REPO,
        env=env,
        check=True,
        timeout=300,
    )
    return venv


def log_text(path: Path) -> str:
    """A process's log file so far ("" before it exists)."""
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def stop_gracefully(process: subprocess.Popen[bytes] | None, grace: float = 20.0) -> None:
    """SIGTERM, as the kubelet sends it, then SIGKILL after ``grace`` seconds (its grace period)."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class ImageProcess:
    """One service run as its image runs it: ``python -m <service>`` from /opt/app with its ENV."""

    def __init__(
        self, service: str, venv: Path, app: Path, env: dict[str, str], port: int, log: Path
    ) -> None:
        self.service = service
        self.python = str(venv / "bin" / "python")
        self.app = app
        self.metrics_port = free_port()
        self.env = {
            **image_env(service, venv, app),
            **env,
            "PORT": str(port),
            "METRICS_PORT": str(self.metrics_port),
        }
        self.port = port
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.initial_files = self.app_files()

    def app_files(self) -> dict[str, int]:
        """Every file under /opt/app with its size: the image's code must stay as built."""
        return {str(p.relative_to(self.app)): p.stat().st_size for p in self.app.rglob("*") if p.is_file()}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def run(self, *args: str, env: dict[str, str] | None = None) -> None:
        """A one-off command of the image (``migrate``, ``seed``), as the migration Job runs it
        (``env``: what differs from the service's own, e.g. the owner's ``DATABASE_URL``)."""
        result = subprocess.run(
            [self.python, "-m", self.service, *args],
            cwd=self.app,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert result.returncode == 0, f"{self.service} {' '.join(args)}:\n{result.stdout}{result.stderr}"

    def start(self, timeout: float = 90.0) -> ImageProcess:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [self.python, "-m", self.service], cwd=self.app, env=self.env, stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.service} exited early:\n{self.logs()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.service} did not answer /healthz in {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        return log_text(self.log)[-6000:]

    def stop(self) -> None:
        stop_gracefully(self.process)
