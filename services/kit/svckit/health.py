"""Liveness and readiness.

``/healthz`` only says the event loop answers (a failing liveness probe restarts the pod, so it must
not depend on anything outside the process). ``/readyz`` runs every registered check concurrently,
each bounded in time, and names the ones that failed: 503 problem with ``Retry-After`` when one did
(as every other 503 of the kit: a client or balancer that reads it is told when to look again).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

import aiohttp
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .problems import RETRY_AFTER, problem_response

Check = Callable[[], Awaitable[None]]


class CheckFailed(Exception):
    """A readiness failure whose message says why and is safe to publish in ``/readyz`` (no host
    names, credentials or internals); any other exception is reported by its type name only."""


CHECK_TIMEOUT_SECONDS = 2.5


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def run_checks(checks: Mapping[str, Check]) -> dict[str, str]:
    async def one(check: Check) -> str:
        try:
            await asyncio.wait_for(check(), CHECK_TIMEOUT_SECONDS)
            return "ok"
        except TimeoutError:
            return "timed out"
        except CheckFailed as exc:
            return f"failed: {exc}"
        except Exception as exc:  # a check failing for any reason means "not ready"
            return f"failed: {type(exc).__name__}"

    results = await asyncio.gather(*(one(check) for check in checks.values()))
    return dict(zip(checks, results, strict=True))


def readyz_endpoint(checks: Mapping[str, Check]) -> Callable[[Request], Awaitable[Response]]:
    async def readyz(request: Request) -> Response:
        results = await run_checks(checks)
        failed = [name for name, result in results.items() if result != "ok"]
        if failed:
            return problem_response(
                503,
                "Service Unavailable",
                "Not ready: " + ", ".join(failed),
                headers=RETRY_AFTER,
                status_text="not ready",
                checks=results,
                failed=failed,
            )
        return JSONResponse({"status": "ready", "checks": results})

    return readyz


def http_peer_check(session: Callable[[], aiohttp.ClientSession], base_url: str) -> Check:
    """A peer is ready for us when its liveness endpoint answers 200."""

    async def check() -> None:
        async with session().get(f"{base_url.rstrip('/')}/healthz") as response:
            if response.status != 200:
                raise RuntimeError(f"peer answered {response.status}")

    return check
