"""A service as a real process (migrate command, SIGTERM) and graceful shutdown of in-flight work."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import urllib.request

import aiohttp
import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from svckit.app import create_service_app
from svckit.settings import ServiceSettings, load_settings

from testkit.fixtures import ServiceProcess, free_port, migrate_role_env, receiver_env


def test_migrate_command_is_idempotent(service_env: dict[str, str]) -> None:
    for _ in range(2):
        result = subprocess.run(
            [sys.executable, "-m", "audit", "migrate"],
            env={**service_env, **migrate_role_env("audit"), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr + result.stdout


def test_sigterm_stops_the_process_cleanly(service_env: dict[str, str]) -> None:
    # ready, not just up: /healthz answers before the pool has connected, /readyz only after (it
    # answered 503 here once, when the check below came first)
    service = ServiceProcess("audit", service_env).start("/readyz")
    with urllib.request.urlopen(service.url + "/readyz", timeout=5) as response:
        assert response.status == 200
    code = service.stop(timeout=20)
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status says why it stopped.
    assert code in (0, -signal.SIGTERM)
    logs = service.logs()
    assert "Application shutdown complete" in logs
    assert "Traceback" not in logs


async def test_in_flight_request_finishes_after_shutdown_starts(identity_keys: dict[str, str]) -> None:
    started = asyncio.Event()

    async def slow(request: Request) -> Response:
        started.set()
        await asyncio.sleep(0.5)
        return JSONResponse({"done": True})

    settings = load_settings(ServiceSettings, env=receiver_env(identity_keys))
    app = create_service_app(settings, [Route("/slow", slow)], require_identity=False)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, timeout_graceful_shutdown=5)
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    async with aiohttp.ClientSession() as session:
        request = asyncio.create_task(session.get(f"http://127.0.0.1:{port}/slow"))
        await started.wait()
        server.should_exit = True  # what the SIGTERM handler sets
        response = await request
        assert response.status == 200
        assert await response.json() == {"done": True}
    await serving
    # After shutdown nothing listens any more.
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        refused = False
    except OSError:
        refused = True
    assert refused
