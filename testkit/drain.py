"""Keep-alive load across a shutdown: what clients saw while a server stopped.

:func:`load_through` runs keep-alive clients (one connection each, requests back to back), clients
that open a new connection per request, and a few slow requests in flight, calls ``stop()`` (send
SIGTERM to something) and keeps going for ``after`` seconds. Every request ends in one class:
``ok`` (any HTTP answer), ``refused`` (the connection was refused: nothing was sent, any client may
retry), ``reset`` (the connection was reset) or ``disconnected`` (closed under a sent request without
an answer). A server that stops well shows only the first two.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp


@dataclass
class DrainReport:
    after_signal: collections.Counter[str] = field(default_factory=collections.Counter)
    slow: list[str] = field(default_factory=list)
    requests_before_signal: int = 0
    #: what each unexpected failure was (exception type and text), so a failing run says what it saw
    details: collections.Counter[str] = field(default_factory=collections.Counter)

    @property
    def broken(self) -> int:
        """Requests that were cut: reset or disconnected without an answer (must be 0)."""
        return self.after_signal["reset"] + self.after_signal["disconnected"] + self.after_signal["other"]


def _classify_error(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        refused = exc.os_error.errno == errno.ECONNREFUSED if exc.os_error else False
        return "refused" if refused else "other"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "disconnected"
    if isinstance(exc, aiohttp.ClientOSError) and exc.errno in (errno.ECONNRESET, errno.EPIPE):
        return "reset"
    return "other"


async def _one(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], details: collections.Counter[str]
) -> str:
    try:
        async with session.get(url, headers=headers) as response:
            await response.read()
            return "ok"
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        outcome = _classify_error(exc)
        if outcome != "refused":
            details[f"{outcome}: {type(exc).__name__}: {exc!r}"[:300]] += 1
        return outcome


async def load_through(
    fast_url: str,
    slow_url: str,
    stop: Callable[[], None],
    *,
    headers: dict[str, str] | None = None,
    keep_alive_clients: int = 6,
    new_connection_clients: int = 2,
    slow_requests: int = 4,
    warm_up: float = 0.5,
    after: float = 2.0,
) -> DrainReport:
    report = DrainReport()
    headers = dict(headers or {})
    signalled = False
    deadline = float("inf")
    timeout = aiohttp.ClientTimeout(total=30)

    def record(outcome: str) -> None:
        if signalled:
            report.after_signal[outcome] += 1
        else:
            report.requests_before_signal += 1

    async def keep_alive() -> None:
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            while time.monotonic() < deadline:
                record(await _one(session, fast_url, headers, report.details))

    async def new_connections() -> None:
        while time.monotonic() < deadline:
            connector = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                record(await _one(session, fast_url, headers, report.details))

    async def slow() -> None:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            report.slow.append(await _one(session, slow_url, headers, report.details))

    workers = [asyncio.ensure_future(keep_alive()) for _ in range(keep_alive_clients)]
    workers += [asyncio.ensure_future(new_connections()) for _ in range(new_connection_clients)]
    await asyncio.sleep(warm_up)
    slows = [asyncio.ensure_future(slow()) for _ in range(slow_requests)]
    await asyncio.sleep(0.2)  # the slow requests are in flight
    signalled = True
    stop()
    deadline = time.monotonic() + after
    await asyncio.gather(*workers, *slows)
    return report
