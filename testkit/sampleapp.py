"""A minimal service for tests of how the kit serves (``svckit.server``): as separate processes, with
one worker or several, without a database (or as a stand-in upstream behind a gateway). ``GET /fast``,
``GET /slow?s=<seconds>``, ``GET /entropy`` (what the worker draws at random), and any other path
(``?s=<seconds>`` to be slow).

For the supervisor's watchdog (``svckit.watchdog``): ``GET /block?s=<seconds>`` blocks the worker's event
loop in a C call (``time.sleep``), as a blocking call in a handler does (``&how=spin``: in Python, as a
CPU-bound bug does); ``&release=<path>`` ends the block early once that file exists (a test that has
seen what it waited for need not sit out the rest). ``SAMPLEAPP_HANG_AT_START``
names a directory: once a file ``armed`` is in it, the next worker to start takes ``taken`` there and
hangs in its start (its application factory), before its event loop ever runs; any later one starts
as usual. ``SAMPLEAPP_METRICS_PORT``: the kit's metrics listener on that port, as ``python -m
<service>`` starts it (its ``/healthz`` and ``/readyz`` are the kubelet's probes: ``svckit.probes``)."""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import sys
import time
import uuid

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from svckit.context import request_id_var
from svckit.identity import new_nonce


async def fast(request: Request) -> Response:
    return JSONResponse({"ok": True, "pid": os.getpid()})


async def slow(request: Request) -> Response:
    await asyncio.sleep(min(float(request.query_params.get("s", "1")), 10.0))
    return JSONResponse({"ok": True, "pid": os.getpid()})


def released(path: str | None) -> bool:
    return path is not None and os.path.exists(path)


def block_the_loop(seconds: float, release: str | None = None) -> None:
    """A blocking call in a handler: the event loop stops for ``seconds``, or until ``release`` exists
    (the watchdog's stack dump names this function)."""
    if release is None:
        time.sleep(seconds)
        return
    until = time.monotonic() + seconds
    while time.monotonic() < until and not released(release):
        time.sleep(0.05)


def spin_the_loop(seconds: float, release: str | None = None) -> None:
    """A CPU-bound bug in a handler: pure Python that never yields (until ``seconds`` passed, or
    ``release`` exists)."""
    until = time.monotonic() + seconds
    if release is None:  # the bare loop: a stack dump then stops in this function (test_stuck_worker)
        while time.monotonic() < until:
            pass
        return
    checked = 0
    while time.monotonic() < until:
        checked += 1
        if checked % 10_000 == 0 and released(release):
            return


async def block(request: Request) -> Response:
    # the request's id in the context, as the kit's front (svckit.middleware) sets it for every request
    request_id_var.set(request.headers.get("x-request-id"))
    seconds = min(float(request.query_params.get("s", "1")), 60.0)
    release = request.query_params.get("release")
    if request.query_params.get("how") == "spin":
        spin_the_loop(seconds, release)
    else:
        block_the_loop(seconds, release)
    return JSONResponse({"ok": True, "pid": os.getpid()})


async def entropy(request: Request) -> Response:
    """What a worker draws from its per-process random state: ``random``'s generator, the kit's
    nonces (``svckit.identity``), a ``uuid4``, ``secrets`` — two workers must never draw alike."""
    return JSONResponse(
        {
            "pid": os.getpid(),
            "random": random.getrandbits(64),
            "nonce": new_nonce(),
            "uuid": uuid.uuid4().hex,
            "secret": secrets.token_hex(16),
        }
    )


def hang_at_start(seconds: float) -> None:
    """A start that never ends (an import or a factory waiting on something for ever)."""
    time.sleep(seconds)


async def anything(request: Request) -> Response:
    """Any other path (a stand-in upstream behind a gateway): ``?s=<seconds>`` makes it slow."""
    if "s" in request.query_params:
        await asyncio.sleep(min(float(request.query_params["s"]), 10.0))
    return JSONResponse({"ok": True, "path": request.url.path, "pid": os.getpid()})


def create_app() -> Starlette:
    hang = os.environ.get("SAMPLEAPP_HANG_AT_START")
    if hang and os.path.exists(os.path.join(hang, "armed")):
        try:
            os.close(os.open(os.path.join(hang, "taken"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            pass  # another worker hangs
        else:
            hang_at_start(600.0)
    return Starlette(
        routes=[
            Route("/fast", fast),
            Route("/slow", slow),
            Route("/block", block, methods=["GET", "POST"]),
            Route("/entropy", entropy),
            Route("/{path:path}", anything, methods=["GET", "POST", "PUT", "DELETE"]),
        ]
    )


def main() -> int:
    """``python -m testkit.sampleapp PORT WORKERS [uvicorn]``: serve with the kit (or plain uvicorn)."""
    from svckit.logs import configure_logging
    from svckit.server import ProblemHttpProtocol, ServingConfig, serve

    configure_logging("sampleapp", "WARNING")  # the supervisor's lines, as JSON on stdout
    port, workers = int(sys.argv[1]), int(sys.argv[2])
    plain = len(sys.argv) > 3 and sys.argv[3] == "uvicorn"
    config = ServingConfig(
        "testkit.sampleapp:create_app",
        factory=True,
        host="127.0.0.1",
        port=port,
        workers=workers,
        http="httptools" if plain else ProblemHttpProtocol,
        log_level="warning",
        timeout_graceful_shutdown=10,
        worker_stuck_seconds=float(os.environ.get("WORKER_STUCK_SECONDS", "30")),
        worker_start_seconds=float(os.environ.get("WORKER_START_SECONDS", "60")),
    )
    metrics_port = os.environ.get("SAMPLEAPP_METRICS_PORT")
    if metrics_port and not plain:
        from svckit import probes
        from svckit.metrics import MetricsServer

        # the liveness probe's bound on a silent loop (10 s in a service), shorter for a test's sake
        silence = os.environ.get("SAMPLEAPP_LIVENESS_SILENCE_SECONDS")
        if silence:
            probes.LIVENESS_SILENCE_SECONDS = float(silence)

        metrics = MetricsServer("127.0.0.1", int(metrics_port)).start()
        try:
            return serve(config, workers)
        finally:
            metrics.stop()
    if plain:  # uvicorn's own supervisor and shutdown, to compare with
        uvicorn.run(
            "testkit.sampleapp:create_app",
            factory=True,
            host="127.0.0.1",
            port=port,
            workers=workers,
            log_level="warning",
            timeout_graceful_shutdown=10,
        )
        return 0
    return serve(config, workers)


if __name__ == "__main__":
    raise SystemExit(main())
