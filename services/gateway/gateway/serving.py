"""How the gateway is served: the kit's HTTP protocol, with a lean request cycle for ``/api``.

Measured with ``bench/gateway.py`` and py-spy, uvicorn's per-request ASGI machinery was the largest
single share of the gateway's CPU after the system calls themselves: an ``asyncio.Event`` per
request, a ``send`` that runs two regular expressions over every response header, the kit's hold of
the response head through a wrapped transport, and the dispatch through :class:`gateway.app.GatewayApp`.
:class:`GatewayHttpProtocol` keeps everything else of the kit's protocol
(:class:`svckit.server.ProblemHttpProtocol`, i.e. uvicorn's httptools protocol): parsing with llhttp,
the head limits and the server layer's problem answers, keep-alive and its timer, pipelining (the
queue of cycles), flow control, ``100 Continue``, lingering close, the graceful drain and
``refuse_new_connections``. Only an API request (what :class:`GatewayApp` would hand to the edge) gets
:class:`ApiCycle` and goes straight to :class:`gateway.edge.Edge`; everything else (``/healthz``,
``/readyz``, the SPA, the API document) keeps uvicorn's cycle and the Starlette app.

:class:`ApiCycle` speaks the same ASGI as uvicorn's cycle (the edge cannot tell them apart) with
these differences:

* the request/response signal is a small object with ``set``/``clear``/``wait`` (what the protocol
  and the cycle use of an event), not an ``asyncio.Event``;
* the response head is framed once and checked once as a whole — no control character but the line
  ends, and exactly one CR LF per line, so no header name or value can split a line — instead of two
  regular expressions per header; header names are the gateway's own or the upstream's as llhttp
  parsed them;
* the head goes out in the same write as the body (up to :data:`svckit.server.COALESCE_BYTES`), the
  kit's one-write-per-response without wrapping the transport's ``write``.

**The callback path.** The hot request — a cached bearer token, allowed, no body, an idle upstream
connection — needs no suspension at all, so it gets no task either: :meth:`Edge.decide` runs the
stages from the parser's ``on_headers_complete`` and sends the request upstream, and :class:`_Relay`
answers from the upstream connection's callback when the response is complete (one write, the
exchange back to the pool, metrics and access line). No task, no coroutines, no ASGI messages, no
futures per request. Whatever else happens — a token to verify, a DPoP proof, a body, a refusal, no
idle connection, an upstream failure (retry, 502/503/504), a large or streamed answer, a client that
is not reading — goes to a task that carries on from the point reached (:meth:`Edge.serve`), with
the same cycle: pipelining, keep-alive, ``Connection: close`` on drain and the graceful drain itself
(which waits for the connection, whose cycle is in progress) work as for every request. Pipelined
requests queued behind a response take the task path.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import Iterable
from typing import Any, Protocol, cast

import httptools
from starlette.types import ASGIApp, Receive, Scope
from svckit.context import request_id_var
from svckit.server import COALESCE_BYTES, ProblemHttpProtocol, _ProblemCycle, send_internal_error
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, RequestResponseCycle

from .edge import START, Edge
from .proxy import Exchange
from .request import Answer, ApiRequest, ConnectionMemo
from .routes import API_PREFIX

log = logging.getLogger("gateway.serving")

OPENAPI_PATH = API_PREFIX + "/openapi.json"
_API_HEADS = frozenset({API_PREFIX, API_PREFIX + "/"})
#: what may not appear anywhere in a response head besides CR and LF (HTAB may, inside values)
_FORBIDDEN = bytes([*range(0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection"})
_CHUNKED = b"transfer-encoding: chunked\r\n"
_CLOSE = b"connection: close\r\n"
_END = b"\r\n"
_CLOSE_END = _CLOSE + _END


def is_api_path(path: str) -> bool:
    """Whether a request goes to the edge: ``/api`` in any case or spelling (the edge refuses what is
    not literally ``/api/…``, instead of letting the SPA's routes answer), but the public API document."""
    return path[:5].lower() in _API_HEADS and path != OPENAPI_PATH


def check_head(head: bytes) -> None:
    """A framed response head must be lines and nothing else: no control character but HTAB inside
    them, and every CR and every LF part of one line end — so no name or value split a line (a
    response-splitting attempt through an upstream's or a client's bytes is a 500, never sent)."""
    lines = head.count(b"\n")
    # translate(None, …) deletes the forbidden bytes: a C loop, several times faster than a regex here
    if (
        len(head.translate(None, _FORBIDDEN)) != len(head)
        or head.count(b"\r") != lines
        or head.count(b"\r\n") != lines
    ):
        raise RuntimeError("Invalid HTTP header.")


class _HasEdge(Protocol):
    edge: ASGIApp | None


class _Signal:
    """What uvicorn's protocol and cycle use of an ``asyncio.Event``: ``set``, ``clear``, ``wait`` by one
    waiter at a time (the cycle's ``receive``), without the event's cost per request."""

    __slots__ = ("_flag", "_loop", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._flag = False
        self._loop = loop
        self._waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        self._flag = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def clear(self) -> None:
        self._flag = False

    def is_set(self) -> bool:
        return self._flag

    async def wait(self) -> bool:
        if not self._flag:
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        return True


class _Defaults:
    """The server's default headers (``date``), serialised once per value (uvicorn replaces the list
    every second)."""

    __slots__ = ("_block", "_source")

    def __init__(self) -> None:
        self._source: list[tuple[bytes, bytes]] | None = None
        self._block = b""

    def block(self, current: list[tuple[bytes, bytes]]) -> bytes:
        if current is not self._source:
            self._source = current  # held: its identity cannot be reused while it is compared against
            self._block = b"".join(name + b": " + value + b"\r\n" for name, value in current)
        return self._block


_defaults = _Defaults()


def _no_response() -> None:
    return None


class ApiCycle(RequestResponseCycle):
    """One API request's ASGI cycle (see the module docstring for how it differs from uvicorn's)."""

    def __init__(
        self,
        scope: Any,
        protocol: GatewayHttpProtocol,
        *,
        keep_alive: bool,
        expect_100_continue: bool,
    ) -> None:
        # uvicorn's constructor is not called: it makes the asyncio.Event this class does without
        self.scope = scope
        self.transport = protocol.transport
        self.flow = protocol.flow
        self.logger = protocol.logger
        self.access_logger = protocol.access_logger
        self.access_log = False
        self.default_headers = protocol.server_state.default_headers
        self.message_event = _Signal(protocol.loop)  # type: ignore[assignment]
        self.on_response = protocol.on_response_complete
        self.disconnected = False
        self.keep_alive = keep_alive
        self.waiting_for_100_continue = expect_100_continue
        self.body = bytearray()
        self.more_body = True
        self.response_started = False
        self.response_complete = False
        self.chunked_encoding: bool | None = None
        self.expected_content_length = 0
        self._head = b""
        self._bodiless = scope["method"] == "HEAD"

    async def run_asgi(self, app: Any) -> None:
        try:
            await app(self.scope, self.receive, self.send)
        except BaseException as exc:
            self.logger.error("Exception in ASGI application\n", exc_info=exc)
            if not self.response_started:
                await self.send_500_response()
            else:
                self._abandon()
        else:
            if not self.response_started and not self.disconnected:
                self.logger.error("ASGI callable returned without starting response.")
                await self.send_500_response()
            elif not self.response_complete and not self.disconnected:
                self.logger.error("ASGI callable returned without completing response.")
                self._abandon()
        finally:
            self.on_response = _no_response

    async def send_500_response(self) -> None:
        """The server layer's last resort, as a problem document (the edge answers its own errors)."""
        await send_internal_error(self.send)

    def _abandon(self) -> None:
        """A response that cannot complete: what was framed goes out, then the connection ends."""
        head, self._head = self._head, b""
        if head:
            self.transport.write(head)
        self.transport.close()

    async def send(self, message: Any) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        if not self.response_started:
            if message["type"] != "http.response.start":
                raise RuntimeError(f"Expected 'http.response.start', but got '{message['type']}'.")
            self.response_started = True
            self.waiting_for_100_continue = False
            self._head = self._frame(message["status"], message.get("headers", ()))
            return
        if self.response_complete:
            raise RuntimeError(
                f"Unexpected ASGI message '{message['type']}' sent, after response already completed."
            )
        if message["type"] != "http.response.body":
            raise RuntimeError(f"Expected 'http.response.body', but got '{message['type']}'.")
        self._body(message.get("body", b""), message.get("more_body", False))

    def respond(self, status: int, headers: Iterable[tuple[bytes, bytes]], body: bytes) -> None:
        """The whole response at once, without suspending (the callback path): what ``send`` does
        with a start message and one final body message, for a client that is not making the
        gateway wait (the caller checked ``flow.write_paused``)."""
        if self.disconnected:
            return
        self.response_started = True
        self.waiting_for_100_continue = False
        self._head = self._frame(status, headers)
        self._body(body, False)
        self.on_response = _no_response

    def respond_block(self, status: int, block: bytes, body: bytes) -> None:
        """:meth:`respond` for the relay's common answer (:meth:`gateway.proxy.Forwarder.answer_block`):
        ``block`` is the header lines already serialised — lower-case names, one ``content-length``
        that matches ``body``, no other framing header — so only the status line, the server's
        default headers and ``Connection: close`` (when the connection ends) are added; the head is
        checked as a whole like any other (:func:`check_head`)."""
        if self.disconnected:
            return
        self.response_started = True
        self.waiting_for_100_continue = False
        keep_alive = self.keep_alive
        head = b"".join(
            (
                STATUS_LINE[status],
                _defaults.block(self.default_headers),
                block,
                _END if keep_alive else _CLOSE_END,
            )
        )
        check_head(head)
        write = self.transport.write
        if self._bodiless:
            write(head)
        elif len(body) <= COALESCE_BYTES:
            write(head + body)
        else:
            write(head)
            write(body)
        self.chunked_encoding = False
        self.response_complete = True
        self.message_event.set()
        if not keep_alive:
            self.transport.close()
        self.on_response()
        self.on_response = _no_response

    def _body(self, body: bytes, more_body: bool) -> None:
        head, self._head = self._head, b""
        write = self.transport.write
        if self._bodiless:
            self.expected_content_length = 0
            if head:
                write(head)
        elif self.chunked_encoding:
            parts = [head] if head else []
            if body:
                parts += (b"%x\r\n" % len(body), body, b"\r\n")
            if not more_body:
                parts.append(b"0\r\n\r\n")
            if parts:
                write(b"".join(parts))
        else:
            size = len(body)
            if size > self.expected_content_length:
                raise RuntimeError("Response content longer than Content-Length")
            self.expected_content_length -= size
            if head and size <= COALESCE_BYTES:
                write(head + body if size else head)
            else:
                if head:
                    write(head)
                if size:
                    write(body)
        if not more_body:
            if self.expected_content_length != 0:
                raise RuntimeError("Response content shorter than Content-Length")
            self.response_complete = True
            self.message_event.set()
            if not self.keep_alive:
                self.transport.close()
            self.on_response()

    def _frame(self, status: int, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
        """The status line and headers, with uvicorn's framing rules (Content-Length, chunked,
        ``Connection: close``), checked as a whole."""
        parts = [STATUS_LINE[status], _defaults.block(self.default_headers)]
        close_sent = False
        for raw_name, value in headers:
            name = raw_name.lower()
            parts += (name, b": ", value, b"\r\n")
            if name in _FRAMING:
                if name == b"content-length":
                    if self.chunked_encoding is None:
                        self.expected_content_length = int(value.decode())
                        self.chunked_encoding = False
                elif name == b"transfer-encoding":
                    if value.lower() == b"chunked":
                        self.expected_content_length = 0
                        self.chunked_encoding = True
                elif b"close" in [token.lower().strip() for token in value.split(b",")]:
                    self.keep_alive = False
                    close_sent = True
        if not self.keep_alive and not close_sent:
            parts.append(_CLOSE)
        if self.chunked_encoding is None and not self._bodiless and status not in (204, 304):
            self.chunked_encoding = True
            parts.append(_CHUNKED)
        parts.append(b"\r\n")
        head = b"".join(parts)
        check_head(head)
        return head


class _Relay:
    """The upstream's answer to one request sent by the callback path, relayed from the upstream
    connection's callback (:meth:`gateway.upstream.Connection.listen`): a complete answer goes to
    the client in one write, the exchange back to the pool, the request to the metrics and the
    access log. Anything else — an upstream failure (retried or answered 502/503/504), a body to
    stream, a client that is not reading — is handed to :meth:`Edge.serve` in a task, which carries
    on from the exchange already started.
    """

    __slots__ = ("cycle", "edge", "exchange", "protocol", "request")

    def __init__(
        self,
        edge: Edge,
        request: ApiRequest,
        cycle: ApiCycle,
        exchange: Exchange,
        protocol: GatewayHttpProtocol,
    ) -> None:
        self.edge = edge
        self.request = request
        self.cycle = cycle
        self.exchange = exchange
        self.protocol = protocol

    def __call__(self) -> None:
        edge, exchange, cycle = self.edge, self.exchange, self.cycle
        forwarder = edge.forward.forwarder
        relayable = forwarder.relayable(exchange)
        if relayable is None:
            return  # more of the answer to come
        exchange.connection.listen(None)
        if not relayable or (cycle.flow.write_paused and not cycle.disconnected):
            self.protocol._resume(edge, self.request, cycle, exchange)
            return
        request = self.request
        context = request_id_var.set(request.request_id)
        try:
            route = request.matched
            assert route is not None
            framed = forwarder.answer_block(exchange, route.upstream, request.base_headers)
            if framed is not None:
                status, block, body = framed
                request.status = status
                cycle.respond_block(status, block, body)
            else:
                status, headers, body = forwarder.answer(exchange, route.upstream, request.base_headers)
                request.status = status
                cycle.respond(status, headers, body)
        except Exception:  # a response head that failed its check, say: as the task path, no answer
            log.exception("unhandled error in the API pipeline", extra={"route": request.route})
            request.status = 500
            cycle.on_response = _no_response
            cycle._abandon()
        finally:
            exchange.finish()
            edge.finish(request)
            request_id_var.reset(context)


class GatewayHttpProtocol(ProblemHttpProtocol):
    """The kit's protocol; API requests get an :class:`ApiCycle` and go straight to the edge."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        gateway = getattr(self.app, "gateway", None)  # a GatewayApp (not one wrapped in middleware)
        self._gateway: _HasEdge | None = gateway
        self._active_at = self.loop.time()
        self._memo = ConnectionMemo()

    # --- keep-alive: one timer per idle stretch, not one armed and cancelled per request ----------

    def _unset_keepalive_if_required(self) -> None:
        """uvicorn cancels its keep-alive timer on every read and arms a new one after every response
        (a timer handle made and cancelled per request); here activity is only noted, and the timer,
        when it fires, looks at how long the connection has really been idle."""
        self._active_at = self.loop.time()

    def on_response_complete(self) -> None:
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._active_at = self.loop.time()
        self.flow.resume_reading()
        if self.pipeline:  # the next pipelined request starts now
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self._keep_alive_expired
            )

    def _keep_alive_expired(self) -> None:
        self.timeout_keep_alive_task = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if self._receiving or self.pipeline or (cycle is not None and not cycle.response_complete):
            return  # a request in progress: its response arms the timer again
        idle = self.loop.time() - self._active_at
        if idle >= self.timeout_keep_alive:
            self.transport.close()
        else:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive - idle, self._keep_alive_expired
            )

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None
        super().connection_lost(exc)

    def on_headers_complete(self) -> None:
        gateway = self._gateway
        edge = gateway.edge if gateway is not None else None
        if edge is None:
            super().on_headers_complete()
            return
        self._receiving = False
        parser = self.parser
        scope = self.scope
        http_version = parser.get_http_version()
        scope["method"] = parser.get_method().decode("ascii")
        if http_version != "1.1":
            scope["http_version"] = http_version
        if parser.should_upgrade() and self._should_upgrade():
            return
        parsed = httptools.parse_url(self.url)
        raw_path = parsed.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        root_path = self.root_path
        if root_path:
            path = root_path + path
            raw_path = root_path.encode("ascii") + raw_path
        scope["path"] = path
        scope["raw_path"] = raw_path
        scope["query_string"] = parsed.query or b""
        keep_alive = http_version != "1.0" and parser.should_keep_alive() and not self._draining
        cycle: RequestResponseCycle
        app: Any
        if self.limit_concurrency is not None and (
            len(self.connections) >= self.limit_concurrency or len(self.tasks) >= self.limit_concurrency
        ):
            self.logger.warning("Exceeded concurrency limit.")
            cycle, app = self._asgi_cycle(keep_alive), service_unavailable
        elif is_api_path(path):
            cycle = ApiCycle(scope, self, keep_alive=keep_alive, expect_100_continue=self.expect_100_continue)
            app = edge
        else:
            cycle, app = self._asgi_cycle(keep_alive), self.app
        existing = self.cycle
        self.cycle = cycle
        if existing is None or existing.response_complete:
            if app is edge and isinstance(edge, Edge):
                self._serve_api(edge, cast(ApiCycle, cycle))
            else:
                self._start_asgi_task(cycle, app)
        else:  # pipelined: queued until the response in progress is complete
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, app))

    # --- the callback path (see the module docstring) ---------------------------------------------

    def _serve_api(self, edge: Edge, cycle: ApiCycle) -> None:
        """An API request, as far as it goes from this callback: sent upstream (its answer relayed by
        :class:`_Relay`), else handed to a task at the point :meth:`Edge.decide` reached."""
        request = edge.begin(cast(Scope, cycle.scope), self._memo)
        context = request_id_var.set(request.request_id)
        try:
            decided = edge.decide(request, cast(Receive, cycle.receive))
        except Exception:  # a bug: the task path runs the stages again and answers it as a problem
            log.exception("unhandled error deciding an API request", extra={"route": request.route})
            decided = START
        finally:
            request_id_var.reset(context)
        if isinstance(decided, Exchange):
            relay = _Relay(edge, request, cycle, decided, self)
            decided.connection.listen(relay)
            relay()  # the answer may be complete already (an upstream that answered within the write)
        else:
            self._resume(edge, request, cycle, decided)

    def _resume(
        self, edge: Edge, request: ApiRequest, cycle: ApiCycle, resume: Answer | Exchange | int
    ) -> None:
        """The rest of the request in a task, like any other cycle's (counted for the graceful drain)."""

        async def rest(scope: Any, receive: Any, send: Any) -> None:
            await edge.serve(request, receive, send, resume)

        self._start_asgi_task(cycle, rest)

    def _asgi_cycle(self, keep_alive: bool) -> RequestResponseCycle:
        return _ProblemCycle(
            scope=self.scope,
            transport=self.transport,
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=self.access_log,
            default_headers=self.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=self.expect_100_continue,
            keep_alive=keep_alive,
            on_response=self.on_response_complete,
        )


__all__ = ["ApiCycle", "GatewayHttpProtocol", "check_head", "is_api_path"]
