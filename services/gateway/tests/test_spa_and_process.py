"""The SPA's files and config, and the gateway as shipped: ``python -m gateway`` with several workers."""

from __future__ import annotations

import asyncio
import json
import os
import re
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from testkit.fixtures import ServiceProcess, metrics_url
from testkit.workers import worker_pids

from .conftest import AUDIENCE, Echo, Provider, process_env


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text("<!doctype html><title>Timesheets</title><div id=app></div>")
    (tmp_path / "assets" / "app-3f9a1c2b.js").write_text("console.log('hi')")
    (tmp_path / "favicon.ico").write_bytes(b"\0\0\1\0")
    (tmp_path.parent / "secret.txt").write_text("do not serve")
    return tmp_path


async def test_spa_files_caching_and_fallback(
    api: Any, start_gateway: Any, provider: Provider, dist: Path
) -> None:
    async with start_gateway(spa_dist_dir=dist) as gateway:
        status, headers, body = await api("GET", gateway + "/", headers={"Accept": "text/html"})
        assert status == 200
        assert b"<div id=app>" in body
        assert headers["Cache-Control"] == "no-cache"
        csp = headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp
        assert "script-src 'self'" in csp
        assert "unsafe-inline" not in csp
        assert f"connect-src 'self' {provider.base}" in csp
        assert f"frame-src {provider.base}" in csp
        assert "frame-ancestors 'none'" in csp
        status, headers, body = await api(
            "GET", gateway + "/callback?code=x", headers={"Accept": "text/html"}
        )
        assert status == 200
        assert b"<div id=app>" in body
        status, headers, body = await api("GET", gateway + "/assets/app-3f9a1c2b.js")
        assert status == 200
        assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
        status, headers, _ = await api("GET", gateway + "/favicon.ico")
        assert (status, headers["Cache-Control"]) == (200, "no-cache")
        status, headers, _ = await api("GET", gateway + "/assets/missing.js", headers={"Accept": "*/*"})
        assert status == 404
        assert headers["Content-Type"] == "application/problem+json"
        for sneaky in ("/../secret.txt", "/%2e%2e/secret.txt", "/assets/..%2f..%2fsecret.txt"):
            import yarl

            status, _, body = await api(
                "GET", yarl.URL(gateway + sneaky, encoded=True), headers={"Accept": "*/*"}
            )
            assert b"do not serve" not in (body if isinstance(body, bytes) else b"")
        # API paths never fall back to the SPA
        status, headers, _ = await api("GET", gateway + "/api/whatever", headers={"Accept": "text/html"})
        assert status == 404
        assert headers["Content-Type"] == "application/problem+json"


async def test_the_spa_files_are_served_whole_whatever_range_is_asked(
    api: Any, start_gateway: Any, dist: Path
) -> None:
    """The SPA's files are small build assets no client fetches in parts: a ``Range`` is ignored (RFC
    9110 §14.2 lets a server ignore it; an unknown unit it must), so a range the server cannot parse
    is not a ``text/plain`` 400 and one past the end not an empty 416 (Starlette's own range
    handling, reproduced: ``Range: pages=1-2`` on ``/`` was 400 "Only support bytes range")."""
    whole = (dist / "assets" / "app-3f9a1c2b.js").read_bytes()
    async with start_gateway(spa_dist_dir=dist) as gateway:
        for asked in ("pages=1-2", "bytes=5-1", "bytes=1000-2000", "bytes=0-3", "bytes=0-1,4-5", "bytes"):
            status, headers, body = await api(
                "GET", gateway + "/assets/app-3f9a1c2b.js", headers={"Range": asked}
            )
            assert (status, body) == (200, whole), asked
            assert "Content-Range" not in headers, asked
            assert headers["Accept-Ranges"] == "none", asked
            status, headers, body = await api(
                "GET", gateway + "/", headers={"Range": asked, "Accept": "text/html"}
            )
            assert status == 200, asked
            assert b"<div id=app>" in body, asked
            assert "Content-Security-Policy" in headers, asked
        status, headers, body = await api(
            "HEAD", gateway + "/assets/app-3f9a1c2b.js", headers={"Range": "bytes=0-3"}
        )
        assert (status, headers["Content-Length"]) == (200, str(len(whole)))


async def test_config_json(api: Any, start_gateway: Any, provider: Provider, tmp_path: Path) -> None:
    timeouts = {  # the SPA's request timeout outlasts all of them, and a margin (5 s)
        "jwks_fetch_timeout_seconds": 3.0,
        "upstream_pool_wait_seconds": 0.5,
        "upstream_connect_timeout_seconds": 1.5,
        "upstream_read_timeout_seconds": 12.25,
    }
    async with start_gateway(spa_dist_dir=tmp_path, spa_auth_flow="implicit", **timeouts) as gateway:
        status, headers, body = await api("GET", gateway + "/config.json")
        assert status == 200
        assert headers["Cache-Control"] == "no-cache"
        assert body == {
            "issuer": provider.issuer,
            "clientId": "timesheets-spa",
            "audience": AUDIENCE,
            "flow": "implicit",
            "scopes": "openid profile email read:timesheets create:timesheets delete:timesheets "
            "approve:timesheets read:audit",
            "apiBase": "/api",
            "requestTimeoutMs": 22_250,
        }
        status, _headers, body = await api("GET", gateway + "/", headers={"Accept": "text/html"})
        assert status == 200
        assert b"not built" in body


async def test_operational_endpoints(api: Any, gateway: str) -> None:
    assert (await api("GET", gateway + "/healthz"))[0] == 200
    # ready once the issuer's signing keys are in (fetched in the background after start-up)
    for _ in range(100):
        if (await api("GET", gateway + "/readyz"))[0] == 200:
            break
        await asyncio.sleep(0.1)
    assert (await api("GET", gateway + "/readyz"))[0] == 200
    # The public listener (what the Ingress publishes) has no metrics and no internal OpenAPI document
    # (an unknown path is the SPA's — here its "not built" page — never a JSON document).
    status, _, _ = await api("GET", gateway + "/metrics", headers={"Accept": "application/json"})
    assert status == 404
    _, _, body = await api("GET", gateway + "/openapi.json", headers={"Accept": "application/json"})
    assert b'"openapi"' not in body
    status, _, body = await api("GET", metrics_url(gateway))
    assert status == 200
    assert b"gateway_requests_total" in body


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith((name + "{", name + " ")):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def scraped(process: ServiceProcess, until: Callable[[str], bool], within: float = 10.0) -> str:
    """The gateway's metrics once ``until`` holds for them (the workers write theirs to the files once
    a second), or as they are at the deadline (the caller's assertion then says what is wrong)."""
    deadline = time.monotonic() + within
    while True:
        async with aiohttp.ClientSession() as session, session.get(process.metrics_url) as response:
            text = await response.text()
        if until(text) or time.monotonic() > deadline:
            return text
        await asyncio.sleep(0.1)


def idle_upstream(text: str) -> float:
    return metric(text, "gateway_upstream_connections", service="timesheets", state="idle")


async def test_multi_worker_process(
    provider: Provider, echo: Echo, identity_keys: dict[str, str], redis_prefix: str
) -> None:
    env = process_env(
        provider, echo, identity_keys, redis_prefix, GATEWAY_WORKERS="2", PROMETHEUS_MULTIPROC_DIR=""
    )
    process = ServiceProcess("gateway", env)
    await asyncio.to_thread(process.start)
    try:
        token = provider.token()
        drawn: dict[str, list[str]] = {"x-identity-nonce": [], "x-request-id": []}
        for _ in range(20):
            async with (
                aiohttp.ClientSession() as session,  # a new connection each time: both workers serve
                session.get(
                    process.url + "/api/timesheets",
                    headers={"Authorization": f"Bearer {token}", "X-Forwarded-For": "6.6.6.6"},
                ) as response,
            ):
                assert response.status == 200, await response.text()
                body = await response.json()
                seen = [v for k, v in body["headers"] if k == "x-forwarded-for"]
                assert seen == ["127.0.0.1"]
                for name, values in drawn.items():
                    values += [v for k, v in body["headers"] if k == name]
        # each worker draws its own: the workers are forked from one process, whose generators they
        # must not share (a nonce sent twice is refused upstream as a replay)
        for name, values in drawn.items():
            assert len(values) == 20, (name, values)
            assert len(set(values)) == 20, (name, values)
        async with aiohttp.ClientSession() as session, session.get(process.url + "/metrics") as response:
            assert response.status == 404  # never on the public listener
        text = await scraped(
            process,
            lambda text: (
                metric(text, "gateway_requests_total", route="/api/timesheets", method="GET", status="200")
                >= 20
                and idle_upstream(text) >= 1
            ),
        )
        assert (
            metric(text, "gateway_requests_total", route="/api/timesheets", method="GET", status="200") == 20
        )
        assert metric(text, "gateway_jwks_fetch_total", outcome="ok") >= 1
        # the upstream pools, summed over both workers: every connection is back, idle
        assert metric(text, "gateway_upstream_connections", service="timesheets", state="idle") >= 1
        assert metric(text, "gateway_upstream_connections", service="timesheets", state="busy") == 0
        # The metrics listener lives in the supervisor, which aggregates both workers: its process_*
        # samples are the supervisor's (restarts only when the container does), on every scrape.
        starts = set()
        for _ in range(6):
            async with aiohttp.ClientSession() as session, session.get(process.metrics_url) as r:
                starts.add(metric(await r.text(), "process_start_time_seconds"))
        assert len(starts) == 1
        assert starts.pop() == pytest.approx(psutil.Process(process.process.pid).create_time(), abs=1)  # type: ignore[union-attr]
        logs = process.logs()
        assert logs.count('"logger": "access"') >= 20
        assert token not in logs
        assert token.split(".")[1] not in logs
    finally:
        await asyncio.to_thread(process.stop)


def workers_of(process: ServiceProcess) -> set[int]:
    """The pids of the gateway's worker processes (forked by its supervisor's fork server)."""
    assert process.process is not None
    return worker_pids(process.process.pid)


async def test_a_dead_workers_live_gauges_stop_counting(
    provider: Provider, echo: Echo, identity_keys: dict[str, str], redis_prefix: str
) -> None:
    """A gauge in a ``live*`` multiprocess mode (the upstream pools' connections: ``livesum``) is
    meant to count only live workers, but a worker's file stayed after it died: a crashed worker
    that the supervisor replaced kept adding its last values (idle connections that no longer
    exist) until the whole gateway restarted. The supervisor now drops a dead worker's live gauges
    before it starts the next one."""
    env = process_env(
        provider, echo, identity_keys, redis_prefix, GATEWAY_WORKERS="2", PROMETHEUS_MULTIPROC_DIR=""
    )
    process = ServiceProcess("gateway", env)
    await asyncio.to_thread(process.start)
    try:
        token = provider.token()
        for _ in range(10):
            async with (
                aiohttp.ClientSession() as session,
                session.get(
                    process.url + "/api/timesheets", headers={"Authorization": f"Bearer {token}"}
                ) as r,
            ):
                assert r.status == 200
        assert idle_upstream(await scraped(process, lambda text: idle_upstream(text) >= 1)) >= 1
        killed = workers_of(process)
        assert len(killed) == 2
        for pid in killed:  # both: the replacements have no upstream connection yet
            os.kill(pid, 9)
        for _ in range(200):
            current = workers_of(process)
            if len(current) == 2 and not current & killed:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the killed workers were not replaced")
        await asyncio.to_thread(process.start)  # the new workers serve
        # the dead workers' idle connections counted on (their files stayed) would never reach 0
        assert idle_upstream(await scraped(process, lambda text: idle_upstream(text) == 0)) == 0
    finally:
        await asyncio.to_thread(process.stop)


def test_bad_route_file_stops_start_up_with_one_line(tmp_path: Path, identity_keys: dict[str, str]) -> None:
    import subprocess
    import sys

    routes = tmp_path / "routes.yaml"
    routes.write_text('routes: [{method: GET, path: "/api/x", upstream: nowhere}]')
    result = subprocess.run(
        [sys.executable, "-m", "gateway"],
        env={
            **os.environ,
            **identity_keys,
            "GATEWAY_ROUTES_FILE": str(routes),
            "GATEWAY_WORKERS": "1",
        },
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "upstream 'nowhere'" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


async def test_waiting_for_a_pooled_connection_is_counted(
    api: Any, start_gateway: Any, provider: Provider
) -> None:
    async with start_gateway(upstream_pool_size=1) as gateway:
        token = provider.token()

        async def waits() -> float:
            async with aiohttp.ClientSession() as session, session.get(metrics_url(gateway)) as response:
                return metric(
                    await response.text(), "gateway_upstream_pool_waits_total", service="timesheets"
                )

        before = await waits()
        answers = await asyncio.gather(
            *(api("GET", f"{gateway}/api/timesheets/slow?s=0.2", token) for _ in range(3))
        )
        assert [status for status, _, _ in answers] == [200, 200, 200]  # queued, not refused
        await asyncio.sleep(1.3)  # pool figures are read once a second
        assert await waits() - before >= 2  # the second and the third request waited


async def test_a_metrics_file_left_empty_by_a_killed_worker_does_not_break_the_scrape(
    provider: Provider, echo: Echo, identity_keys: dict[str, str], redis_prefix: str, tmp_path: Path
) -> None:
    """prometheus_client creates a worker's metrics file and sizes it in two steps; a scrape between
    the two read a 0-byte file, and the whole ``/metrics`` answered 500 (client_python #1199; seen in
    CI right after a start, as the workers made their first files). A worker killed in that window
    leaves the empty file for good (named after a pid that never comes back): every scrape failed
    until the gateway restarted. An empty file holds no sample yet and is read as such."""
    env = process_env(
        provider,
        echo,
        identity_keys,
        redis_prefix,
        GATEWAY_WORKERS="2",
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path),
    )
    process = ServiceProcess("gateway", env)
    await asyncio.to_thread(process.start)
    try:
        token = provider.token()
        async with (
            aiohttp.ClientSession() as session,
            session.get(process.url + "/api/timesheets", headers={"Authorization": f"Bearer {token}"}) as r,
        ):
            assert r.status == 200
        for kind in ("counter", "histogram", "gauge_livesum", "gauge_all"):
            (tmp_path / f"{kind}_{2**22 + 1}.db").touch()  # as left between create and size
        for _ in range(3):
            async with aiohttp.ClientSession() as session, session.get(process.metrics_url) as r:
                assert r.status == 200, await r.text()
        counted = await scraped(  # counts reach the files once a second
            process,
            lambda text: (
                metric(text, "gateway_requests_total", route="/api/timesheets", method="GET", status="200")
                >= 1
            ),
        )
        assert (
            metric(counted, "gateway_requests_total", route="/api/timesheets", method="GET", status="200")
            == 1
        )
        # a file that claims more than it holds is corrupt: a 500 that says so, one JSON log line
        corrupt = tmp_path / f"counter_{2**22 + 2}.db"
        corrupt.write_bytes(struct.pack("ii", 4096, 0))
        async with aiohttp.ClientSession() as session, session.get(process.metrics_url) as r:
            assert r.status == 500
            assert "log" in await r.text()
        failed = [line for line in process.logs().splitlines() if "metrics scrape failed" in line]
        assert len(failed) == 1, process.logs()
        assert json.loads(failed[0])["level"] == "error"
        assert "Traceback" not in process.logs().replace(failed[0], "")
    finally:
        await asyncio.to_thread(process.stop)
