"""One API request as the stages see it, and the answers a stage can end it with.

:class:`ApiRequest` parses the headers the pipeline needs in one pass and carries what each stage
learnt (route, caller, principal, body) and the outcome so far. A stage that ends the request returns
a :class:`Refusal` (a problem document; maybe a denial for the audit trail) or a :class:`Reply`.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Literal

from starlette.types import Scope
from svckit.context import is_valid_request_id

from .forwarded import Forwarding
from .proxy import BodyStream
from .routes import Route
from .tokens import Principal

REALM = "timesheets"
UNMATCHED = "unmatched"
_DESCRIPTION_SAFE = frozenset(range(0x20, 0x7F)) - {0x22, 0x5C}
# Request ids need to be unique, not secret: a Mersenne Twister seeded from os.urandom, re-seeded in
# forked children so that two workers never share a sequence
_rng = random.Random()
os.register_at_fork(after_in_child=_rng.seed)
_random_bits = _rng.getrandbits

#: how a denial reaches the audit trail: not at all, one record per request, or counted per window
Audit = Literal["", "each", "aggregate"]


def challenge(error: str = "", description: str = "", scope: str = "") -> bytes:
    """An RFC 6750 §3 ``WWW-Authenticate`` value (quoted strings restricted to safe characters)."""
    parts = [f'Bearer realm="{REALM}"']
    if error:
        parts.append(f'error="{error}"')
    if description:
        safe = "".join(ch for ch in description if ord(ch) in _DESCRIPTION_SAFE)
        parts.append(f'error_description="{safe}"')
    if scope:
        parts.append(f'scope="{scope}"')
    return ", ".join(parts).encode()


def dpop_challenge(algs: bytes, error: str = "", description: str = "") -> bytes:
    """An RFC 9449 §7.1 ``WWW-Authenticate: DPoP`` value: the realm, the accepted proof algorithms
    and, when refusing, the error (``invalid_token``, ``invalid_dpop_proof``, ``use_dpop_nonce``)."""
    value = b'DPoP realm="' + REALM.encode() + b'", algs="' + algs + b'"'
    if error:
        value += f', error="{error}"'.encode()
    if description:
        safe = "".join(ch for ch in description if ord(ch) in _DESCRIPTION_SAFE)
        value += f', error_description="{safe}"'.encode()
    return value


@dataclass(slots=True)
class Refusal:
    """An answer that ends the pipeline with a problem document (RFC 9457).

    ``reason`` is a stable snake_case code: the problem body's ``reason`` and, with ``failure``, the
    label of ``gateway_auth_failures_total``. ``audit`` says how the denial reaches the trail.
    ``cors``: whether the origin's CORS headers go along (not for a refused preflight).
    A ``silent`` refusal answers nothing (the client is gone); only its status is logged.
    """

    status: int
    detail: str
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    reason: str = ""
    failure: bool = False
    audit: Audit = ""
    title: str | None = None
    required_scope: str = ""
    cors: bool = True
    silent: bool = False
    #: a failed write's ``outcome`` member (``unknown`` / ``not_stored``: docs/CONTRACTS.md)
    outcome: str = ""


@dataclass(slots=True)
class Reply:
    """A bodyless answer that is not a problem (the preflight's 204)."""

    status: int
    headers: list[tuple[bytes, bytes]]


Answer = Refusal | Reply
GONE = Refusal(499, "", silent=True)


class ConnectionMemo:
    """What one client connection's last request was read as: its ``Authorization`` value as a token,
    its scheme and the verified-token cache's key (:meth:`gateway.tokens.TokenVerifier.cache_key`);
    the forwarding headers of its ``Host``; the header lines it was forwarded with. A keep-alive
    connection sends the same values with every request, and comparing bytes costs far less than
    decoding and hashing a token, or filtering and framing the headers, again. Each field is a
    function of what it is kept with (compared in full before it is reused), so a match gives
    exactly what reading them again would. Held by the connection, like the last request's headers,
    and gone with it."""

    __slots__ = (
        "block",
        "dpop_scheme",
        "forwarded",
        "forwarding",
        "headers",
        "host",
        "raw",
        "token",
        "token_key",
    )

    def __init__(self) -> None:
        self.raw: bytes | None = None
        self.token = ""
        self.dpop_scheme = False
        self.token_key = b""
        self.host: bytes | None = None
        self.forwarding: Forwarding | None = None
        self.headers: list[tuple[bytes, bytes]] | None = None
        self.forwarded: Forwarding | None = None
        self.block = b""


class ApiRequest:
    """What the pipeline knows about one request: its headers (parsed in one pass), what each stage
    learnt, and the outcome so far (``route``, ``status``, ``subject``, ``client_id`` for the logs)."""

    __slots__ = (
        "acr_headers",
        "acr_method",
        "authorization",
        "base_headers",
        "body",
        "body_held",
        "chunked",
        "client_id",
        "client_ip",
        "connection",
        "content_length",
        "digest",
        "dpop",
        "dpop_scheme",
        "forwarded",
        "forwarding",
        "host",
        "in_flight",
        "matched",
        "memo",
        "method",
        "origin",
        "path",
        "principal",
        "query",
        "raw_path",
        "read_body",
        "request_id",
        "route",
        "scope",
        "started",
        "status",
        "subject",
        "token",
        "token_key",
        "xf_host",
        "xf_proto",
        "xff",
    )

    def __init__(self, scope: Scope, memo: ConnectionMemo | None = None) -> None:
        self.scope = scope
        self.memo = memo  # the client connection's, when the server keeps one (gateway.serving)
        self.method: str = scope["method"]
        self.raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        self.query: bytes = scope.get("query_string", b"")
        self.path = ""  # the raw path as text, once check_target has vouched for it
        self.route = UNMATCHED
        self.started = 0.0  # perf_counter() when the gateway began on it
        self.status = 500
        self.subject = ""
        self.client_id = ""
        self.client_ip = ""
        self.base_headers: list[tuple[bytes, bytes]] = []
        self.matched: Route | None = None
        self.token = ""
        self.token_key = b""  # the verified-token cache's key for the token, once known
        self.dpop_scheme = False  # the token came as "Authorization: DPoP …"
        self.principal: Principal | None = None
        self.forwarding: Forwarding | None = None
        self.body: bytes | BodyStream | None = None
        self.read_body = False
        self.body_held = 0  # bytes of the worker's request-body budget it holds, until finish
        self.digest = b""  # the body's Content-Digest, computed once (every attempt upstream signs it)
        self.in_flight = ""  # the key it counts under in InFlight once admitted, until released
        authorization: list[bytes] = []
        dpop: list[bytes] = []
        xff: list[bytes] = []
        forwarded: list[bytes] = []
        origin = xf_proto = xf_host = acr_method = acr_headers = host = content_length = connection = None
        inbound_id = None
        chunked = False
        for key, value in scope["headers"]:
            if key == b"authorization":
                authorization.append(value)
            elif key == b"origin":
                origin = value
            elif key == b"x-request-id":
                inbound_id = value
            elif key == b"host":
                host = value
            elif key == b"content-length":
                content_length = value
            elif key == b"transfer-encoding":  # "chunked" alone: the kit's protocol refused any other
                chunked = True
            elif key == b"connection":
                connection = value
            elif key == b"access-control-request-method":
                acr_method = value
            elif key == b"access-control-request-headers":
                acr_headers = value
            elif key == b"x-forwarded-for":
                xff.append(value)
            elif key == b"x-forwarded-proto":
                xf_proto = value
            elif key == b"x-forwarded-host":
                xf_host = value
            elif key == b"forwarded":
                forwarded.append(value)
            elif key == b"dpop":
                dpop.append(value)
        self.authorization = authorization
        self.dpop = dpop  # DPoP proof header values (RFC 9449: exactly one when used)
        self.origin: bytes | None = origin
        self.acr_method: bytes | None = acr_method
        self.acr_headers: bytes | None = acr_headers
        self.host: bytes | None = host
        self.content_length: bytes | None = content_length
        self.connection: bytes | None = connection
        self.chunked = chunked
        self.xff = xff
        self.forwarded = forwarded  # RFC 7239 values: read instead of X-Forwarded-* where configured
        self.xf_proto: bytes | None = xf_proto
        self.xf_host: bytes | None = xf_host
        request_id = inbound_id.decode("latin-1") if inbound_id is not None else ""
        if not is_valid_request_id(request_id):
            request_id = f"{_random_bits(128):032x}"  # uuid4().hex costs a syscall per request
        self.request_id = request_id
