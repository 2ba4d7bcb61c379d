"""Requests whose clients left before the worker got to them: dropped, not served.

A worker that falls behind — frozen (SIGSTOP, a cgroup freeze, a paused VM), starved of CPU, or
flooded — finds, when it catches up, requests that waited in its sockets while their clients gave up
(the gateway's upstream read timeout, a browser's). uvicorn runs every one of them, in order, before
anything that came later: a worker frozen while 40 clients each sent a request of 0.1 s of work and
left answered the first new request 4.1 s after it resumed, every abandoned handler having run to
completion first — work no one waited for, ahead of everyone who did, and a write whose client had
given up on it done late (``services/kit/tests/test_abandoned_requests.py``). In the fault suite this
is what stretched a frozen service's recovery on a loaded host (``tests/faults/test_frozen_service.py``:
requests sent over 2 s after SIGCONT still refused while the backlog drained).

Such a request is now dropped before its application runs (the gateway: before it is forwarded) when
its client has closed the connection — its FIN already waits in the socket behind the request, which
is what a client that timed out sends — counted in ``http_requests_abandoned_total`` and logged with
the HTTP layer's refusals (one line per 10 s at most): :meth:`svckit.server.ProblemHttpProtocol.client_left`.
Nothing is answered: no one is there to read it.

Looking costs a system call and a wrapping socket object (~15 µs on the 2-core build host), too much
for every request of a service whose whole request costs ~370 µs, so the worker looks only while its
event loop is *behind* (:class:`Pace`): its last beat (the watchdog's, every 0.25 s) came later than
:data:`LATE_SECONDS` after it was due, or the next one is that late now. A loop that keeps up has no
waiting requests whose clients could have left; one that is behind has, and the look is cheap beside
the request it may save. A client that half-closes after its request (``shutdown(SHUT_WR)``) and still
waits is taken for gone then, as nginx takes it (its 499): HTTP/1.1 clients do not do that.
"""

from __future__ import annotations

import asyncio
import socket
import time

#: how much later than due the loop's beat may come before the loop counts as behind
LATE_SECONDS = 0.5


class Pace:
    """Whether this worker's event loop keeps up, from the beats of its watchdog task."""

    def __init__(self) -> None:
        self._due: float | None = None  # no beat yet (a server without the kit's beat): never behind
        self._late = False

    def beat(self, every: float) -> None:
        """A beat, the next due ``every`` seconds from now; late if this one came after its time."""
        now = time.monotonic()
        self._late = self._due is not None and now > self._due
        self._due = now + every + LATE_SECONDS

    def behind(self) -> bool:
        """The last beat was late, or the next one is late already (the loop is held up right now)."""
        return self._late or (self._due is not None and time.monotonic() > self._due)


#: this worker's loop (one event loop per worker process)
pace = Pace()


def client_gone(transport: asyncio.BaseTransport) -> bool:
    """Whether the client has closed its side of the connection (or reset it): its FIN is next in the
    socket, after whatever this request's bytes were. Bytes still waiting — a pipelined request, the
    rest of a body — mean it is still there."""
    if transport.is_closing():
        return True
    raw = transport.get_extra_info("socket")
    if raw is None:
        return False
    try:
        peek = socket.socket(raw.family, socket.SOCK_STREAM, 0, raw.fileno())
    except OSError:
        return False
    try:
        return peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False  # nothing waiting: the client is there, waiting for the answer
    except OSError:
        return True  # reset
    finally:
        peek.detach()  # the descriptor stays the transport's
