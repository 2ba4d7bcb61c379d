"""The identity contract between the gateway and the services (and between services).

Services never see the end-user JWT. The gateway verifies it once and forwards who the caller is as
``X-Identity-*`` headers with an HMAC over the identity *and the request line*, keyed by a key id so
keys can rotate (sign with the first key of a pair, accept all of them). Binding the method and path
means a captured header set cannot be replayed against another route, and the timestamp bounds replay
against the same one. Header names live here and nowhere else.

Keys are pairwise: one secret per sender → receiver pair of :data:`PAIRS`, known to those two only
(``IDENTITY_KEYS_<SENDER>_TO_<RECEIVER>``). A receiver therefore knows which sender signed a request
from the key id alone, and :func:`may_assert` fixes what that sender may claim: only the gateway may
assert a user or a client, and every other sender only itself (``service:<sender>``). A compromised
service can sign neither as a user nor as a peer, and a key never leaves the two processes that use it.
HMAC rather than signatures: ~3 µs per sign or verify against ~50-200 µs for Ed25519 or P-256, on the
gateway's hot path (bench/identity.py).

A signature also binds the body (``Content-Digest``, RFC 9530, sha-256: a body that does not match is
refused) and a nonce fresh for every signed request (``X-Identity-Nonce``): the receiving service
accepts each nonce once within the skew window, on every replica (:mod:`svckit.replay`), so a captured
header set can be replayed neither with its own body nor with another one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import random
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from prometheus_client import Counter, Gauge
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .context import new_request_id
from .problems import Problem, problem_response

if TYPE_CHECKING:
    from .denials import DenialRecorder
    from .replay import ReplayMemory

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
NONCE = "x-identity-nonce"
REQUEST_ID = "x-request-id"
CONTENT_DIGEST = "content-digest"

_REQUEST_ID_B = REQUEST_ID.encode()
_CONTENT_DIGEST_B = CONTENT_DIGEST.encode()
_PREFIX_B = PREFIX.encode()
_URLSAFE = bytes.maketrans(b"+/", b"-_")

SIGNED_HEADERS = (ISSUER, SUBJECT, KIND, CLIENT_ID, SCOPES, NAME, TIMESTAMP, KEY_ID, NONCE, SIGNATURE)
SERVICE_ISSUER = "urn:timesheets:service"
VERSION = "tsp-identity-v2"
#: A nonce: 16-128 characters of letters, digits, ``-`` and ``_`` (the gateway sends 32 hex digits).
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,128}")
#: ``Content-Digest`` as the contract sends it: one sha-256 member (RFC 9530 section 2).
_DIGEST = re.compile(r"sha-256=:[A-Za-z0-9+/]{43}=:")
#: ``X-Identity-Timestamp``: Unix seconds in ASCII digits (``[0-9]``: ``\d`` is any Unicode digit)
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# the module's own generator: random reseeds it in a forked child (os.register_at_fork), which it does
# not do for a Random() of our own — two forked workers would then send the same nonces, refused as
# replays (the kit's supervisor spawns, but a forking server must not break this)
_nonce_bits = random.getrandbits


def content_digest(body: bytes) -> str:
    """The ``Content-Digest`` field value of ``body`` (RFC 9530): ``sha-256=:<base64>:``."""
    return f"sha-256=:{base64.b64encode(hashlib.sha256(body).digest()).decode()}:"


#: The digest of an empty body: what a GET carries (precomputed: the gateway's hot path).
EMPTY_DIGEST = content_digest(b"")


def new_nonce() -> str:
    """A nonce for one signed request: 128 random bits as 32 hex digits. Uniqueness is what matters
    (a receiver accepts each nonce once); unpredictability is not needed, a nonce is useless without
    the key that signs it, so a fast non-cryptographic generator is enough."""
    return f"{_nonce_bits(128):032x}"


GATEWAY = "gateway"
#: Every sender → receiver pair that signs: the gateway forwards to the three API services and feeds its
#: denials to audit; approvals applies decisions at timesheets; the outbox relays deliver to audit (the
#: bundled identity provider's too: its denials).
PAIRS: tuple[tuple[str, str], ...] = (
    (GATEWAY, "timesheets"),
    (GATEWAY, "approvals"),
    (GATEWAY, "audit"),
    ("approvals", "timesheets"),
    ("timesheets", "audit"),
    ("approvals", "audit"),
    ("identity", "audit"),
)
#: Senders a deployment may run without: the bundled identity provider (production may use Auth0
#: instead). The sender itself needs its pairs' keys to serve; a receiver serves without them (it then
#: accepts nothing from that sender).
OPTIONAL_SENDERS: frozenset[str] = frozenset({"identity"})

Kind = Literal["user", "client", "service"]
KINDS: frozenset[str] = frozenset({"user", "client", "service"})

failures = Counter(
    "identity_verification_failures_total",
    "Requests refused because their signed identity did not verify, was replayed, or came with "
    "another body than signed.",
    ["reason"],
)
#: Every reason a request is refused for, exported at 0 from the start: the alerts on forged and
#: replayed requests (increase() over a window) then see the first one.
REASONS = (
    "missing",
    "malformed",
    "unknown_key",
    "clock_skew",
    "bad_signature",
    "wrong_principal",
    "digest_mismatch",
    "replay",
    "replay_store_unavailable",
)
for _reason in REASONS:
    failures.labels(_reason)
#: The refusal for a timestamp outside the window, signature verified: the sender's clock and this
#: receiver's disagree (or an old signed request came back, which the window exists to refuse).
CLOCK_SKEW = "clock_skew"
clock_offset = Gauge(
    "identity_clock_offset_seconds",
    "This receiver's wall clock minus the signed X-Identity-Timestamp of the latest request from the "
    "sender whose signature verified, accepted or refused for the clock: about 0-1 s normally (whole "
    "seconds signed, plus the request's transit); positive when the sender's clock is behind this "
    "one's, negative when it is ahead. Refusals start beyond IDENTITY_MAX_SKEW_SECONDS.",
    ["sender"],
    multiprocess_mode="mostrecent",
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


def pair_variable(sender: str, receiver: str) -> str:
    """The environment variable (and the chart's Secret key, lower-cased with ``-``) of one pair."""
    return f"IDENTITY_KEYS_{sender.upper()}_TO_{receiver.upper()}"


def may_assert(sender: str, identity: Identity) -> bool:
    """Whether a key of ``sender`` may sign ``identity``: the gateway any user or client (from a token it
    verified) and itself; every other sender only its own service principal. A service principal holds
    no scopes: scopes come from a token the gateway verified, and a writer that could grant itself
    ``read:audit`` (or any other) would act beyond itself."""
    if identity.kind == "service" or identity.issuer == SERVICE_ISSUER:
        return (
            identity.kind == "service"
            and identity.issuer == SERVICE_ISSUER
            and identity.subject == sender
            and not identity.scopes
        )
    return sender == GATEWAY


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
    nonce: str,
    digest: str,
    identity: Identity,
) -> bytes:
    """The signed string: the version, key id, time, METHOD, target, request id, nonce, Content-Digest
    and the identity (issuer, subject, kind, client id, sorted scopes, name), joined by ``\n``."""
    parts = (
        VERSION,
        kid,
        timestamp,
        method.upper(),
        target,
        request_id,
        nonce,
        digest,
        identity.issuer,
        identity.subject,
        identity.kind,
        identity.client_id,
        " ".join(sorted(identity.scopes)),
        identity.name,
    )
    return "\n".join(parts).encode()


_SHA256_BLOCK = 64
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


def _hmac_states(key: bytes) -> tuple[Any, Any]:
    """HMAC-SHA256 keyed once (RFC 2104): the inner and outer hash states after ``key ^ ipad`` and
    ``key ^ opad``; ``outer(inner(message))`` of copies of them is ``hmac.digest(key, message)``."""
    if len(key) > _SHA256_BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_SHA256_BLOCK, b"\0")
    return hashlib.sha256(key.translate(_IPAD)), hashlib.sha256(key.translate(_OPAD))


def _mac(key: bytes, message: bytes) -> str:
    digest = hmac.digest(key, message, "sha256")  # one-shot C implementation, same bytes as hmac.new
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def request_target(path: str, query: str | bytes = b"") -> str:
    """The signed request line part: raw path plus raw query, exactly as sent on the wire."""
    if isinstance(query, bytes):
        query = query.decode("latin-1")
    return f"{path}?{query}" if query else path


class IdentitySigner:
    """Produces identity headers; the gateway and service-to-service clients use it.

    The key's HMAC states are made once (:func:`_hmac_states`), and so is each identity's part of the
    headers and of the signed string, checked for control characters the first time it is signed
    (:attr:`MAX_CACHED_IDENTITIES`): a service signs for itself, or for a few callers, over and over."""

    #: identities kept with their checked fixed part (the dict is emptied when it is full)
    MAX_CACHED_IDENTITIES = 1024

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        if not keys:
            raise ValueError("at least one identity key is required")
        self.kid, self.key = next(iter(keys.items()))
        self._inner, self._outer = _hmac_states(self.key)
        self._fixed: dict[Identity, tuple[dict[str, str], bytes]] = {}

    def _fixed_part(self, identity: Identity) -> tuple[dict[str, str], bytes]:
        """The identity's own headers and its part of the signed string (after the digest)."""
        fixed = self._fixed.get(identity)
        if fixed is None:
            for value, what in (
                (identity.issuer, "issuer"),
                (identity.subject, "subject"),
                (identity.client_id, "client id"),
                (identity.name, "name"),
            ):
                _clean(value, what)
            scopes = " ".join(sorted(identity.scopes))
            headers = {
                ISSUER: identity.issuer,
                SUBJECT: identity.subject,
                KIND: identity.kind,
                CLIENT_ID: identity.client_id,
                SCOPES: scopes,
                NAME: identity.name,
            }
            parts = (
                identity.issuer,
                identity.subject,
                identity.kind,
                identity.client_id,
                scopes,
                identity.name,
            )
            fixed = (headers, ("\n" + "\n".join(parts)).encode())
            if len(self._fixed) >= self.MAX_CACHED_IDENTITIES:
                self._fixed.clear()
            self._fixed[identity] = fixed
        return fixed

    def headers(
        self,
        identity: Identity,
        *,
        method: str,
        target: str,
        request_id: str | None = None,
        now: float | None = None,
        body: bytes = b"",
        nonce: str | None = None,
    ) -> dict[str, str]:
        """The identity headers of one request with ``body`` (its exact bytes), plus ``Content-Digest``:
        signed over :func:`canonical`'s string."""
        request_id = request_id or new_request_id()
        nonce = nonce or new_nonce()
        digest = content_digest(body) if body else EMPTY_DIGEST
        timestamp = str(int(now if now is not None else time.time()))
        fixed, tail = self._fixed_part(identity)
        _clean(request_id, "request id")
        _clean(nonce, "nonce")
        inner = self._inner.copy()
        inner.update(
            f"{VERSION}\n{self.kid}\n{timestamp}\n{method.upper()}\n{target}\n{request_id}\n{nonce}\n"
            f"{digest}".encode()
        )
        inner.update(tail)
        outer = self._outer.copy()
        outer.update(inner.digest())
        signature = binascii.b2a_base64(outer.digest(), newline=False).translate(_URLSAFE).rstrip(b"=")
        return {
            **fixed,
            TIMESTAMP: timestamp,
            KEY_ID: self.kid,
            NONCE: nonce,
            SIGNATURE: signature.decode(),
            REQUEST_ID: request_id,
            CONTENT_DIGEST: digest,
        }

    def prepare(self, identity: Identity) -> PreparedIdentity:
        return PreparedIdentity(self, identity)


class PreparedIdentity:
    """One identity's headers, checked and serialised once, signed per request in a few microseconds.

    The gateway keeps one with each verified token: the identity part of the canonical string and the
    seven fixed headers never change for a token, so a request only adds its timestamp, method,
    target, request id, nonce and body digest. Produces exactly the headers
    :meth:`IdentitySigner.headers` would (UTF-8 values), which the kit's tests compare.
    """

    __slots__ = ("_block", "_inner", "_lead", "_outer", "_tail")

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
        # keyed once (RFC 2104: the inner and outer SHA-256 states after the padded key): per request
        # only copies of hashlib's states are updated, with no Python-level HMAC wrapper in between
        self._inner, self._outer = _hmac_states(signer.key)
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

    def header_block(
        self,
        *,
        method: str,
        target: bytes,
        request_id: bytes,
        timestamp: bytes,
        nonce: bytes,
        digest: bytes = EMPTY_DIGEST.encode(),
    ) -> bytes:
        """The signed identity headers of one request, serialised for HTTP/1.1 (``name: value\\r\\n``
        lines), ``Content-Digest`` included (``digest``: :func:`content_digest` of the body that goes
        with them). ``target`` and ``request_id`` must be free of control characters (the gateway
        checks both before it gets here)."""
        inner = self._inner.copy()
        inner.update(
            b"\n".join((self._lead + timestamp, method.upper().encode(), target, request_id, nonce, digest))
        )
        inner.update(self._tail)
        outer = self._outer.copy()
        outer.update(inner.digest())
        signature = binascii.b2a_base64(outer.digest(), newline=False).translate(_URLSAFE).rstrip(b"=")
        return b"".join(
            (
                self._block,
                b"x-identity-timestamp: ",
                timestamp,
                b"\r\nx-identity-nonce: ",
                nonce,
                b"\r\nx-identity-signature: ",
                signature,
                b"\r\nx-request-id: ",
                request_id,
                b"\r\ncontent-digest: ",
                digest,
                b"\r\n",
            )
        )


class IdentityVerifier:
    """Checks identity headers against the keys of every sender to this receiver (current and previous).

    ``keys`` maps each sender to its keys (key id → secret); a key id names exactly one sender, so it
    fixes the one principal a request signed with it may assert (:func:`may_assert`).
    """

    def __init__(self, keys: Mapping[str, Mapping[str, bytes]], max_skew_seconds: int = 60) -> None:
        self.keys: dict[str, bytes] = {}
        self.senders: dict[str, str] = {}
        for sender, pair in keys.items():
            for kid, secret in pair.items():
                if kid in self.senders:
                    raise ValueError(
                        f"key id {kid!r} is used by both {self.senders[kid]!r} and {sender!r}: "
                        "each key id must name one sender"
                    )
                self.keys[kid] = secret
                self.senders[kid] = sender
        self.max_skew = max_skew_seconds
        self._states = {kid: _hmac_states(secret) for kid, secret in self.keys.items()}
        self._offsets = {kid: clock_offset.labels(sender) for kid, sender in self.senders.items()}
        self._identities: dict[tuple[str, str, str, str, str, str, str], tuple[Identity, bytes, bool]] = {}

    def verify(
        self,
        headers: Mapping[str, str],
        *,
        method: str,
        target: str,
        now: float | None = None,
    ) -> Identity:
        """The identity the headers assert, if they verify; else :class:`IdentityError` (its reason).

        Per request only the HMAC of the signed string is computed, from SHA-256 states keyed once per
        key (:func:`_hmac_states`); the identity part (an :class:`Identity`, its part of the signed
        string and whether the key's sender may assert it) is made once per (key id, identity headers)
        and, once their signature verified, reused (:attr:`MAX_CACHED_IDENTITIES`; the values are
        immutable)."""
        get = headers.get
        signature = get(SIGNATURE)
        if not signature:
            raise IdentityError("missing", "The request carries no gateway-signed identity.")
        kid = get(KEY_ID, "")
        states = self._states.get(kid)
        if states is None:
            raise IdentityError("unknown_key", "The identity was signed with an unknown key id.")
        timestamp = get(TIMESTAMP, "")
        # ASCII digits only, at most 12 (Unix seconds until the year 33658): ``str.isdigit`` also
        # takes '²', which ``int()`` refuses, and 5,000 digits pass it and fail ``int()`` as well
        if _TIMESTAMP.fullmatch(timestamp) is None:
            raise IdentityError("malformed", "The identity timestamp is missing or malformed.")
        kind = get(KIND, "")
        issuer, subject = get(ISSUER, ""), get(SUBJECT, "")
        if kind not in KINDS or not issuer or not subject:
            raise IdentityError("malformed", "The identity headers are incomplete.")
        nonce, digest = get(NONCE, ""), get(CONTENT_DIGEST, "")
        if _NONCE.fullmatch(nonce) is None:
            raise IdentityError("malformed", "The identity nonce is missing or malformed.")
        if _DIGEST.fullmatch(digest) is None:
            raise IdentityError("malformed", "The Content-Digest (sha-256) is missing or malformed.")
        key = (kid, issuer, subject, kind, get(CLIENT_ID, ""), get(SCOPES, ""), get(NAME, ""))
        known = self._identities.get(key)
        fresh = known is None
        if known is None:
            known = self._identity_of(key)
        identity, tail, allowed = known
        # canonical(): the version, key id, time, METHOD, target, request id, nonce, digest, identity
        inner = states[0].copy()
        inner.update(
            f"{VERSION}\n{kid}\n{timestamp}\n{method.upper()}\n{target}\n{get(REQUEST_ID, '')}\n"
            f"{nonce}\n{digest}".encode()
        )
        inner.update(tail)
        outer = states[1].copy()
        outer.update(inner.digest())
        expected = binascii.b2a_base64(outer.digest(), newline=False).translate(_URLSAFE).rstrip(b"=")
        if not hmac.compare_digest(expected, signature.encode()):
            raise IdentityError("bad_signature", "The identity signature does not verify.")
        if fresh:
            self._keep(key, known)
        # the window only once the signature verified: then the timestamp is the sender's own clock
        # reading (nobody else could have signed it), and the offset says how far the two clocks are
        # apart — worth a gauge, and a refusal that names the clock rather than the caller
        offset = (now if now is not None else time.time()) - int(timestamp)
        self._offsets[kid].set(offset)
        if not allowed:
            raise IdentityError(
                "wrong_principal", "The identity was signed with a key that may not assert this principal."
            )
        if abs(offset) > self.max_skew:
            raise IdentityError(
                CLOCK_SKEW,
                f"The identity was signed {abs(offset):.0f} s {'behind' if offset > 0 else 'ahead of'} "
                f"this service's clock, beyond the accepted {self.max_skew} s: the sender's clock or this "
                "service's is off (or the signed request is an old one).",
            )
        return identity

    #: identities kept with their part of the signed string (the dict is emptied when it is full); only
    #: those whose signature verified: headers nobody signed are up to the caller, and what they make
    #: (a set of every scope word, the signed string's tail) was ~1 MB for 60 KB of headers
    MAX_CACHED_IDENTITIES = 10_000

    def _keep(
        self, key: tuple[str, str, str, str, str, str, str], known: tuple[Identity, bytes, bool]
    ) -> None:
        if len(self._identities) >= self.MAX_CACHED_IDENTITIES:
            self._identities.clear()
        self._identities[key] = known

    def _identity_of(self, key: tuple[str, str, str, str, str, str, str]) -> tuple[Identity, bytes, bool]:
        kid, issuer, subject, kind, client_id, scopes, name = key
        identity = Identity(
            issuer=issuer,
            subject=subject,
            kind=kind,  # type: ignore[arg-type]
            client_id=client_id,
            scopes=frozenset(scopes.split()),
            name=name,
        )
        fields = (issuer, subject, kind, client_id, " ".join(sorted(identity.scopes)), name)
        return identity, ("\n" + "\n".join(fields)).encode(), may_assert(self.senders[kid], identity)


#: the headers the verifier reads, by their names as the server hands them over (lower case bytes)
_READ_NAMES = {name.encode(): name for name in (*SIGNED_HEADERS, REQUEST_ID, CONTENT_DIGEST)}


def identity_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The identity headers of a request (every ``x-identity-*`` one, ``x-request-id`` and
    ``content-digest``), decoded as UTF-8 (names and subjects need not be ASCII); the last of a
    repeated one. The ones the verifier reads are found by one dict lookup each (their names made
    once), the rest by their prefix: ~1.5 µs less a request than a prefix test and a decode of every
    name."""
    found: dict[str, str] = {}
    known = _READ_NAMES.get
    try:
        for key, value in raw:
            name = known(key)
            if name is not None:
                found[name] = value.decode("utf-8")
            elif key.startswith(_PREFIX_B):
                found[key.decode("latin-1")] = value.decode("utf-8")
    except UnicodeDecodeError:
        raise IdentityError("malformed", "The identity headers are not UTF-8.") from None
    return found


class IdentityGate:
    """Admits only requests with a verifying identity, except the open operational paths.

    In order: the signature (401), the body against its signed ``Content-Digest`` (401
    ``digest_mismatch``; the body is read whole here, within ``max_body_size`` when given, and handed
    on), then the nonce against ``replay`` (401 ``replay``; 503 ``replay_store_unavailable`` for an
    unsafe method while the shared memory is unreachable, see :mod:`svckit.replay`). Each 401 is
    counted in ``identity_verification_failures_total{reason}`` and, with ``denials``, towards an
    aggregated anonymous ``access.denied`` record on the audit trail (:mod:`svckit.denials`: a dict
    update here, written later; the principal the headers claim is never named). On success the
    identity is in ``scope["state"]["identity"]`` (``request.state.identity``). The kit's front
    (:class:`svckit.middleware.ServiceFront`) calls :meth:`admit`; :class:`IdentityMiddleware` is the
    same as a middleware of its own.
    """

    def __init__(
        self,
        verifier: IdentityVerifier,
        open_paths: Iterable[str] = ("/healthz", "/readyz", "/metrics", "/openapi.json"),
        replay: ReplayMemory | None = None,
        max_body_size: int | None = None,
        denials: DenialRecorder | None = None,
    ) -> None:
        self.verifier = verifier
        self.open_paths = frozenset(open_paths)
        self.replay = replay
        self.max_body_size = max_body_size
        self.denials = denials

    async def admit(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """The ``receive`` to call the application with (the body already read, handed over once), or
        None when the request was answered here (refused) or the client went away."""
        method = scope["method"]
        target = request_target(
            scope.get("raw_path", b"").decode("latin-1") or scope["path"],
            scope.get("query_string", b""),
        )
        try:
            headers = identity_headers(scope["headers"])
            identity = self.verifier.verify(headers, method=method, target=target)
        except IdentityError as exc:
            await self._refuse(exc.reason, exc.detail, scope, receive, send)
            return None
        try:
            body = await _read_body(receive, self.max_body_size)
        except Problem as exc:  # over the body limit
            await exc.response()(scope, receive, send)
            return None
        if body is None:  # the client went away
            return None
        if (content_digest(body) if body else EMPTY_DIGEST) != headers[CONTENT_DIGEST]:
            detail = "The request body does not match the signed Content-Digest."
            await self._refuse("digest_mismatch", detail, scope, receive, send)
            return None
        if self.replay is not None:
            verdict = await self.replay.first_use(headers[NONCE], method)
            if verdict == "replay":
                detail = "This signed request was accepted before; a signed request is accepted once."
                await self._refuse("replay", detail, scope, receive, send)
                return None
            if verdict == "unavailable":
                failures.labels("replay_store_unavailable").inc()
                response = problem_response(
                    503,
                    "Service Unavailable",
                    "Whether this signed request was seen before cannot be checked right now; retry shortly.",
                    headers={"Retry-After": "2"},
                    reason="replay_store_unavailable",
                )
                await response(scope, receive, send)
                return None
        scope.setdefault("state", {})["identity"] = identity
        return replaying_receive(body, receive)

    async def _refuse(self, reason: str, detail: str, scope: Scope, receive: Receive, send: Send) -> None:
        failures.labels(reason).inc()
        if self.denials is not None:
            self.denials.deny(scope, 401, reason)  # anonymous: the identity did not verify
        await problem_response(401, "Unauthorized", detail, reason=reason)(scope, receive, send)


class IdentityMiddleware:
    """:class:`IdentityGate` as a middleware of its own (open paths pass straight through)."""

    def __init__(
        self,
        app: ASGIApp,
        verifier: IdentityVerifier,
        open_paths: Iterable[str] = ("/healthz", "/readyz", "/metrics", "/openapi.json"),
        replay: ReplayMemory | None = None,
    ) -> None:
        self.app = app
        self.gate = IdentityGate(verifier, open_paths, replay)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.gate.open_paths:
            await self.app(scope, receive, send)
            return
        admitted = await self.gate.admit(scope, receive, send)
        if admitted is not None:
            await self.app(scope, admitted, send)


def body_too_large(max_body_size: int) -> Problem:
    return Problem(413, "Content Too Large", f"The request body is larger than {max_body_size} bytes.")


async def _read_body(receive: Receive, max_body_size: int | None = None) -> bytes | None:
    """The whole request body (``None`` when the client disconnected first); :func:`body_too_large`
    raised as soon as it grows past ``max_body_size``."""
    message = await receive()
    if message["type"] == "http.disconnect":
        return None
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):  # the common case: one message
        if max_body_size is not None and len(body) > max_body_size:
            raise body_too_large(max_body_size)
        return body
    chunks = [body]
    total = len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        total += len(chunk)
        if max_body_size is not None and total > max_body_size:
            raise body_too_large(max_body_size)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def replaying_receive(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the already-read body to the app once, then waits as the server's."""
    sent = False

    async def replay_receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay_receive


__all__ = [
    "CLIENT_ID",
    "CONTENT_DIGEST",
    "EMPTY_DIGEST",
    "GATEWAY",
    "ISSUER",
    "KEY_ID",
    "KIND",
    "NAME",
    "NONCE",
    "OPTIONAL_SENDERS",
    "PAIRS",
    "PREFIX",
    "REQUEST_ID",
    "SAFE_METHODS",
    "SCOPES",
    "SERVICE_ISSUER",
    "SIGNATURE",
    "SIGNED_HEADERS",
    "SUBJECT",
    "TIMESTAMP",
    "Identity",
    "IdentityError",
    "IdentityGate",
    "IdentityMiddleware",
    "IdentitySigner",
    "IdentityVerifier",
    "PreparedIdentity",
    "content_digest",
    "may_assert",
    "new_nonce",
    "pair_variable",
    "request_target",
]
