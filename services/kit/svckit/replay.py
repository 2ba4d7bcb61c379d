"""Which signed requests a service has already accepted: each one is accepted once.

A signed identity carries a nonce (``X-Identity-Nonce``, fresh for every signed request) and is valid
for ±``IDENTITY_MAX_SKEW_SECONDS``. A captured header set replayed inside that window, to the replica
that saw it or to any other, must be refused, so every replica records the nonces it accepts in Redis
(``SET NX`` with the window as expiry: the first replica to record a nonce wins) and, always, in a
window of its own memory (a replay to the same replica is refused even while Redis is away).

Redis unreachable (svckit.redisguard: down, hung, or its circuit open): a replica cannot know what the
others accepted. Unsafe methods (POST, PUT, PATCH, DELETE) are then recorded in the service's Postgres
instead (:mod:`svckit.replayfallback`: one ``INSERT … ON CONFLICT DO NOTHING``, shared by every
replica; its docstring says when else it is used and what it leaves open), and refused — 503 with
``Retry-After``, counted as ``replay_store_unavailable`` — only when the database is unavailable too
(or the service has none), because a replay of one could change data twice; safe methods (GET, HEAD)
go on with this replica's own memory only, so reads keep working through a Redis outage (a replayed
read within the window discloses no more than the original did).

Redis refusing writes while it serves reads (full under ``noeviction``: ``OOM``; read-only, ...:
:func:`svckit.redisguard.refuses_writes_only`) is unavailable as above — the circuit opens, unsafe
nonces go to the fallback — except that each nonce whose ``SET NX`` was refused (or not sent while
the circuit is open for such a refusal) is first looked up with ``EXISTS`` (one pipelined round trip
per batch, on the same wire): a nonce another replica recorded in Redis before it filled up is a
replay, for every method. Before, ``OOM`` was an outage like any other and the other replica
accepted such a replay once, through the fallback that did not know it. A working Redis pays nothing
for this (the ``SET NX`` round trip alone, as before).

Once Redis answers again, a replica that found it unavailable (or whose connection Redis closed: a
restart quicker than the next request is seen no other way) writes its whole local window into it
(``SET NX`` with each nonce's remaining time, pipelined through the guard's client by
:mod:`svckit.windowrewrite`, retried every ``REDIS_RETRY_SECONDS`` until it gets through). Without that
the outage lasted a window longer than itself: what a replica accepted in its own memory or through the
fallback was never in Redis, and what it accepted through Redis before was lost if Redis came back
empty (a restart without persistence), so a captured request could be replayed once to any other
replica for the rest of its window — the chaos hunt of the fault stack found such writes accepted
twice, also by a replica that had seen the outage. It costs ~43 µs of CPU per nonce in the window, once
per outage (10,000 nonces: ~0.43 s, measured on the shared machine), spread over round trips that let
requests run in between.

Batched: the nonces of requests that reach the check in the same turn of the event loop, or while a
round trip is under way, are recorded together, one pipelined round trip for all of them (no timer: a
lone request waits one turn of the loop, for the callback that sends it). redis-py spends ~100 µs of CPU
per command on its own (pool, packing, parsing with timeouts); under load most of it is then shared.
Requests answered together come back together: at 8 concurrent senders to the audit service, sending
even the first of a turn at once (as before) made one round trip per request or nearly; waiting for
the turn cut the service's CPU per request by ~10% (bench/audit.py, single events).

The round trip itself goes over a connection of its own (:class:`SetOnceWire`) that speaks just the
RESP this needs: the batch's ``SET key 1 NX EX ttl`` commands written as one buffer, one status line
read back per command (``+OK``: recorded now; ``$-1``: it was there). redis-py's pipeline packed and
parsed each command in Python, with its pool and retry machinery around: ~80 µs of CPU per nonce at 16
concurrent requests, against ~15 µs this way (measured in-process on the shared Redis). The same
command, the same keys and expiry, the same circuit (:class:`~svckit.redisguard.RedisGuard`: a failure
opens it, and while it is open nothing is recorded and unsafe methods are refused); a URL this wire
does not speak (``rediss://``, TLS options) keeps redis-py's pipeline. Once connected, a round trip
is callbacks only (an ``asyncio.Protocol``: no task, no stream reader), and its deadline gives the
socket one more turn of the event loop before it fails: a reply that arrived while the process did
not run (a starved or stalled event loop, under heavy load) is read, not taken for Redis being away
(that opened the circuit and refused writes with 503 ``replay_store_unavailable`` for
``REDIS_RETRY_SECONDS``).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Literal

import redis.asyncio as aioredis
from redis.asyncio.connection import UnixDomainSocketConnection, parse_url
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)

from .db import Database
from .identity import SAFE_METHODS
from .redisguard import REDIS_ERRORS, RedisGuard, refuses_writes_only
from .replayfallback import FallbackMemory
from .settings import RedisSettings, ServiceSettings
from .windowrewrite import WindowRewrite

Verdict = Literal["fresh", "replay", "unavailable"]

#: connections the replay memory's guard opens at most (and its wire one more; svckit.fdlimit counts them)
REDIS_CONNECTIONS = 32


#: redis-py's classes for the error replies the wire can get (its parser's, for the same codes): the
#: guard's warning ``redis unavailable`` names the class, and the runbook reads it (``OutOfMemoryError``:
#: Redis is full, "Redis memory"; ``NoPermissionError``/``AuthenticationError``: "Redis users")
_ERROR_CLASSES: dict[str, type[RedisError]] = {
    "OOM": OutOfMemoryError,
    "NOPERM": NoPermissionError,
    "NOAUTH": AuthenticationError,
    "WRONGPASS": AuthenticationError,
    "READONLY": ReadOnlyError,
    "LOADING": BusyLoadingError,
}


def _error(line: bytes) -> RedisError:
    """The exception for an error reply (``-CODE message``, the ``-`` included or not)."""
    message = line.decode("utf-8", "replace").lstrip("-").strip()
    return _ERROR_CLASSES.get(message.split(" ", 1)[0], ResponseError)(message)


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


class _WireProtocol(asyncio.Protocol):
    """The socket end of :class:`SetOnceWire`: what arrives goes straight to the wire's parser."""

    def __init__(self, wire: SetOnceWire) -> None:
        self.wire = wire

    def data_received(self, data: bytes) -> None:
        self.wire._received(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.wire._lost(self, exc)


class SetOnceWire:
    """One Redis connection for the replay memory's ``SET key 1 NX EX ttl`` batches (see the module
    docstring). Opened on first use and again after any failure: a failed, late or cancelled round
    trip closes it, so a late reply can never be read as the answer to another batch. One round trip
    at a time (the memory sends the next batch once the last one is answered; a second concurrent
    call is a bug and raises).

    A protocol, not a stream: the replies are parsed in the transport's callback and the batch's
    future resolved there, with no task or coroutine per round trip. The deadline (``timeout``) is
    checked by a timer; when it fires, the connection gets one more turn of the event loop (a
    ``GRACE_SECONDS`` timer) before the batch fails, so a reply that arrived while the process was
    not running (a stalled or starved event loop: timers can run before the socket is read) is read
    rather than taken for Redis being away.
    """

    GRACE_SECONDS = 0.01

    def __init__(self, url: str, *, timeout: float, on_lost: Callable[[], None] | None = None) -> None:
        options = parse_url(url)
        connection_class = options.pop("connection_class", None)
        if connection_class not in (None, UnixDomainSocketConnection) or set(options) - {
            "host",
            "port",
            "db",
            "username",
            "password",
            "path",
        }:
            raise ValueError("this Redis URL needs redis-py's own connection (TLS or other options)")
        self.host: str = options.get("host", "localhost")
        self.port = int(options.get("port", 6379))
        self.path: str | None = options.get("path")
        self.db = int(options.get("db", 0) or 0)
        self.username: str | None = options.get("username")
        self.password: str | None = options.get("password")
        self.timeout = timeout
        # called when Redis closed the connection (not this side): it may have restarted empty
        self.on_lost = on_lost
        self._writer: asyncio.Transport | None = None  # None: not connected (or closed after a failure)
        self._protocol: _WireProtocol | None = None
        self._buffer = b""
        self._expected = 0  # reply lines the batch in flight still waits for
        self._lines: list[bytes] = []
        self._reply: asyncio.Future[list[bytes]] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._late = False  # the deadline passed once: the grace turn is under way

    @classmethod
    def for_url(
        cls, url: str, *, timeout: float, on_lost: Callable[[], None] | None = None
    ) -> SetOnceWire | None:
        """The wire for ``url``, or None when it needs what only redis-py does (TLS)."""
        try:
            return cls(url, timeout=timeout, on_lost=on_lost)
        except ValueError:
            return None

    @staticmethod
    def command(*parts: bytes) -> bytes:
        return b"*%d\r\n%b" % (len(parts), b"".join(_bulk(part) for part in parts))

    @staticmethod
    def set_commands(keys: list[str], ttl: int) -> bytes:
        """``SET key 1 NX EX ttl`` for every key, as one buffer."""
        tail = b"\r\n$1\r\n1\r\n$2\r\nNX\r\n$2\r\nEX\r\n" + _bulk(str(ttl).encode())
        buffer = []
        for key in keys:
            encoded = key.encode()
            buffer.append(b"*6\r\n$3\r\nSET\r\n$%d\r\n%b%b" % (len(encoded), encoded, tail))
        return b"".join(buffer)

    @staticmethod
    def answers(lines: list[bytes]) -> list[bool | RedisError]:
        """The replies of :meth:`set_commands`: True where recorded now, False where it was there, the
        error where Redis refused the write but serves reads (full: ``OOM``; see
        :func:`~svckit.redisguard.refuses_writes_only`). Any other error is raised."""
        answers: list[bool | RedisError] = []
        for line in lines:
            if line == b"+OK":
                answers.append(True)
            elif line == b"$-1":
                answers.append(False)
            elif line.startswith(b"-"):
                error = _error(line)
                if not refuses_writes_only(error):
                    raise error
                answers.append(error)
            else:
                raise ConnectionError(f"unexpected reply from Redis: {line[:40]!r}")
        return answers

    @staticmethod
    def exists_commands(keys: list[str]) -> bytes:
        """``EXISTS key`` for every key, as one buffer (one reply line each: ``:1`` or ``:0``)."""
        return b"".join(b"*2\r\n$6\r\nEXISTS\r\n%b" % _bulk(key.encode()) for key in keys)

    @staticmethod
    def present(lines: list[bytes]) -> list[bool]:
        """The replies of :meth:`exists_commands`: True where the key is there."""
        found: list[bool] = []
        for line in lines:
            if line in (b":1", b":0"):
                found.append(line == b":1")
            elif line.startswith(b"-"):
                raise _error(line)
            else:
                raise ConnectionError(f"unexpected reply from Redis: {line[:40]!r}")
        return found

    @property
    def connected(self) -> bool:
        return self._writer is not None

    async def connect(self) -> None:
        """Open the connection (with ``AUTH``/``SELECT`` as the URL says), within the timeout."""
        if self._reply is not None:
            raise RuntimeError("SetOnceWire is used by one caller at a time")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                if self.path is not None:
                    transport, protocol = await loop.create_unix_connection(
                        lambda: _WireProtocol(self), self.path
                    )
                else:
                    transport, protocol = await loop.create_connection(
                        lambda: _WireProtocol(self), self.host, self.port
                    )
                self._writer, self._protocol, self._buffer = transport, protocol, b""
                handshake: list[bytes] = []
                if self.password is not None:
                    credentials = [self.username, self.password] if self.username else [self.password]
                    handshake.append(self.command(b"AUTH", *(part.encode() for part in credentials)))
                if self.db:
                    handshake.append(self.command(b"SELECT", str(self.db).encode()))
                if handshake:
                    for line in await self.send(b"".join(handshake), len(handshake)):
                        if not line.startswith(b"+"):
                            raise _error(line)
        except BaseException:
            self.close()
            raise

    def send(self, data: bytes, replies: int) -> asyncio.Future[list[bytes]]:
        """Write ``data`` (``replies`` commands) on the open connection: a future of the reply lines,
        failed (and the connection closed) when Redis fails or does not answer within the timeout."""
        transport = self._writer
        if transport is None:
            raise ConnectionError("the replay wire is not connected")
        if self._reply is not None:
            raise RuntimeError("SetOnceWire is used by one caller at a time")
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[list[bytes]] = loop.create_future()
        self._reply, self._expected, self._lines, self._late = reply, replies, [], False
        self._timer = loop.call_later(self.timeout, self._deadline)
        transport.write(data)
        return reply

    async def set_once(self, keys: list[str], ttl: int) -> list[bool | RedisError]:
        """``SET key 1 NX EX ttl`` for every key in one round trip: True where this call recorded it,
        False where it was already there, the error where Redis refused the write but serves reads.
        Raises (one of :data:`~svckit.redisguard.REDIS_ERRORS`) when Redis fails otherwise or does
        not answer within the timeout."""
        lines = await self._round_trip(self.set_commands(keys, ttl), len(keys))
        try:
            return self.answers(lines)
        except BaseException:
            self.close()
            raise

    async def exists(self, keys: list[str]) -> list[bool]:
        """``EXISTS key`` for every key in one round trip (while Redis refuses writes); raises as
        :meth:`set_once` does."""
        lines = await self._round_trip(self.exists_commands(keys), len(keys))
        try:
            return self.present(lines)
        except BaseException:
            self.close()
            raise

    async def _round_trip(self, data: bytes, replies: int) -> list[bytes]:
        if self._writer is None:
            await self.connect()
        try:
            return await self.send(data, replies)
        except BaseException:
            self.close()  # cancelled: the connection's state is unknown, what comes next must not be misread
            raise

    # --- the transport's side ----------------------------------------------------------------------

    def _received(self, protocol: _WireProtocol, data: bytes) -> None:
        if protocol is not self._protocol:
            return  # a closed connection's last bytes
        buffer = self._buffer + data if self._buffer else data
        lines = self._lines
        start = 0
        while True:
            end = buffer.find(b"\r\n", start)
            if end < 0:
                break
            lines.append(buffer[start:end])
            start = end + 2
        self._buffer = buffer[start:]
        if self._reply is None:
            if lines or self._buffer:
                self._fail(ConnectionError("Redis sent a reply nobody asked for"))
            return
        if len(lines) > self._expected or (len(lines) == self._expected and self._buffer):
            self._fail(ConnectionError("Redis sent more replies than commands"))
        elif len(lines) == self._expected:
            reply, self._reply, self._lines = self._reply, None, []
            self._cancel_timer()
            if not reply.done():
                reply.set_result(lines)

    def _lost(self, protocol: _WireProtocol, exc: Exception | None) -> None:
        if protocol is self._protocol:
            self._fail(exc or ConnectionError("Redis closed the connection"))
            if self.on_lost is not None:
                self.on_lost()

    def _deadline(self) -> None:
        self._timer = None
        if self._reply is None:
            return
        if not self._late:  # one more turn of the loop: a reply already here is read first
            self._late = True
            self._timer = asyncio.get_running_loop().call_later(self.GRACE_SECONDS, self._deadline)
            return
        self._fail(TimeoutError(f"Redis did not answer within {self.timeout} s"))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fail(self, exc: BaseException) -> None:
        reply, self._reply = self._reply, None
        self.close()
        if reply is not None and not reply.done():
            reply.set_exception(exc)

    def close(self) -> None:
        """Drop the connection; a batch in flight fails with ``ConnectionError``."""
        writer, self._writer, self._protocol = self._writer, None, None
        reply, self._reply = self._reply, None
        self._buffer, self._lines, self._expected = b"", [], 0
        self._cancel_timer()
        if writer is not None:
            writer.close()
        if reply is not None and not reply.done():
            reply.set_exception(ConnectionError("the replay wire was closed"))


class ReplayMemory:
    """The nonces accepted within the window: this process's own, and (with ``redis``) every replica's.

    The local window keeps at most ``max_local`` nonces (~20 MB; ~200 bytes each), the oldest dropped
    first: under more than ``max_local / window`` signed requests per second it covers less than the
    whole window, which only matters while Redis — the memory every replica shares — is away.

    ``fallback``: where unsafe nonces go while Redis is unavailable, and for one window after this
    replica last found it so (:mod:`svckit.replayfallback`); without it they are refused then.
    """

    def __init__(
        self,
        redis: RedisGuard | None,
        service: str,
        window_seconds: float,
        *,
        max_local: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        database: Database | None = None,
    ) -> None:
        self.redis = redis
        self.service = service
        # a timestamp is accepted up to the skew either way, so a nonce can come back for twice that
        self.window = 2 * window_seconds + 1
        self.max_local = max_local
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()  # nonce → forget after (insertion order)
        self._ttl = int(self.window) + 1
        self.fallback: FallbackMemory | None = None
        if database is not None and redis is not None:
            self.fallback = FallbackMemory(database, self._ttl)
        # until when (this clock) unsafe nonces recorded in Redis are recorded in the fallback too:
        # one window after Redis was last found unavailable here (svckit.replayfallback)
        self._fallback_until = float("-inf")
        self._waiting: list[tuple[str, asyncio.Future[bool | None]]] = []  # (key, recorded?) to send
        self._sender: asyncio.Task[None] | None = None
        self._busy = False  # the sender task is queued or its round trip under way
        self.round_trips = 0  # pipelined round trips made (for tests and figures)
        # the local window written back into Redis once it is back (svckit.windowrewrite)
        self.rewrite = (
            WindowRewrite(
                redis,
                self._window,
                self._clock,
                name="identity-replay-rewrite",
                message="redis is back: wrote this replica's accepted nonces into it again",
            )
            if redis is not None
            else None
        )
        # a connection Redis closed may mean a restart that lost the nonces: rewrite (no error is seen
        # otherwise when Redis is back before the next request: the wire just connects again)
        self._wire = (
            SetOnceWire.for_url(redis.url, timeout=redis.timeout, on_lost=self.rewrite.schedule)
            if redis is not None and self.rewrite is not None
            else None
        )

    @classmethod
    def for_service(cls, settings: ServiceSettings, database: Database | None = None) -> ReplayMemory:
        """The memory a service's identity gate uses (``svckit.app``, and whatever must check as a
        service does): shared over Redis when the settings have it (:attr:`redis`, closed by the
        owner after :meth:`close`), this process's own otherwise; with ``database`` (whose schema
        has the kit set ``replay``) the fallback while Redis is unavailable."""
        store = None
        if isinstance(settings, RedisSettings):
            store = RedisGuard.from_settings(settings, max_connections=REDIS_CONNECTIONS)
        return cls(store, settings.service_name, settings.identity_max_skew_seconds, database=database)

    def _remember_locally(self, nonce: str) -> bool:
        """False when this process accepted ``nonce`` within the window; otherwise records it."""
        now = self._clock()
        seen = self._seen
        while seen:
            oldest, until = next(iter(seen.items()))
            if until > now and len(seen) < self.max_local:
                break
            del seen[oldest]
        if nonce in seen:
            return False
        seen[nonce] = now + self.window
        return True

    async def first_use(self, nonce: str, method: str) -> Verdict:
        """``fresh`` (accept it), ``replay`` (accepted before) or ``unavailable`` (no shared memory
        for an unsafe method)."""
        if not self._remember_locally(nonce):
            return "replay"
        if self.redis is None:
            return "fresh"
        key = self.redis.key("identity-replay", self.service, nonce)
        # recorded by the sender task, with every nonce queued before it runs: the requests of one
        # turn of the loop (those answered together, say) and those that arrive during a round trip
        future: asyncio.Future[bool | None] = asyncio.get_running_loop().create_future()
        self._waiting.append((key, future))
        self._send_waiting()
        recorded = await future
        if recorded is None and self.rewrite is not None:
            self.rewrite.schedule()
        if method in SAFE_METHODS:
            if recorded is None:
                self._fallback_until = self._clock() + self.window
            return "replay" if recorded is False else "fresh"
        if recorded is False:
            return "replay"
        fallback = self.fallback
        if recorded is None:
            self._fallback_until = self._clock() + self.window
            return "unavailable" if fallback is None else await fallback.record(nonce)
        if fallback is not None and self._clock() < self._fallback_until:
            # Redis is back; what other replicas accepted through the fallback is not in it
            return "replay" if await fallback.record(nonce) == "replay" else "fresh"
        return "fresh"

    def _window(self) -> list[tuple[str, float]]:
        """The local window as Redis keys and their ends, for the rewrite after an outage."""
        assert self.redis is not None
        key, service = self.redis.key, self.service
        return [(key("identity-replay", service, nonce), until) for nonce, until in list(self._seen.items())]

    def _send_waiting(self) -> None:
        """Those who queued behind a round trip get the next one, one turn of the loop later (with the
        others of that turn). On the open wire the round trip is callbacks only (:meth:`_flush`);
        otherwise (connecting first, or redis-py's pipeline) a task of its own. Either way a request
        that is cancelled does not cancel the others' round trip."""
        if self._waiting and not self._busy:
            self._busy = True
            if self._wire is not None and self._wire.connected:
                asyncio.get_running_loop().call_soon(self._flush)
            else:
                self._sender = asyncio.create_task(self._send(), name="identity-replay")

    def _flush(self) -> None:
        """Send what waits on the open wire; :meth:`_answered` settles it."""
        assert self.redis is not None
        assert self._wire is not None
        wire = self._wire
        batch, self._waiting = self._waiting, []
        if not self.redis.available:
            if self.redis.readable:  # refusing writes, serving reads (full): looked up, in a task
                self._waiting = batch + self._waiting
                self._sender = asyncio.create_task(self._send(), name="identity-replay")
                return
            self._busy = False
            self._settle(batch, None)
            return
        if not wire.connected:  # closed since: connect again, in a task
            self._waiting = batch + self._waiting
            self._sender = asyncio.create_task(self._send(), name="identity-replay")
            return
        try:
            reply = wire.send(wire.set_commands([key for key, _ in batch], self._ttl), len(batch))
        except REDIS_ERRORS as exc:
            wire.close()
            self.redis.mark_down(exc)
            self._busy = False
            self._settle(batch, None)
            return
        except BaseException:
            self._busy = False
            self._settle(batch, None)  # nobody may wait forever (a bug)
            raise
        reply.add_done_callback(lambda done: self._answered(batch, done))

    def _answered(
        self, batch: list[tuple[str, asyncio.Future[bool | None]]], reply: asyncio.Future[list[bytes]]
    ) -> None:
        assert self.redis is not None
        assert self._wire is not None
        answers: list[bool | RedisError] | None = None
        try:
            answers = self._wire.answers(reply.result())
            self.round_trips += 1
        except REDIS_ERRORS as exc:
            self._wire.close()
            self.redis.mark_down(exc)
        except BaseException:
            self._busy = False
            self._settle(batch, None)  # nobody may wait forever (a bug)
            self._send_waiting()
            raise
        if answers is not None and not all(isinstance(answer, bool) for answer in answers):
            # Redis refused some writes (full): looked up in a task, which settles the batch (and
            # keeps the wire its own until then)
            self._sender = asyncio.create_task(self._complete(batch, answers), name="identity-replay")
            return
        self._busy = False
        try:
            self._settle(batch, answers)  # type: ignore[arg-type]  # all bool here
        finally:
            self._send_waiting()

    async def _complete(
        self, batch: list[tuple[str, asyncio.Future[bool | None]]], answers: list[bool | RedisError]
    ) -> None:
        """Settle a batch some of whose writes Redis refused, once the refused keys are looked up."""
        try:
            self._settle(batch, await self._looked_up([key for key, _ in batch], answers))
        finally:
            self._sender = None
            self._busy = False
            self._settle(batch, None)  # what is still unsettled (cancelled meanwhile: nobody may wait)
            self._send_waiting()

    @staticmethod
    def _settle(
        batch: list[tuple[str, asyncio.Future[bool | None]]], answers: list[bool | None] | None
    ) -> None:
        for index, (_, future) in enumerate(batch):
            if not future.done():  # done: that request was cancelled meanwhile
                future.set_result(None if answers is None else answers[index])

    async def _send(self) -> None:
        """Record everything waiting in one pipelined round trip, again while more arrived meanwhile."""
        assert self.redis is not None
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    answers = await self._record([key for key, _ in batch])
                except BaseException:
                    for _, future in batch:  # nobody may wait forever (cancelled, or a bug)
                        if not future.done():
                            future.set_result(None)
                    raise
                self.round_trips += 1
                for index, (_, future) in enumerate(batch):
                    if not future.done():  # done: that request was cancelled meanwhile
                        future.set_result(None if answers is None else answers[index])
        finally:
            self._sender = None
            self._busy = False
            for _, future in self._waiting:  # left behind by a cancelled sender
                if not future.done():
                    future.set_result(None)
            self._waiting = []

    async def _record(self, keys: list[str]) -> list[bool | None] | None:
        """Each key set if absent, in one round trip: True where recorded now, False where it was
        there, None where Redis refused the write (full) and the key is not there either; None for
        all while Redis is unavailable (the guard's circuit: a failure here opens it, as one inside
        :meth:`RedisGuard.call` does)."""
        redis = self.redis
        assert redis is not None
        if not redis.available:
            # the circuit is open; while Redis still serves reads (full), each key is looked up
            return await self._looked_up(keys, [None] * len(keys)) if redis.readable else None
        answers: list[bool | RedisError] | None
        if self._wire is None:
            answers = await redis.call(self._recorder(keys))
        else:
            try:
                answers = await self._wire.set_once(keys, self._ttl)
            except REDIS_ERRORS as exc:
                redis.mark_down(exc)
                answers = None
        return None if answers is None else await self._looked_up(keys, answers)

    async def _looked_up(
        self, keys: list[str], answers: list[bool | RedisError] | list[None]
    ) -> list[bool | None]:
        """``answers`` with each write Redis refused (an error, or None: not sent, the circuit open for
        a refusal) replaced by whether its key is in Redis: False (recorded before: a replay) or None
        (not there: unrecorded, as while Redis is away). The first refusal opens the circuit (the
        guard's warning names it). One round trip of ``EXISTS``, only when a write was refused."""
        redis = self.redis
        assert redis is not None
        refused = [index for index, answer in enumerate(answers) if not isinstance(answer, bool)]
        result: list[bool | None] = [answer if isinstance(answer, bool) else None for answer in answers]
        if not refused:
            return result
        error = next((answer for answer in answers if isinstance(answer, RedisError)), None)
        if error is not None:
            redis.mark_down(error)
        present = await self._present([keys[index] for index in refused])
        if present is not None:
            for index, there in zip(refused, present, strict=True):
                result[index] = False if there else None
        return result

    async def _present(self, keys: list[str]) -> list[bool] | None:
        """Whether each key is in Redis (``EXISTS``), or None when Redis does not serve reads."""
        redis = self.redis
        assert redis is not None
        if not redis.readable:
            return None
        if self._wire is None:
            return await redis.read(self._existence(keys))
        try:
            present = await self._wire.exists(keys)
        except REDIS_ERRORS as exc:
            redis.mark_down(exc)
            return None
        self.round_trips += 1
        return present

    def close(self) -> None:
        """Close the replay memory's own Redis connection (the guard's client is closed by its owner)
        and stop a rewrite still waiting for Redis (the process is stopping: its window goes with it)."""
        if self._wire is not None:
            self._wire.close()
        if self.rewrite is not None:
            self.rewrite.cancel()

    def _recorder(self, keys: list[str]) -> Callable[[aioredis.Redis], Awaitable[list[bool | RedisError]]]:
        """redis-py's pipeline of the same ``SET NX EX`` commands, answered as :meth:`SetOnceWire.answers`."""
        ttl = self._ttl

        async def record(client: aioredis.Redis) -> list[bool | RedisError]:
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.set(key, b"1", nx=True, ex=ttl)
            answers: list[bool | RedisError] = []
            for answer in await pipe.execute(raise_on_error=False):
                if isinstance(answer, BaseException):
                    if not refuses_writes_only(answer):
                        raise answer  # the guard's call opens the circuit
                    answers.append(answer)  # type: ignore[arg-type]  # a RedisError
                else:
                    answers.append(answer is True)
            return answers

        return record

    @staticmethod
    def _existence(keys: list[str]) -> Callable[[aioredis.Redis], Awaitable[list[bool]]]:
        async def look(client: aioredis.Redis) -> list[bool]:
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.exists(key)
            return [bool(count) for count in await pipe.execute()]

        return look
