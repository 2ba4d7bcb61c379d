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
