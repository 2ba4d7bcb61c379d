"""Metrics on a port of their own: the kit's metrics listener, and a service process as shipped
(``python -m <service>``) serving /metrics only there while its public listener answers 404."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import Counter
from svckit.metrics import MetricsServer
from svckit.settings import ServiceSettings, SettingsError, load_settings

from testkit.fixtures import ServiceProcess, free_port, metrics_url, receiver_env, scrape, serve_app

probe = Counter("kit_metrics_port_probe_total", "Incremented by the metrics port tests only.")


def get(url: str, method: str = "GET") -> tuple[int, bytes, str]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status), response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


def test_listener_serves_the_registry_at_metrics_only() -> None:
    server = MetricsServer("127.0.0.1", 0).start()
    port = server.port
    try:
        probe.inc()
        status, body, content_type = get(server.url)
        assert server.url == f"http://127.0.0.1:{server.port}/metrics"
        assert status == 200
        assert content_type.startswith("text/plain; version=")
        assert b"kit_metrics_port_probe_total 1.0" in body
        assert get(server.url, "HEAD")[:2] == (200, b"")
        assert get(f"http://127.0.0.1:{server.port}/")[0] == 404
        assert get(f"http://127.0.0.1:{server.port}/metrics/x")[0] == 404
        assert get(server.url, "POST")[0] == 405
    finally:
        server.stop()
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), 1):
        pass  # stopped: nothing listens any more


def test_a_taken_port_is_an_error_at_start() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError, match="Address already in use"):
            MetricsServer("127.0.0.1", taken.getsockname()[1]).start()


@pytest.mark.unit
def test_metrics_port_must_differ_from_the_public_port(capsys: pytest.CaptureFixture[str]) -> None:
    env = {"PORT": "8200", "METRICS_PORT": "8200"}
    with pytest.raises(SettingsError):
        load_settings(ServiceSettings, env=env)
    assert capsys.readouterr().err.strip() == (
        "invalid configuration: METRICS_PORT must differ from PORT (both are 8200)"
    )


async def test_in_process_apps_share_the_kit_listener(identity_keys: dict[str, str]) -> None:
    from svckit.app import create_service_app

    settings = load_settings(ServiceSettings, env=receiver_env(identity_keys))
    async with serve_app(create_service_app(settings, [])) as url:
        async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as response:
            assert response.status == 404  # the public listener: served in this event loop
        assert "process_cpu_seconds_total" in await scrape(url)
        assert metrics_url(url).endswith("/metrics")
        assert not metrics_url(url).startswith(url)
    with pytest.raises(LookupError):
        metrics_url("http://127.0.0.1:9")


def test_service_process_serves_metrics_only_on_its_metrics_port(service_env: dict[str, str]) -> None:
    with ServiceProcess("audit", service_env) as service:
        status, body, _ = get(service.url + "/metrics")
        assert status == 404
        assert b"metrics port" in body
        status, body, _ = get(metrics_url(service.url))
        assert status == 200
        assert b"audit_events_ingested_total" in body
        assert b"db_pool_connections" in body


@pytest.mark.parametrize(("bind_host", "shown"), [("127.0.0.1", "127.0.0.1"), ("::", "[::]")])
def test_a_taken_metrics_port_stops_start_up_with_one_line(
    service_env: dict[str, str], bind_host: str, shown: str
) -> None:
    """``::`` (the chart's) shown as a URL host: ``:::9080`` read as nothing at all."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**service_env, "PORT": str(free_port()), "METRICS_PORT": str(port), "PATH": "/usr/bin:/bin"}
        result = subprocess.run(
            [sys.executable, "-m", "audit"],
            env={**env, "BIND_HOST": bind_host},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"cannot serve metrics on {shown}:{port} (METRICS_PORT): Address already in use"
    ]


def test_dev_reload_picks_up_a_synced_source_file(service_env: dict[str, str], tmp_path: Path) -> None:
    """What `skaffold dev` does with the chart's devMode.sourceSync: the code runs from a writable copy
    (PYTHONPATH), an edited file is copied over it, and the service restarts itself with it — its
    metrics still on the metrics port."""
    import shutil

    repo = Path(__file__).resolve().parents[3]
    shutil.copytree(repo / "services" / "kit" / "svckit", tmp_path / "svckit")
    shutil.copytree(repo / "services" / "audit" / "audit", tmp_path / "audit")
    env = {**service_env, "DEV_RELOAD": "true", "PYTHONPATH": str(tmp_path)}
    with ServiceProcess("audit", env).start(timeout=60) as service:
        assert json.loads(get(service.url + "/healthz")[1]) == {"status": "ok"}
        health = tmp_path / "svckit" / "health.py"
        health.write_text(health.read_text().replace('{"status": "ok"}', '{"status": "ok", "synced": True}'))
        deadline = time.monotonic() + 30
        body: dict[str, object] = {}
        while time.monotonic() < deadline:
            try:
                body = json.loads(get(service.url + "/healthz")[1])
            except (OSError, ValueError):
                body = {}
            if body.get("synced"):
                break
            time.sleep(0.3)
        assert body == {"status": "ok", "synced": True}
        assert get(metrics_url(service.url))[0] == 200


def test_dev_reload_serves_with_the_configured_request_timeouts(service_env: dict[str, str]) -> None:
    """Under DEV_RELOAD the app runs in the reloader's child: the head timeout the settings give still
    holds there (a half-sent request head gets its 408 after 1 s, not after the default 10 s)."""
    env = {**service_env, "DEV_RELOAD": "true", "REQUEST_HEAD_TIMEOUT_SECONDS": "1"}
    with ServiceProcess("audit", env).start(timeout=60) as service:
        host, port = service.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as client:
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # the head never ends
            started = time.monotonic()
            answer = client.recv(4096)
            waited = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert waited < 4


def metric_families(exposition: str) -> set[str]:
    """The metric families an exposition declares (its ``# TYPE`` lines)."""
    return {line.split()[2] for line in exposition.splitlines() if line.startswith("# TYPE ")}


def test_dev_reload_serves_the_same_metrics(service_env: dict[str, str]) -> None:
    """Under DEV_RELOAD the application runs in the reloader's child and the metrics listener was in
    the reloader, reading the child's samples from multiprocess files: what is not written to those
    files was missing — the database pool gauge (``db_pool_connections``, a collector read at scrape
    time, in the process that has the pool), the Python runtime's collectors, every counter's
    ``_created``. Now the listener runs in the application's process, on the port the reloader
    bound: the same metrics as without DEV_RELOAD, the pool's among them."""
    with ServiceProcess("audit", service_env).start(timeout=60) as service:
        expected = metric_families(get(service.metrics_url)[1].decode())
    assert "db_pool_connections" in expected
    env = {**service_env, "DEV_RELOAD": "1", "DB_POOL_MAX": "7", "MAX_CONNECTIONS_PER_WORKER": "300"}
    with ServiceProcess("audit", env).start(wait_path="/readyz", timeout=60) as service:
        status, body, _ = get(service.metrics_url)
    assert status == 200
    exposition = body.decode()
    assert metric_families(exposition) == expected
    assert 'db_pool_connections{state="max"} 7.0' in exposition.splitlines()
    assert "http_max_connections 300.0" in exposition.splitlines()  # set in the child, not the reloader
