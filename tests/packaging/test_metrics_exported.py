"""Every metric an alert or a dashboard panel names is really exported by the running services.

The five services are started as real processes exactly as their images run them (the image's
/opt/app and runtime-only /opt/venv recreated from its Dockerfile, ``python -m <service>``) on free
loopback ports against the test database and Redis, given a little real traffic —
refused and accepted tokens through the gateway, an upload that reaches the timesheets service and
its outbox, an audit chain verification — and then their ``/metrics`` are scraped and compared with
the series names read from the alert rules and the dashboard queries.
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from testkit.fixtures import IsolatedEnv, ServiceRedis, free_port, migrate_role_env
from tests.packaging.images import ImageProcess, find_uv, image_layout, runtime_venv
from tests.packaging.support import (
    PROMETHEUS_DIR,
    alerts,
    dashboard_queries,
    load_rules,
    metric_names,
    recorded_names,
)

pytestmark = pytest.mark.e2e

# Series that come from elsewhere than the platform's services, named here once and on purpose.
EXTERNAL = {
    "up": "Prometheus' own scrape health",
    "kube_pod_container_status_restarts_total": "kube-state-metrics (TimesheetsPodCrashLooping, dashboard)",
    "kube_pod_container_resource_requests": "kube-state-metrics (dashboard: CPU by pod)",
    "kube_pod_container_resource_limits": "kube-state-metrics (dashboard: memory by pod)",
    "kube_horizontalpodautoscaler_status_current_replicas": "kube-state-metrics (dashboard: replicas)",
    "kube_horizontalpodautoscaler_status_desired_replicas": "kube-state-metrics (dashboard: replicas)",
    "kube_horizontalpodautoscaler_spec_max_replicas": "kube-state-metrics (dashboard: replicas)",
    "container_cpu_usage_seconds_total": "the kubelet's cAdvisor (dashboard: CPU by pod)",
    "container_memory_working_set_bytes": "the kubelet's cAdvisor (dashboard: memory by pod)",
}
ORDER = ("identity", "timesheets", "approvals", "audit", "gateway")


def http(
    method: str, url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def referenced_series() -> dict[str, set[str]]:
    """Series name → where it is used (alert names, 'dashboard')."""
    used: dict[str, set[str]] = {}
    for rule in load_rules():
        for name in metric_names(rule["expr"]):
            used.setdefault(name, set()).add(rule.get("alert") or rule["record"])
    for query in dashboard_queries():
        for name in metric_names(query):
            used.setdefault(name, set()).add("dashboard")
    for name in recorded_names():
        used.pop(name, None)
    return used


def exported_series(text: str) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            names.add(sample.name)
    return names


@pytest.fixture(scope="module")
def platform(
    isolated_env: IsolatedEnv, service_redis: ServiceRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ImageProcess]]:
    """The five services run as their images run them (tests/packaging/images.py): migrated and
    seeded by the images' own commands, as the chart's migration Job does, then started."""
    uv = find_uv()
    if uv is None:
        pytest.skip("uv is not installed (make install provides .local/uv/bin/uv)")
    venv = runtime_venv(uv)
    ports = {name: free_port() for name in ORDER}
    env = {
        **isolated_env("packaging"),
        "BIND_HOST": "127.0.0.1",
        "OIDC_ISSUER": f"http://127.0.0.1:{ports['identity']}/",
        "IDENTITY_ISSUER": f"http://127.0.0.1:{ports['identity']}/",
        "OIDC_AUDIENCE": "https://timesheets.abc.example/api",
        "TIMESHEETS_URL": f"http://127.0.0.1:{ports['timesheets']}",
        "APPROVALS_URL": f"http://127.0.0.1:{ports['approvals']}",
        "AUDIT_URL": f"http://127.0.0.1:{ports['audit']}",
        "IDENTITY_KEY_ENCRYPTION_KEY": secrets.token_urlsafe(32),
        "IDENTITY_SESSION_SECRET": secrets.token_urlsafe(32),
        "BATCH_CLIENT_SECRET": secrets.token_urlsafe(24),
        "AUDIT_VERIFY_INTERVAL_SECONDS": "1",
        "GATEWAY_WORKERS": "1",
        "SPA_DIST_DIR": str(tmp_path_factory.mktemp("spa")),
    }
    owner = {"DATABASE_URL": env["DATABASE_URL"]}  # the migration Job's: migrates, seeds, grants
    logs = tmp_path_factory.mktemp("logs")
    processes = {
        name: ImageProcess(
            name,
            venv,
            image_layout(name, tmp_path_factory.mktemp(f"image-{name}")),
            # each service as its own database role and Redis user (the gateway has no database)
            service_redis.runtime_env(env, name)
            if name != "gateway"
            else {**env, "REDIS_URL": service_redis.url(name)},
            ports[name],
            logs / f"{name}.log",
        )
        for name in ORDER
    }
    with ThreadPoolExecutor(len(ORDER)) as pool:
        migrations = [
            pool.submit(processes[name].run, "migrate", env={**owner, **migrate_role_env(name)})
            for name in ORDER
            if name != "gateway"
        ]
        for future in migrations:
            future.result()
    processes["identity"].run("seed", env=owner)
    try:
        with ThreadPoolExecutor(len(ORDER)) as pool:
            for started in [pool.submit(p.start) for p in processes.values()]:
                started.result()
        # Ready, not just alive: the gateway is ready once it holds the issuer's keys (started next
        # to the identity provider, its first fetch may fail and back off for a few seconds).
        wait_ready(processes.values())
        drive_traffic(processes, env["BATCH_CLIENT_SECRET"])
        yield processes
    finally:
        for process in processes.values():
            process.stop()


def wait_ready(processes: Iterable[ImageProcess], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    for process in processes:
        while (status := http("GET", f"{process.url}/readyz")[0]) != 200 and time.monotonic() < deadline:
            time.sleep(0.3)
        assert status == 200, f"{process.service} not ready:\n{process.logs()}"


def drive_traffic(platform: dict[str, ImageProcess], batch_secret: str) -> None:
    """A little real traffic, so that series which only exist once something happened appear."""
    gateway = platform["gateway"].url
    identity = platform["identity"].url
    # Refused at the gateway: no token, a malformed one.
    http("GET", f"{gateway}/api/timesheets")
    http("GET", f"{gateway}/api/timesheets", headers={"Authorization": "Bearer not.a.token"})
    # A real token from the identity provider (client credentials of the seeded batch client).
    form = urllib.parse.urlencode(
        {
            "grant_type": "client_credentials",
            "client_id": "timesheets-batch",
            "client_secret": batch_secret,
            "audience": "https://timesheets.abc.example/api",
            "scope": "batch:upload",
        }
    ).encode()
    status, body = http(
        "POST",
        f"{identity}/oauth/token",
        data=form,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 200, body[:500]
    token = json.loads(body)["access_token"]
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    http("GET", f"{gateway}/api/timesheets", headers=auth)  # insufficient scope
    upload = json.dumps(
        {
            "entries": [
                {
                    "user": "alice",
                    "date": "2026-11-02",
                    "project": "metrics",
                    "hours": 2,
                    "notes": "packaging test",
                }
            ]
        }
    ).encode()
    status, body = http("POST", f"{gateway}/api/timesheets/upload", data=upload, headers=auth)
    assert status == 201, body[:500]
    # Refused by the HTTP layer before any route: an HTTP/1.1 request without Host (a 400 counted in
    # http_refused_total, the series TimesheetsConnectionLimitReached watches for its 503s).
    refused_by_the_http_layer(gateway)
    # A sign-in form posted without its CSRF token: refused and counted by the identity provider.
    login = urllib.parse.urlencode({"username": "alice", "password": "wrong"}).encode()
    http(
        "POST",
        f"{identity}/login",
        data=login,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )


def refused_by_the_http_layer(url: str) -> None:
    address = urllib.parse.urlsplit(url)
    assert address.hostname is not None
    assert address.port is not None
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]


def scrape(platform: dict[str, ImageProcess]) -> dict[str, set[str]]:
    out = {}
    for name, process in platform.items():
        status, body = http("GET", process.metrics_url)
        assert status == 200, name
        out[name] = exported_series(body.decode())
    return out


def test_every_metric_named_by_alerts_and_dashboard_is_exported(
    platform: dict[str, ImageProcess],
) -> None:
    wanted = referenced_series()
    deadline = time.monotonic() + 20
    while True:
        exported = scrape(platform)
        everything = set().union(*exported.values())
        missing = {
            name: sorted(where)
            for name, where in wanted.items()
            if name not in everything and name not in EXTERNAL
        }
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert missing == {}, f"named by alerts/dashboard but exported by no service: {missing}"


def test_public_listeners_never_serve_metrics(platform: dict[str, ImageProcess]) -> None:
    """/metrics lives on METRICS_PORT only; the public listeners (what an Ingress publishes, for the
    gateway and the identity provider) answer 404 for it and serve no internal /openapi.json."""
    for name, process in platform.items():
        status, _ = http("GET", f"{process.url}/metrics")
        assert status == 404, name
        status, body = http("GET", process.metrics_url)
        assert status == 200, name
        assert b"process_start_time_seconds" in body, name
    for public in ("gateway", "identity"):
        status, body = http("GET", f"{platform[public].url}/openapi.json")
        assert status == 404 or b'"openapi"' not in body, public  # the gateway: the SPA's page


def test_the_external_allowlist_is_minimal() -> None:
    wanted = referenced_series()
    assert set(EXTERNAL) <= set(wanted), "allow-listed names no alert or panel uses any more"
    assert not [a for a in alerts() if "kube_" in a["expr"] and a["alert"] != "TimesheetsPodCrashLooping"]


# Who must export what: the alerts and panels group these by job/service and would silently miss a
# component that does not export them.
EXPORTERS = {
    "process_start_time_seconds": set(ORDER),  # TimesheetsPodRestarting, per job
    "http_requests_total": {"identity", "timesheets", "approvals", "audit"},
    "http_request_duration_seconds_bucket": {"identity", "timesheets", "approvals", "audit"},
    "db_pool_connections": {"identity", "timesheets", "approvals", "audit"},
    "outbox_pending_events": {"timesheets", "approvals"},
    "outbox_oldest_event_age_seconds": {"timesheets", "approvals"},
    "audit_chain_ok": {"audit"},
    "gateway_requests_total": {"gateway"},
    "gateway_jwks_key_age_seconds": {"gateway"},
    "identity_tokens_issued_total": {"identity"},
}
# Known gaps, each reported to the component's owner; strict, so a fix turns this list red.
# (metric, component) pairs known not to be exported yet, each with the reason; none today.
KNOWN_GAPS: dict[tuple[str, str], str] = {}


@pytest.mark.parametrize(
    ("metric", "service"),
    [
        pytest.param(
            metric,
            service,
            marks=[pytest.mark.xfail(strict=True, reason=KNOWN_GAPS[(metric, service)])]
            if (metric, service) in KNOWN_GAPS
            else [],
        )
        for metric, services in sorted(EXPORTERS.items())
        for service in sorted(services)
    ],
)
def test_each_component_exports_what_its_alerts_and_panels_group_by(
    platform: dict[str, ImageProcess], metric: str, service: str
) -> None:
    # Gauges that background tasks refresh (the outbox relay's, every few seconds after its first
    # pass) appear a little after start-up, later still on a busy machine: wait for them, bounded.
    deadline = time.monotonic() + 30
    while True:
        status, body = http("GET", platform[service].metrics_url)
        assert status == 200
        if metric in exported_series(body.decode()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert metric in exported_series(body.decode()), f"{service} does not export {metric}"


def test_the_exporters_table_only_names_referenced_series() -> None:
    assert set(EXPORTERS) <= set(referenced_series())


# --- the local Prometheus of `make dev`, for real ---------------------------------------------


@pytest.fixture
def local_prometheus(platform: dict[str, ImageProcess], tmp_path: Path) -> Iterator[tuple[str, str]]:
    """prometheus-local.yml as devstack uses it, with targets moved to this test's ports and one
    extra 'audit' target where nothing listens. Yields (Prometheus URL, the dead target)."""
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("prometheus comes from the Debian package 'prometheus'")
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus-local.yml").read_text())
    config["global"].update({"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"})
    # The same rules, every group evaluated at the fast global interval (the 30-day budget group is
    # evaluated every 5 minutes in real life, which would outlast the test).
    rules = tmp_path / "rules"
    rules.mkdir()
    for pattern in config["rule_files"]:
        for path in PROMETHEUS_DIR.glob(pattern):
            doc = yaml.safe_load(path.read_text())
            for group in doc["groups"]:
                group.pop("interval", None)
            (rules / path.name).write_text(yaml.safe_dump(doc))
    config["rule_files"] = [str(rules / "*.yml")]
    dead = f"127.0.0.1:{free_port()}"
    for job in config["scrape_configs"]:
        service = job["job_name"].removeprefix("timesheets-")
        target = f"127.0.0.1:{platform[service].metrics_port}"
        static = job["static_configs"][0]
        static["targets"] = [target, dead] if service == "audit" else [target]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen(
        [
            prometheus,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("wb"),
    )
    try:
        yield f"http://127.0.0.1:{port}", dead
    finally:
        process.terminate()
        process.wait(timeout=20)


def api(url: str) -> Any:
    status, body = http("GET", url)
    assert status == 200, body[:300]
    return json.loads(body)["data"]


def test_local_prometheus_scrapes_every_service_and_evaluates_every_rule_cleanly(
    local_prometheus: tuple[str, str],
) -> None:
    url, dead = local_prometheus
    rule_count = len(load_rules())
    deadline = time.monotonic() + 60
    while True:
        try:
            targets = api(f"{url}/api/v1/targets")["activeTargets"]
            groups = api(f"{url}/api/v1/rules")["groups"]
            pending = api(f"{url}/api/v1/alerts")["alerts"]
        except (OSError, AssertionError):
            targets, groups, pending = [], [], []
        rules = [rule for group in groups for rule in group["rules"]]
        up = {t["labels"]["job"].removeprefix("timesheets-") for t in targets if t["health"] == "up"}
        evaluated = [r for r in rules if r.get("lastEvaluation", "").startswith("20")]
        down = [a for a in pending if a["labels"].get("alertname") == "TimesheetsTargetDown"]
        # absent(up) is true until the first scrapes: pending for a moment after start, then gone
        missing = [a for a in pending if a["labels"].get("alertname") == "TimesheetsTargetMissing"]
        ready = up == set(ORDER) and len(evaluated) == rule_count and down and not missing
        if ready or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert up == set(ORDER), targets
    assert len(rules) == rule_count
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    # The SRE's view: the dead target is seen at once (pending until its `for:` elapses).
    assert [(a["labels"]["job"], a["labels"]["instance"], a["state"]) for a in down] == [
        ("timesheets-audit", dead, "pending")
    ]
    # Every target is known to service discovery: nothing is absent.
    assert missing == []


def test_services_write_nothing_into_their_image(platform: dict[str, ImageProcess]) -> None:
    """The chart mounts the root filesystem read-only (only /tmp is writable): after start-up,
    migrations, seeding and traffic, /opt/app of every service is exactly as the image built it."""
    for name, process in platform.items():
        assert process.app_files() == process.initial_files, name
