"""The identity contract between the gateway and the services (and between services).

Services never see the end-user JWT. The gateway verifies it once and forwards who the caller is as
``X-Identity-*`` headers with an HMAC over the identity *and the request line*, keyed by a key id so
keys can rotate (sign with the first of ``IDENTITY_KEYS``, accept all of them). Binding the method and
path means a captured header set cannot be replayed against another route, and the timestamp bounds
replay against the same one. Header names live here and nowhere else.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from prometheus_client import Counter
from starlette.types import ASGIApp, Receive, Scope, Send

from .context import new_request_id
from .problems import problem_response

PREFIX = "x-identity-"
ISSUER = "x-identity-issuer"
SUBJECT = "x-identity-subject"
KIND = "x-identity-kind"
CLIENT_ID = "x-identity-client-id"
SCOPES = "x-identity-scopes"
NAME = "x-identity-name"
TIMESTAMP = "x-identity-timestamp"
KEY_ID = "x-identity-key-id"
SIGNATURE = "x-identity-signature"
REQUEST_ID = "x-request-id"

_REQUEST_ID_B = REQUEST_ID.encode()
_PREFIX_B = PREFIX.encode()
_URLSAFE = bytes.maketrans(b"+/", b"-_")

SIGNED_HEADERS = (ISSUER, SUBJECT, KIND, CLIENT_ID, SCOPES, NAME, TIMESTAMP, KEY_ID, SIGNATURE)
SERVICE_ISSUER = "urn:timesheets:service"
VERSION = "tsp-identity-v1"

Kind = Literal["user", "client", "service"]
KINDS: frozenset[str] = frozenset({"user", "client", "service"})

failures = Counter(
    "identity_verification_failures_total",
    "Requests refused because their gateway-signed identity did not verify.",
    ["reason"],
)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is calling: a user (via a user token), a client acting as itself, or a platform service."""

    issuer: str
    subject: str
    kind: Kind = "user"
    client_id: str = ""
    scopes: frozenset[str] = field(default_factory=frozenset)
    name: str = ""

    @property
    def principal(self) -> tuple[str, str]:
        """(issuer, subject): subjects are only unique within their issuer."""
        return (self.issuer, self.subject)

    def has(self, scope: str) -> bool:
        return scope in self.scopes

    @classmethod
    def service(cls, name: str, scopes: Iterable[str] = ()) -> Identity:
        return cls(SERVICE_ISSUER, name, "service", name, frozenset(scopes), name)


class IdentityError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _clean(value: str, what: str) -> str:
    # one regex scan, not a Python loop per character: this runs for every request the gateway signs
    if _CONTROL.search(value) is not None:
        raise ValueError(f"{what} contains control characters")
    return value


def canonical(
    *,
    kid: str,
    timestamp: str,
    method: str,
    target: str,
    request_id: str,
    identity: Identity,
) -> bytes:
    parts = (
        VERSION,
        kid,
        timestamp,
        method.upper(),
        target,
        request_id,
        identity.issuer,
        identity.subject,
        identity.kind,
        identity.client_id,
        " ".join(sorted(identity.scopes)),
        identity.name,
    )
    return "\n".join(parts).encode()


def _mac(key: bytes, message: bytes) -> str:
    digest = hmac.digest(key, message, "sha256")  # one-shot C implementation, same bytes as hmac.new
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def request_target(path: str, query: str | bytes = b"") -> str:
    """The signed request line part: raw path plus raw query, exactly as sent on the wire."""
    if isinstance(query, bytes):
        query = query.decode("latin-1")
    return f"{path}?{query}" if query else path


class IdentitySigner:
    """Produces identity headers; the gateway and service-to-service clients use it."""

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        if not keys:
            raise ValueError("at least one identity key is required")
        self.kid, self.key = next(iter(keys.items()))

    def headers(
        self,
        identity: Identity,
        *,
        method: str,
        target: str,
        request_id: str | None = None,
        now: float | None = None,
    ) -> dict[str, str]:
        request_id = request_id or new_request_id()
        timestamp = str(int(now if now is not None else time.time()))
        for value, what in (
            (identity.issuer, "issuer"),
            (identity.subject, "subject"),
            (identity.client_id, "client id"),
            (identity.name, "name"),
            (request_id, "request id"),
        ):
            _clean(value, what)
        scopes = " ".join(sorted(identity.scopes))
        message = canonical(
            kid=self.kid,
            timestamp=timestamp,
            method=method,
            target=target,
            request_id=request_id,
            identity=identity,
        )
        return {
            ISSUER: identity.issuer,
            SUBJECT: identity.subject,
            KIND: identity.kind,
            CLIENT_ID: identity.client_id,
            SCOPES: scopes,
            NAME: identity.name,
            TIMESTAMP: timestamp,
            KEY_ID: self.kid,
            SIGNATURE: _mac(self.key, message),
            REQUEST_ID: request_id,
        }

    def prepare(self, identity: Identity) -> PreparedIdentity:
        return PreparedIdentity(self, identity)


class PreparedIdentity:
    """One identity's headers, checked and serialised once, signed per request in a few microseconds.

    The gateway keeps one with each verified token: the identity part of the canonical string and the
    seven fixed headers never change for a token, so a request only adds its timestamp, method,
    target and request id. Produces exactly the headers :meth:`IdentitySigner.headers` would (UTF-8
    values), which the kit's tests compare.
    """

    __slots__ = ("_block", "_lead", "_mac", "_tail")

    def __init__(self, signer: IdentitySigner, identity: Identity) -> None:
        for value, what in (
            (identity.issuer, "issuer"),
            (identity.subject, "subject"),
            (identity.client_id, "client id"),
            (identity.name, "name"),
            (" ".join(identity.scopes), "scopes"),
            (signer.kid, "key id"),
        ):
            _clean(value, what)  # these become header lines verbatim: no CR/LF may get through
        scopes = " ".join(sorted(identity.scopes))
        # keyed once: per request only a copy of the keyed state is updated (no key set-up)
        self._mac = hmac.new(signer.key, digestmod=hashlib.sha256)
        self._lead = f"{VERSION}\n{signer.kid}\n".encode()
        fields = (identity.issuer, identity.subject, identity.kind, identity.client_id, scopes, identity.name)
        self._tail = ("\n" + "\n".join(fields)).encode()
        fixed = (
            (ISSUER, identity.issuer),
            (SUBJECT, identity.subject),
            (KIND, identity.kind),
            (CLIENT_ID, identity.client_id),
            (SCOPES, scopes),
            (NAME, identity.name),
            (KEY_ID, signer.kid),
        )
        self._block = "".join(f"{name}: {value}\r\n" for name, value in fixed).encode()

    def header_block(self, *, method: str, target: bytes, request_id: bytes, timestamp: bytes) -> bytes:
        """The signed identity headers of one request, serialised for HTTP/1.1 (``name: value\\r\\n``
        lines). ``target`` and ``request_id`` must be free of control characters (the gateway checks
        both before it gets here)."""
        mac = self._mac.copy()
        mac.update(b"\n".join((self._lead + timestamp, method.upper().encode(), target, request_id)))
        mac.update(self._tail)
        signature = binascii.b2a_base64(mac.digest(), newline=False).translate(_URLSAFE).rstrip(b"=")
        return b"".join(
            (
                self._block,
                b"x-identity-timestamp: ",
                timestamp,
                b"\r\nx-identity-signature: ",
                signature,
                b"\r\nx-request-id: ",
                request_id,
                b"\r\n",
            )
        )


class IdentityVerifier:
    """Checks identity headers against every configured key (current and previous)."""

    def __init__(self, keys: Mapping[str, bytes], max_skew_seconds: int = 60) -> None:
        self.keys = dict(keys)
        self.max_skew = max_skew_seconds

    def verify(
        self,
        headers: Mapping[str, str],
        *,
        method: str,
        target: str,
        now: float | None = None,
    ) -> Identity:
        signature = headers.get(SIGNATURE)
        if not signature:
            raise IdentityError("missing", "The request carries no gateway-signed identity.")
        kid = headers.get(KEY_ID, "")
        key = self.keys.get(kid)
        if key is None:
            raise IdentityError("unknown_key", "The identity was signed with an unknown key id.")
        timestamp = headers.get(TIMESTAMP, "")
        if not timestamp.isdigit():
            raise IdentityError("malformed", "The identity timestamp is missing or malformed.")
        now = now if now is not None else time.time()
        if abs(now - int(timestamp)) > self.max_skew:
            raise IdentityError("stale", "The identity timestamp is outside the accepted window.")
        kind = headers.get(KIND, "")
        issuer, subject = headers.get(ISSUER, ""), headers.get(SUBJECT, "")
        if kind not in KINDS or not issuer or not subject:
            raise IdentityError("malformed", "The identity headers are incomplete.")
        identity = Identity(
            issuer=issuer,
            subject=subject,
            kind=kind,  # type: ignore[arg-type]
            client_id=headers.get(CLIENT_ID, ""),
            scopes=frozenset(headers.get(SCOPES, "").split()),
            name=headers.get(NAME, ""),
        )
        message = canonical(
            kid=kid,
            timestamp=timestamp,
            method=method,
            target=target,
            request_id=headers.get(REQUEST_ID, ""),
            identity=identity,
        )
        if not hmac.compare_digest(_mac(key, message), signature):
            raise IdentityError("bad_signature", "The identity signature does not verify.")
        return identity


def identity_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The identity headers of a request, decoded as UTF-8 (names and subjects need not be ASCII)."""
    headers: dict[str, str] = {}
    for key, value in raw:
        if key.startswith(_PREFIX_B) or key == _REQUEST_ID_B:
            try:
                headers[key.decode("latin-1")] = value.decode("utf-8")
            except UnicodeDecodeError:
                raise IdentityError("malformed", "The identity headers are not UTF-8.") from None
    return headers


class IdentityMiddleware:
    """Refuses (401) every request without a verifying identity, except the open operational paths.

    On success the identity is in ``scope["state"]["identity"]`` (``request.state.identity``).
    """

    def __init__(
        self,
        app: ASGIApp,
        verifier: IdentityVerifier,
        open_paths: Iterable[str] = ("/healthz", "/readyz", "/metrics", "/openapi.json"),
    ) -> None:
        self.app = app
        self.verifier = verifier
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        target = request_target(
            scope.get("raw_path", b"").decode("latin-1") or scope["path"],
            scope.get("query_string", b""),
        )
        try:
            headers = identity_headers(scope["headers"])
            identity = self.verifier.verify(headers, method=scope["method"], target=target)
        except IdentityError as exc:
            failures.labels(exc.reason).inc()
            response = problem_response(401, "Unauthorized", exc.detail, reason=exc.reason)
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["identity"] = identity
        await self.app(scope, receive, send)


__all__ = [
    "CLIENT_ID",
    "ISSUER",
    "KEY_ID",
    "KIND",
    "NAME",
    "PREFIX",
    "REQUEST_ID",
    "SCOPES",
    "SERVICE_ISSUER",
    "SIGNATURE",
    "SIGNED_HEADERS",
    "SUBJECT",
    "TIMESTAMP",
    "Identity",
    "IdentityError",
    "IdentityMiddleware",
    "IdentitySigner",
    "IdentityVerifier",
    "PreparedIdentity",
    "request_target",
]
