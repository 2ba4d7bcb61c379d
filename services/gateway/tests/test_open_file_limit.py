"""The gateway's upstream pools in its open-file count at start (svckit.fdlimit, the ``open_files`` hook
of ``gateway/__main__.py``), on a real ``python -m gateway`` under a low ``ulimit -n``.

Each gateway worker may open ``UPSTREAM_POOL_SIZE`` connections to each upstream service besides its
client connections: 768 descriptors with the defaults, more than the kit's own allowance. Counted
without them, a gateway would start under a limit its pools then exhaust (EMFILE at the upstream
connect, answered 502/503 to clients holding a valid token).
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from gateway.settings import GatewaySettings
from svckit.fdlimit import files_besides_connections
from svckit.settings import load_settings

from testkit.fixtures import ServiceProcess, free_port

from .conftest import Echo, Provider, process_env

CAP, POOL = 100, 200
#: the cap of the stalled-downloads test: large against what the gateway counts besides its connections
STALL_CAP = 600


def nofile(soft: int, hard: int) -> Callable[[], None]:
    """What ``ulimit -Sn soft -Hn hard`` in the gateway's shell would do."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return limit


def soft_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-file limit in /proc")


def test_a_hard_limit_that_holds_the_cap_but_not_the_upstream_pools_stops_the_start(
    provider: Provider, echo: Echo, identity_keys: dict[str, str], redis_prefix: str
) -> None:
    """Room for the cap and the kit's own pools, not for the upstream pools: exit 2, one line whose
    count includes ``UPSTREAM_POOL_SIZE`` times the upstream services."""
    env = process_env(
        provider,
        echo,
        identity_keys,
        redis_prefix,
        MAX_CONNECTIONS_PER_WORKER=str(CAP),
        UPSTREAM_POOL_SIZE=str(POOL),
    )
    settings = load_settings(GatewaySettings, env=env)
    kit = files_besides_connections(settings)
    pools = POOL * len(settings.upstreams)
    hard = 2 * CAP + kit + pools // 2  # the connections and the kit's count fit; the pools do not
    try:
        result = subprocess.run(
            [sys.executable, "-m", "gateway"],
            env={**os.environ, **env, "PORT": str(free_port()), "METRICS_PORT": str(free_port())},
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
            preexec_fn=nofile(hard, hard),
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the gateway started (and served) under a limit its upstream pools can exhaust")
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        f"invalid configuration: MAX_CONNECTIONS_PER_WORKER={CAP} needs {2 * CAP + kit + pools} open "
        f"files per worker ({kit + pools} besides its connections, 2 per connection), but the open-file "
        f"limit (RLIMIT_NOFILE) is {hard}"
    ), lines[0]


def stalled_download(port: int, path: str) -> socket.socket:
    """A client that asks for ``path`` and reads nothing of it (a tiny receive window), so the
    gateway's response waits on the socket with the file still open."""
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", port))
    client.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return client


async def test_connections_stalled_on_spa_files_stay_within_the_open_file_limit(
    provider: Provider,
    echo: Echo,
    identity_keys: dict[str, str],
    redis_prefix: str,
    tmp_path: Path,
) -> None:
    """Every connection of the gateway may hold a second descriptor: the SPA file its response is
    streaming (Starlette's ``FileResponse`` keeps it open until the last chunk is sent, as long as the
    client takes to read it — up to ``RESPONSE_SEND_TIMEOUT_SECONDS`` per stalled write). A gateway
    started under exactly the limit it asked for, with all but one connection of its cap stalled on a
    large asset, must still answer the last one (and every stalled one its 200), never EMFILE."""
    asset = "/assets/app.0123abcd.js"
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "app.0123abcd.js").write_bytes(b"/* padding */\n" * ((8 << 20) // 14))
    (tmp_path / "index.html").write_text("<!doctype html><title>t</title>")
    env = process_env(
        provider,
        echo,
        identity_keys,
        redis_prefix,
        MAX_CONNECTIONS_PER_WORKER=str(STALL_CAP),
        UPSTREAM_POOL_SIZE="4",
        GATEWAY_WORKERS="1",
        SPA_DIST_DIR=str(tmp_path),
        RESPONSE_SEND_TIMEOUT_SECONDS="60",
        REQUEST_HEAD_TIMEOUT_SECONDS="60",
    )

    def fill() -> None:
        process = ServiceProcess("gateway", env, preexec_fn=nofile(64, 16384))
        with process.start("/readyz") as gateway:
            assert gateway.process is not None
            limit = soft_limit(gateway.process.pid)  # what the gateway raised itself to
            with urllib.request.urlopen(gateway.metrics_url, timeout=5) as scraped:
                assert f"http_max_connections {float(STALL_CAP)}" in scraped.read().decode()
            time.sleep(0.2)  # the start-up probe's connection is gone
            stalled = [stalled_download(gateway.port, asset) for _ in range(STALL_CAP - 1)]
            try:
                time.sleep(1.0)  # responses begun, each with its file open and its socket full
                held = len(os.listdir(f"/proc/{gateway.process.pid}/fd"))
                # generous: behind 599 stalled downloads a loaded host once took over 5 s to answer;
                # what is checked here is that it answers (no EMFILE), not how fast
                with urllib.request.urlopen(gateway.url + "/config.json", timeout=30) as last:
                    assert last.status == 200  # the cap's last connection
                heads = []
                for client in stalled:
                    client.settimeout(10)  # the gateway may still be opening the last ones
                    try:
                        heads.append(client.recv(12))
                    except OSError as exc:
                        heads.append(repr(exc).encode())
                assert Counter(heads) == {b"HTTP/1.1 200": STALL_CAP - 1}
            finally:
                for client in stalled:
                    client.close()
            assert held <= limit
            assert "Too many open files" not in gateway.logs(), gateway.logs()[-3000:]

    await asyncio.to_thread(fill)


async def test_the_default_cap_is_lowered_to_two_files_per_connection(
    provider: Provider,
    echo: Echo,
    identity_keys: dict[str, str],
    redis_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``MAX_CONNECTIONS_PER_WORKER`` unset and a hard limit below what the default cap needs: the
    gateway serves as many connections as the limit holds at two descriptors each, and says so."""
    monkeypatch.delenv("MAX_CONNECTIONS_PER_WORKER", raising=False)  # "unset" must mean unset
    env = process_env(
        provider, echo, identity_keys, redis_prefix, UPSTREAM_POOL_SIZE="4", GATEWAY_WORKERS="1"
    )
    settings = load_settings(GatewaySettings, env=env)
    besides = files_besides_connections(settings) + 4 * len(settings.upstreams)
    room = 50
    limit = besides + 2 * room + 1  # the odd descriptor holds no connection

    def start() -> None:
        with ServiceProcess("gateway", env, preexec_fn=nofile(limit, limit)).start("/readyz") as gateway:
            warnings = [line for line in gateway.logs().splitlines() if "open-file limit is too low" in line]
            assert len(warnings) == 1, gateway.logs()
            assert f'"max_connections": {room},' in warnings[0]
            with urllib.request.urlopen(gateway.metrics_url, timeout=5) as scraped:
                assert f"http_max_connections {float(room)}" in scraped.read().decode()

    await asyncio.to_thread(start)
