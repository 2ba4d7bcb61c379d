"""The kubelet's liveness and readiness probes, answered beside the event loop (the metrics listener).

On the public listener a probe is one more connection: at a pod's CPU request, a storm of requests
(200 people signing in within 2 s: ~400 page requests, ~4 times what the loop answers at 100m)
queued it behind every connection accepted before it and every request in flight on the one event
loop, and about half the probes timed out in the storm's first seconds — liveness included, though
the loop was answering all along, only late (services/identity/tests/test_signin_burst.py). A pod
taken out of its Service or restarted for being busy turns an overload into an outage.

So the chart's liveness and readiness probes go to the metrics listener (``METRICS_PORT``,
:class:`svckit.metrics.MetricsServer`: a thread of the process that serves — the only worker, or the
supervisor of several — so it answers while the loop is busy), and they are answered from what the
workers' event loops publish into shared memory, never by asking the busy loop:

* ``/healthz``: 200 while some worker's event loop has beaten (:mod:`svckit.watchdog`'s heartbeat,
  every 0.25 s) within :data:`LIVENESS_SILENCE_SECONDS`; 503 once none has — a loop blocked by a
  CPU-bound bug, a deadlock, a blocking call — so a stuck pod still fails and is restarted. A busy
  loop beats late, not never: its beats' gaps are how long it takes to come round.
* ``/readyz``: 200 while every worker's own readiness checks (the same checks as the public
  ``/readyz``: Postgres, Redis, the keys…), run by its loop every :data:`READINESS_CHECK_SECONDS`,
  last all passed, no longer than :data:`READINESS_STALE_SECONDS` ago; 503 naming what is wrong
  (``failed``: a dependency is down; ``stale``: that worker's loop has not completed a check that
  long; ``not yet``: a worker still starting; ``stopping``: draining after SIGTERM).

The public ``/healthz`` and ``/readyz`` stay (the startup probe, ``helm test``, peers' checks, an
operator's curl): they answer what they answered, from the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .health import Check, run_checks

#: the liveness probe fails once no worker's event loop has beaten for this long: far above the
#: longest gap of a loop saturated at 100m (a sign-in storm; docs/runbook.md, "A sign-in storm"), far
#: below the 30 s (WORKER_STUCK_SECONDS) a stuck worker of several is left before it is killed
LIVENESS_SILENCE_SECONDS = 10.0
#: how often each worker's loop runs its readiness checks in the background
READINESS_CHECK_SECONDS = 2.0
#: and while its last checks did not all pass (a pool still connecting at the start, a dependency
#: back): sooner, but no faster than once a second — against a database out of connection slots each
#: check may try a connection of its own (svckit.db.Database.check), where the kubelet asked every 5 s
READINESS_RECHECK_SECONDS = 1.0
#: a worker whose loop has not completed a check for this long is not ready (the checks themselves are
#: bounded at 2.5 s: svckit.health.CHECK_TIMEOUT_SECONDS)
READINESS_STALE_SECONDS = 10.0
#: a readiness slot's states (its second value); its first is when it was last written
NOT_YET, READY, NOT_READY, STOPPING = 0.0, 1.0, 2.0, 3.0


class Slot(Protocol):
    """A worker's readiness as it publishes it: ``multiprocessing``'s ``RawArray("d", 2)`` —
    ``[when (time.monotonic()), state]``."""

    def __getitem__(self, index: int) -> float: ...

    def __setitem__(self, index: int, value: float) -> None: ...


class Beat(Protocol):
    value: float


@dataclass(frozen=True)
class Watched:
    """One worker as the probes see it: its heartbeat and its readiness slot."""

    heartbeat: Beat
    readiness: Slot


#: the workers this process answers the probes for (``None``: it serves none: the paths are 404)
_source: Callable[[], Iterable[Watched]] | None = None
#: where this process, a worker, publishes its readiness (``None``: nowhere — an app in a test)
_slot: Slot | None = None


def answer_for(source: Callable[[], Iterable[Watched]] | None) -> None:
    """The probes of this process's metrics listener are answered for the workers ``source`` gives."""
    global _source
    _source = source


def publish_into(slot: Slot | None) -> None:
    """This process's application publishes its readiness into ``slot``."""
    global _slot
    _slot = slot


def stopping() -> None:
    """The worker drains: not ready any more (its slot says so for good)."""
    if _slot is not None:
        _slot[0], _slot[1] = time.monotonic(), STOPPING


@contextlib.asynccontextmanager
async def publishing(checks: Mapping[str, Check]) -> AsyncIterator[None]:
    """For as long as the block runs (the application's lifespan), the checks every
    :data:`READINESS_CHECK_SECONDS`, their outcome published into this process's slot."""
    slot = _slot
    if slot is None:
        yield
        return

    async def publish() -> None:
        while True:
            results = await run_checks(checks)
            if slot[1] != STOPPING:
                ok = all(result == "ok" for result in results.values())
                slot[0], slot[1] = time.monotonic(), READY if ok else NOT_READY
            # again sooner while not ready: readiness follows a recovery within the kubelet's period
            await asyncio.sleep(READINESS_CHECK_SECONDS if slot[1] == READY else READINESS_RECHECK_SECONDS)

    task = asyncio.create_task(publish(), name="svckit-readiness")
    try:
        yield
    finally:
        task.cancel()


def answer(path: str, now: float | None = None) -> tuple[int, dict[str, Any]] | None:
    """The probe's status and body for ``path``; ``None`` when this process answers no probe there."""
    if _source is None or path not in ("/healthz", "/readyz"):
        return None
    now = time.monotonic() if now is None else now
    workers = list(_source())
    if path == "/healthz":
        beats = [w.heartbeat.value for w in workers if w.heartbeat.value > 0]
        if not beats:
            return 503, {"status": "starting", "detail": "no worker's event loop has run yet"}
        silent = now - max(beats)
        if silent > LIVENESS_SILENCE_SECONDS:
            return 503, {
                "status": "stuck",
                "detail": f"no worker's event loop has run for {silent:.1f} s",
            }
        return 200, {"status": "ok", "silent_seconds": round(silent, 2)}
    states = [_readiness(w.readiness, now) for w in workers]
    if workers and all(state == "ready" for state in states):
        return 200, {"status": "ready"}
    return 503, {"status": "not ready", "workers": states or ["none"]}


def _readiness(slot: Slot, now: float) -> str:
    when, state = slot[0], slot[1]
    if state == NOT_YET:
        return "not yet"
    if state == STOPPING:
        return "stopping"
    if now - when > READINESS_STALE_SECONDS:
        return f"stale: no check completed for {now - when:.1f} s"
    return "ready" if state == READY else "failed"


def wsgi_answer(path: str) -> tuple[str, list[tuple[str, str]], bytes] | None:
    """:func:`answer` as the metrics listener sends it."""
    answered = answer(path)
    if answered is None:
        return None
    status, body = answered
    data = json.dumps(body).encode()
    phrase = "200 OK" if status == 200 else "503 Service Unavailable"
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(data))),
        ("Cache-Control", "no-store"),
    ]
    return phrase, headers, data


#: the request heads answered by :func:`answer_at_once`: a probe's GET, as the kubelet sends it
_PROBE_HEADS = tuple(f"GET {path} HTTP/1.".encode() for path in ("/healthz", "/readyz"))


def answer_at_once(connection: socket.socket) -> bool:
    """Answer a probe on ``connection`` (just accepted) on the listener's own thread, if its whole
    request head is there already; ``False`` (nothing read) for anything else, served as usual.

    Why not as every request (a thread each, wsgiref's parsing): in a process held to its CPU
    quota by a busy event loop, each time this side waits for the interpreter's lock it waits for
    the loop's switch interval and, the quota spent, for the next CFS period. wsgiref's way waits
    for it a dozen times or more (a thread started, the head read by lines, the answer written and
    flushed): in the sign-in storm at 100m answers took up to 1.9 s, on two free cores up to 1.2 s;
    this way (the peek, the read, the write, the close) 0.5-1.8 s at 100m, 0.01-0.04 s on two
    cores."""
    if _source is None:
        return False
    try:
        head = connection.recv(4096, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except OSError:
        return False
    if not head.startswith(_PROBE_HEADS) or b"\r\n\r\n" not in head or len(head) >= 4096:
        return False
    path = head.split(b" ", 2)[1].decode()
    answered = wsgi_answer(path)
    if answered is None:
        return False
    phrase, headers, data = answered  # the same answer as through wsgiref, framed here
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers)
    response = f"HTTP/1.1 {phrase}\r\n{lines}Connection: close\r\n\r\n".encode() + data
    try:
        connection.recv(len(head), socket.MSG_DONTWAIT)  # read: a close with unread bytes is a reset
        connection.settimeout(1.0)
        connection.sendall(response)
    except OSError:
        pass
    finally:
        connection.close()
    return True
