"""The open-file limit against MAX_CONNECTIONS_PER_WORKER at start (svckit.fdlimit), on a real
service process whose ``RLIMIT_NOFILE`` the test lowers before it starts (``ulimit -n``)."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from audit.settings import AuditSettings
from svckit.fdlimit import files_besides_connections
from svckit.settings import load_settings

from testkit.fixtures import ServiceProcess, ServiceRedis, free_port, migrate_schema

AUDIT_PACKAGE = Path(__file__).resolve().parents[2] / "audit" / "audit"


def nofile(soft: int, hard: int) -> Callable[[], None]:
    """What ``ulimit -Sn soft -Hn hard`` in the service's shell would do."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return limit


def served_cap(service: ServiceProcess) -> float:
    """What the service's ``http_max_connections`` gauge says."""
    with urllib.request.urlopen(service.metrics_url, timeout=5) as response:
        text = response.read().decode()
    lines = text.splitlines()
    values = [float(line.split()[1]) for line in lines if line.startswith("http_max_connections ")]
    assert len(values) == 1, text
    return values[0]


def soft_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-file limit in /proc")


@pytest.fixture
async def audit_env(
    database_url: str, service_env: dict[str, str], service_redis: ServiceRedis
) -> dict[str, str]:
    """The audit service's environment as it runs in production (its database role, its Redis user)."""
    await migrate_schema(database_url, "audit", AUDIT_PACKAGE)
    return service_redis.runtime_env(service_env, "audit")


def besides(env: dict[str, str]) -> int:
    """What an audit worker may hold besides its client connections, as the service counts it."""
    return files_besides_connections(load_settings(AuditSettings, env=env))


@pytest.fixture(autouse=True)
def _no_cap_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAX_CONNECTIONS_PER_WORKER", raising=False)  # "unset" must mean unset


def test_a_low_soft_limit_is_raised_for_the_connection_cap(audit_env: dict[str, str]) -> None:
    """A soft limit of 512 with room under the hard limit: raised to what the default cap needs."""
    env = audit_env
    needed = 2048 + besides(env)
    with ServiceProcess("audit", env, preexec_fn=nofile(512, needed + 1000)).start("/readyz") as service:
        assert service.process is not None
        assert soft_limit(service.process.pid) == needed
        assert "too low" not in service.logs()


def test_a_cap_set_above_the_hard_limit_stops_the_start_with_one_line(audit_env: dict[str, str]) -> None:
    """MAX_CONNECTIONS_PER_WORKER set by the operator and a hard limit that cannot hold it: exit 2."""
    env = {**audit_env, "MAX_CONNECTIONS_PER_WORKER": "2048"}
    try:
        result = subprocess.run(
            [sys.executable, "-m", "audit"],
            env={**os.environ, **env, "PORT": str(free_port()), "METRICS_PORT": str(free_port())},
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
            preexec_fn=nofile(1024, 1024),
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the service started (and served) with a cap it cannot hold")
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("invalid configuration: MAX_CONNECTIONS_PER_WORKER=2048 needs")
    assert "(RLIMIT_NOFILE) is 1024" in line
    assert f"MAX_CONNECTIONS_PER_WORKER to {1024 - besides(env)} or less" in line


def test_the_default_cap_is_lowered_to_what_the_hard_limit_leaves(audit_env: dict[str, str]) -> None:
    """MAX_CONNECTIONS_PER_WORKER unset and a hard limit below the default cap: the service starts, says
    so in one warning line, and answers 503 at the lowered cap (not EMFILE somewhere past it)."""
    env = audit_env
    room = 3
    limit = besides(env) + room
    with ServiceProcess("audit", env, preexec_fn=nofile(limit, limit)).start("/readyz") as service:
        warnings = [
            json.loads(line)
            for line in service.logs().splitlines()
            if line.startswith("{") and "open-file limit is too low" in line
        ]
        assert len(warnings) == 1, service.logs()
        assert warnings[0]["max_connections"] == room
        assert warnings[0]["open_file_limit"] == limit
        assert served_cap(service) == room  # and in a metric, for who reads no start-up logs
        time.sleep(0.2)  # the start-up probe's connection is gone
        holders = [socket.create_connection(("127.0.0.1", service.port)) for _ in range(room)]
        try:
            time.sleep(0.2)
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(service.url + "/events", timeout=5)  # served over the cap?
            answer = refused.value
            assert answer.code == 503
            assert answer.headers["content-type"] == "application/problem+json"
            assert b"as many connections" in answer.read()
        finally:
            for holder in holders:
                holder.close()
        time.sleep(0.2)
        with urllib.request.urlopen(service.url + "/readyz", timeout=5) as ready:
            assert ready.status == 200


def refusal(url: str) -> urllib.error.HTTPError:
    """The error status ``url`` answers; the test fails on a success or on no answer at all."""
    try:
        urllib.request.urlopen(url, timeout=5)
    except urllib.error.HTTPError as refused:
        return refused
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        pytest.fail(f"over the cap the client got {exc!r}, not the cap's 503")
    pytest.fail("a request over the cap was served")


def test_a_raised_soft_limit_holds_the_whole_cap_and_answers_the_next_one_503(
    audit_env: dict[str, str],
) -> None:
    """The end-to-end promise: a worker started under a soft limit far below its cap (a container
    runtime's 1024 against the default 2048, scaled down) holds all ``cap`` connections, answers the
    next one with the cap's 503 problem, and still answers its probe (which opens a database
    connection). Without the start-up check (seen with it taken out) the worker held 112 of the 300
    (its 128 descriptors used up), the other 188 clients saw their connection closed without a byte,
    the request over the cap, ``/readyz`` and ``/healthz`` were all reset at once (a kubelet would
    have restarted the pod for its liveness probe), no 503 came and the service logged nothing."""
    cap, soft = 300, 128
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < cap + 64:
        pytest.skip("this test process cannot open the cap's connections itself")
    env = {**audit_env, "MAX_CONNECTIONS_PER_WORKER": str(cap), "REQUEST_HEAD_TIMEOUT_SECONDS": "60"}
    with ServiceProcess("audit", env, preexec_fn=nofile(soft, 4096)).start("/readyz") as service:
        assert served_cap(service) == cap
        time.sleep(0.2)  # the start-up probe's connection is gone
        holders = [socket.create_connection(("127.0.0.1", service.port)) for _ in range(cap)]
        try:
            time.sleep(0.5)  # all accepted: each one a descriptor of the worker
            refused = refusal(service.url + "/events")
            assert refused.code == 503
            assert refused.headers["content-type"] == "application/problem+json"
            assert b"as many connections" in refused.read()
            with urllib.request.urlopen(service.url + "/readyz", timeout=5) as ready:
                assert ready.status == 200  # the probe is served at the cap, database and all
        finally:
            for holder in holders:
                holder.close()
        assert "Too many open files" not in service.logs()
