"""How the gateway is served: the kit's HTTP protocol, with ``/api`` sent straight to the edge.

:class:`GatewayHttpProtocol` is the kit's protocol (:class:`svckit.server.ProblemHttpProtocol`:
uvicorn's httptools protocol with llhttp parsing, the head limits and the server layer's problem
answers, keep-alive, pipelining, flow control, ``100 Continue``, lingering close, the graceful drain,
and the kit's lean request cycle, :class:`svckit.cycle.LeanCycle`). Only an API request (what
:class:`GatewayApp` would hand to the edge) is routed differently: it gets an :class:`ApiCycle` (the
kit's cycle, plus a whole response written at once for the callback path below) and goes straight to
:class:`gateway.edge.Edge`, without the dispatch through :class:`gateway.app.GatewayApp`; everything
else (``/healthz``, ``/readyz``, the SPA, the API document) goes to the Starlette app. Measured with
``bench/gateway.py`` and py-spy, uvicorn's per-request ASGI machinery had been the largest single
share of the gateway's CPU after the system calls themselves; the lean cycle was first written here
and then moved to the kit for every service.

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
from collections.abc import Iterable
from typing import Any, Protocol, cast

from starlette.types import ASGIApp, Receive, Scope
from svckit.context import request_id_var
from svckit.cycle import LeanCycle, check_head, default_headers, no_response
from svckit.server import ProblemHttpProtocol
from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from .edge import START, Edge
from .proxy import Exchange
from .request import Answer, ApiRequest, ConnectionMemo
from .routes import API_PREFIX

log = logging.getLogger("gateway.serving")

OPENAPI_PATH = API_PREFIX + "/openapi.json"
_API_HEADS = frozenset({API_PREFIX, API_PREFIX + "/"})
_CLOSE = b"connection: close\r\n"
_END = b"\r\n"
_CLOSE_END = _CLOSE + _END


def is_api_path(path: str) -> bool:
    """Whether a request goes to the edge: ``/api`` in any case or spelling (the edge refuses what is
    not literally ``/api/…``, instead of letting the SPA's routes answer), but the public API document."""
    return path[:5].lower() in _API_HEADS and path != OPENAPI_PATH


class _HasEdge(Protocol):
    edge: ASGIApp | None


class ApiCycle(LeanCycle):
    """One API request's cycle: the kit's, and the whole response at once for the callback path."""

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
        self.on_response = no_response

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
        head = b"".join(
            (
                STATUS_LINE[status],
                default_headers.block(self.default_headers),
                block,
                _END if self.keep_alive else _CLOSE_END,
            )
        )
        check_head(head)
        self._write(head, b"" if self._bodiless else body)
        self.chunked_encoding = False
        self._complete()
        self.on_response = no_response


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
            cycle.on_response = no_response
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
        self._memo = ConnectionMemo()

    def route(self, keep_alive: bool) -> tuple[LeanCycle, ASGIApp]:
        gateway = self._gateway
        edge = gateway.edge if gateway is not None else None
        if edge is not None and is_api_path(self.scope["path"]):
            cycle = ApiCycle(
                self.scope, self, keep_alive=keep_alive, expect_100_continue=self.expect_100_continue
            )
            return cycle, edge
        return super().route(keep_alive)

    def start(self, cycle: LeanCycle, app: ASGIApp) -> None:
        if isinstance(app, Edge) and isinstance(cycle, ApiCycle):
            if not self.client_left(cycle):  # the kit's: a request no one waits for is not forwarded
                self._serve_api(app, cycle)
        else:
            super().start(cycle, app)

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


__all__ = ["ApiCycle", "GatewayHttpProtocol", "is_api_path"]
