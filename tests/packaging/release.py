"""The chart's release running on this machine: its migration Job, then each Deployment's container.

The chart is rendered for an install against an external database and Redis (the operator's Secrets
named by reference, the bundled identity provider with its demo users; the chart generates every other
secret). The migration Job's containers, then each Deployment's, run as real processes the way the
kubelet would run them (tests/packaging/pods.py, podlaunch.py). With ``limits``, each Deployment's
container runs in cgroups of its rendered ``resources`` (testkit.cgroups): the memory limit as the
kernel enforces it, the CPU limit as a CFS quota (none rendered: unlimited until a test sets one).
Used by test_pods_as_rendered.py (does the pod run?) and test_pods_under_limits.py (within its limits?).
"""

from __future__ import annotations

import base64
import json
import random
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from testkit.cgroups import Cgroup, cpu_millis, memory_bytes
from testkit.fixtures import IsolatedEnv, ServiceRedis
from testkit.oidc import DEMO_PASSWORD
from tests.packaging.images import find_uv, image_layout, runtime_venv
from tests.packaging.pods import (
    REWRITES,
    Cluster,
    Container,
    PodProcess,
    containers_of,
    hosts_file,
    service_names,
    wait_for,
)
from tests.packaging.support import APP_COMPONENTS, MINIMAL, NAMESPACE, RELEASE, Obj, deep_merge, render

DB_HOST = "db.internal"


def secret(name: str, data: dict[str, str]) -> Obj:
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "data": encoded,
    }


def http(method: str, url: str, body: Any = None, token: str = "", timeout: float = 10) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, None
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


@dataclass
class Pods:
    """The running release: its Deployments' containers by component, their addresses and ports."""

    processes: dict[str, PodProcess] = field(default_factory=dict)
    containers: dict[str, Container] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)
    job: list[PodProcess] = field(default_factory=list)
    helm_test: list[PodProcess] = field(default_factory=list)  # prepared, not started
    #: each component's cgroups (``limits``): its rendered limits, what the kernel counted
    cgroups: dict[str, Cgroup] = field(default_factory=dict)
    #: the rendered objects and the operator's Secrets (a generated secret's value)
    cluster: Cluster | None = None

    def url(self, component: str) -> str:
        return f"http://{self.addresses[component]}:{self.containers[component].env['PORT']}"

    def metrics_url(self, component: str) -> str:
        return f"http://{self.addresses[component]}:{self.containers[component].env['METRICS_PORT']}/metrics"


def ready_or_gone(process: PodProcess, url: str) -> bool:
    """The readiness probe's answer, or the container's end (then no use waiting)."""
    return not process.alive() or http("GET", url + "/readyz")[0] == 200


def limited(container: Container) -> Cgroup:
    """Cgroups of the container's rendered limits, joined by it at start."""
    limits = container.resources.get("limits", {})
    memory = limits.get("memory")
    cpu = limits.get("cpu")
    group = Cgroup.create(
        container.name,
        memory_bytes(memory) if memory is not None else None,
        cpu_millis(cpu) if cpu is not None else None,
    )
    container.cgroups = group.procs
    return group


@dataclass(frozen=True)
class DatabaseWiring:
    """How the release's pods reach the session's Postgres: by the name :data:`DB_HOST` (``hosts``
    maps it to the server's address) and the server's own port, in the chart's values (the runtime
    roles' URLs the chart builds) and in the owner's URL of the operator's ``db`` Secret."""

    values: dict[str, Any]  # externalDatabase
    operator_secret: Obj
    hosts: dict[str, str]


def database_wiring(database_url: str) -> DatabaseWiring:
    """For the session's ``DATABASE_URL``: a URL with a host and a port, as a real server's (the
    embedded Postgres of a run without ``DATABASE_URL`` listens on loopback TCP too, on a port of its
    own: devstack.backing.EmbeddedPostgres). A socket URL cannot be handed to pods: ValueError."""
    owner = urlsplit(database_url)
    if not owner.hostname:
        raise ValueError(f"the pods reach the database by host and port, not a socket: {owner.query}")
    port = owner.port or 5432
    database = owner.path.lstrip("/")
    return DatabaseWiring(
        # not the chart's default port: the server's
        values={"externalDatabase": {"host": DB_HOST, "port": port, "database": database}},
        operator_secret=secret(
            "db", {"database-url": f"postgresql://{owner.username}@{DB_HOST}:{port}/{database}"}
        ),
        hosts={DB_HOST: owner.hostname},
    )


@contextmanager
def running_release(
    isolated_env: IsolatedEnv,
    service_redis: ServiceRedis,
    tmp_path_factory: pytest.TempPathFactory,
    *,
    name: str,
    overrides: dict[str, Any],
    operator_env: dict[str, dict[str, str]],
    limits: bool = False,
) -> Iterator[Pods]:
    """The release rendered with MINIMAL, the bundled provider and ``overrides``; ``operator_env``: more
    Secrets the operator made (name → data), such as a component's extraEnvVarsSecret."""
    uv = find_uv()
    if uv is None:
        pytest.skip("uv is not installed (make install provides .local/uv/bin/uv)")
    venv = runtime_venv(uv)
    env = isolated_env(name)
    wiring = database_wiring(env["DATABASE_URL"])
    identity_service = f"{RELEASE}-timesheets-identity"
    values = deep_merge(
        deep_merge(
            MINIMAL,
            {
                # the bundled provider is the issuer under its in-cluster name, plain http as on
                # chart-testing's cluster (ci/demo-values.yaml), which says so (identity.allowInsecureHttp)
                "oidc": {"issuers": [f"http://{identity_service}:9000/"]},
                "identity": {
                    "enabled": True,
                    "allowInsecureHttp": True,
                    "seedDemo": True,
                    "env": {"DEMO_PASSWORD": DEMO_PASSWORD},
                },
                **wiring.values,
                # roles and Redis keys of this test run only (dropped with the session's)
                "databaseRoles": {"prefix": env["DB_ROLE_PREFIX"]},
                "config": {"redisKeyPrefix": env["REDIS_KEY_PREFIX"]},
            },
        ),
        overrides,
    )
    objects = render(values)
    operator = [
        # what the operator creates before the install (MINIMAL's existingSecret names)
        wiring.operator_secret,
        secret("redis", {f"redis-url-{c}": service_redis.url(c) for c in APP_COMPONENTS}),
        *(secret(n, data) for n, data in operator_env.items()),
    ]
    cluster = Cluster(objects, operator)
    staging = tmp_path_factory.mktemp(name)
    staging.chmod(0o755)
    base = f"127.{random.randrange(100, 250)}.{random.randrange(1, 250)}"
    result = Pods(cluster=cluster)
    result.addresses = {c: f"{base}.{i + 1}" for i, c in enumerate(APP_COMPONENTS)}
    names = dict(wiring.hosts)
    for component in APP_COMPONENTS:
        for service in service_names(f"{RELEASE}-timesheets-{component}"):
            names[service] = result.addresses[component]
    hosts = hosts_file(staging / "hosts", names)
    images: dict[str, list[dict[str, Any]]] = {}
    for component in APP_COMPONENTS:
        app = image_layout(component, tmp_path_factory.mktemp(f"image-{component}"))
        if component == "gateway":  # the image's SPA build (the spa stage): a page to serve
            (app / "spa" / "dist").mkdir(parents=True)
            (app / "spa" / "dist" / "index.html").write_text("<!doctype html><title>Timesheets</title>")
        for path in [app, *app.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        images[component] = [
            {"kind": "dir", "path": "/opt/venv", "source": str(venv)},
            {"kind": "dir", "path": "/opt/app", "source": str(app)},
        ]

    def prepared(container: Container, rewrite_bind: str | None = None) -> PodProcess:
        if rewrite_bind is not None:
            assert container.env["BIND_HOST"] == "::", container.env.get("BIND_HOST")
            container.env["BIND_HOST"] = rewrite_bind
            container.rewrites["BIND_HOST"] = REWRITES["BIND_HOST"]
        root = staging / f"root-{container.name}-{secrets.token_hex(3)}"
        spec = container.spec(root, images[container.service], hosts)
        return PodProcess(container, spec, staging)

    try:
        job = cluster.find("Job", f"{RELEASE}-timesheets-migrations")
        for container in containers_of(cluster, job, staging):  # init containers in order, then the last
            process = prepared(container).start()
            result.job.append(process)
            code = process.wait(180)
            assert code == 0, f"{container.name} exited {code}:\n{process.logs()[-4000:]}"
        for component in APP_COMPONENTS:
            deployment = cluster.find("Deployment", f"{RELEASE}-timesheets-{component}")
            (container,) = [c for c in containers_of(cluster, deployment, staging) if c.name == component]
            result.containers[component] = container
            if limits:
                result.cgroups[component] = limited(container)
            result.processes[component] = prepared(container, result.addresses[component]).start()
        for component, process in result.processes.items():
            url = result.url(component)
            wait_for(lambda p=process, u=url: ready_or_gone(p, u), 90, f"{component} ready")
            assert process.alive(), f"{component} exited:\n{process.logs()[-4000:]}"
        result.helm_test = [
            prepared(c)
            for c in containers_of(cluster, cluster.find("Pod", f"{RELEASE}-timesheets-helm-test"), staging)
        ]
        yield result
    finally:
        for process in result.processes.values():
            process.stop()
        for group in result.cgroups.values():
            group.remove()


def staging_of(pods: Pods) -> Path:
    return pods.processes["gateway"].spec_file.parent
