"""DPoP proofs (RFC 9449): the one verification the provider's token endpoint and the gateway share.

A DPoP proof is a JWT the client signs, per request, with a key only it holds (in a browser, a
non-extractable WebCrypto key); the access token carries the key's RFC 7638 thumbprint as
``cnf.jkt``. A token copied out of the page is then useless without the key: every request needs a
fresh proof for that request's method and URL, signed by the bound key. Why one module: the checks
are subtle (which algorithms, a public key and nothing private, the URL comparison, the time window,
replays), and two implementations would drift.

:class:`ProofVerifier` runs the checks of RFC 9449 §4.3 that need no I/O, in this order (each
failure a :class:`ProofError` with a stable ``reason``, the metric label and problem ``reason``):

1. size and shape: a compact JWS, strict base64url, JSON objects under the kit's rules
   (:func:`svckit.body.parse_json`) — ``dpop_malformed``;
2. ``typ`` is ``dpop+jwt`` — ``dpop_typ``; no ``crit`` — ``dpop_malformed``;
3. ``alg`` is asymmetric and in the allowlist (``none`` and ``HS*`` can never be configured in) —
   ``dpop_alg``;
4. ``jwk`` is a public key of the type ``alg`` needs, with no private member (``d``, ``p``…), RSA
   keys at least 2048 bits, EC keys on ``alg``'s curve — ``dpop_jwk``;
5. the signature, with that key — ``dpop_signature``;
6. claims: ``jti`` (1 to 255 characters), ``htm`` equal to the request method — ``dpop_htm``; ``htu``
   equal to the request URL without query and fragment, both normalised (RFC 3986 §6.2.2 and §6.2.3:
   case of scheme and host, default port, percent-encoding) — ``dpop_htu``; ``iat`` within
   ``[now - max_age - leeway, now + leeway]`` — ``dpop_iat``;
7. when the server hands out nonces (:class:`NonceSource`), ``nonce`` is a current one — else
   ``dpop_nonce`` with ``use_nonce`` set (the client retries with the ``DPoP-Nonce`` it is given);
8. with an access token: ``ath`` is base64url(SHA-256(token)) — ``dpop_ath``; and the key's
   thumbprint equals the token's ``cnf.jkt`` — ``dpop_key_mismatch``.

:class:`ReplayGuard` then makes sure a ``jti`` is used once (``dpop_replay``): across replicas with
Redis ``SET NX`` (key: the key's thumbprint and the ``jti``, hashed; kept as long as the proof's
``iat`` stays acceptable to any replica whose clock is within the leeway of this one's:
:attr:`ProofVerifier.window_seconds`), and in process with a local window that catches replays to the
same process even without Redis. **While Redis is unavailable** (the kit's :class:`RedisGuard`
circuit is open), the local window is the only check: a proof replayed to *another* process or
replica within its ``iat`` window (at most ``max_age + 2 * leeway`` seconds) is then accepted — the
platform keeps serving (Redis holds only losable state), and ``dpop_replay_checks_total{store="local"}``
counts every proof checked that way. **While Redis refuses writes but serves reads** (full under
``noeviction``, read-only: :func:`svckit.redisguard.refuses_writes_only`; the circuit is open, as for
any failure), a proof is still looked up there (``GET`` of its key; one round trip, only then): one
recorded before Redis filled up is refused as a replay by every replica (counted
``store="redis"``), one that is not is accepted and remembered in process as above. Without that, a
proof accepted through Redis just before it filled up could be replayed once to another replica.
Replaying a proof still needs the request it was made for
(same method, same URL, same token).

**Once Redis is back**, each process that found it unavailable writes its whole local window into
it again (``SET NX`` with each entry's remaining time; :mod:`svckit.windowrewrite`, a task that
retries every ``retry_seconds`` of the guard until it gets through). Without that, the outage lasted
longer than itself: a proof accepted in process only while Redis was away was never in Redis, and
one accepted through Redis before was lost with it when Redis came back empty (a restart without
persistence, as the chart's Redis runs), so either could be replayed once to every *other* replica
for the rest of its window after Redis was back (the chaos hunt of the fault stack found both).
A restart quicker than the next request is noticed too: that request's pooled connection is the
one the old server closed, so its call fails once (the circuit opens for ``retry_seconds``, the
rewrite follows). What remains: a replay to another replica during the outage (above), in the moment
before the rewrite lands (up to a few ``retry_seconds``: each replica notices at its next call), and
the proofs of a replica restarted meanwhile (its window went with it).

Key objects parsed from ``jwk`` are kept per thumbprint (a client sends the same key with every
request), so a proof costs one signature verification and no key parsing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from jwt.algorithms import Algorithm, get_default_algorithms
from prometheus_client import Counter
from pydantic import Field, field_validator

from .body import NotAccepted, parse_json
from .clock import SYSTEM_CLOCK, Clock
from .keyring import KeyRing
from .redisguard import RedisGuard
from .settings import CsvList, ServiceSettings
from .windowrewrite import WindowRewrite

#: Proof algorithms this module can verify: asymmetric only (RFC 9449 §4.2 forbids MACs and none).
SUPPORTED_ALGORITHMS = frozenset(
    {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA"}
)
#: The default allowlist: what browsers' WebCrypto and the SDKs use (ES256 first), and their peers.
DEFAULT_ALGORITHMS = ("ES256", "ES384", "RS256", "PS256", "EdDSA")
HEADER = "DPoP"
NONCE_HEADER = "DPoP-Nonce"
MAX_PROOF_BYTES = 8192
MAX_JTI_LENGTH = 255
MAX_HTU_LENGTH = 4096
MIN_RSA_BITS = 2048
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_KTY = {"ES": "EC", "RS": "RSA", "PS": "RSA", "Ed": "OKP"}
_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_OKP_CURVES = frozenset({"Ed25519", "Ed448"})
# RFC 7638 §3.2: the required members of each key type, in lexicographic order
_THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}
_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")
_JKT = re.compile(r"^[A-Za-z0-9_-]{43}$")  # base64url of a SHA-256 digest
_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_KEY_CACHE_SIZE = 10_000

replay_checks = Counter(
    "dpop_replay_checks_total",
    "DPoP proofs checked for a replayed jti, by store: redis (every replica) or local (this process "
    "only: Redis unavailable).",
    ["store"],
)


class ProofError(Exception):
    """A refused proof. ``reason`` is a fixed snake_case label; ``description`` is safe to send.

    ``use_nonce``: the proof lacked a current server nonce — the answer is ``use_dpop_nonce`` with a
    ``DPoP-Nonce`` header (RFC 9449 §8 and §9), which clients retry once, instead of ``invalid_dpop_proof``.
    """

    def __init__(self, reason: str, description: str, *, use_nonce: bool = False) -> None:
        super().__init__(description)
        self.reason = reason
        self.description = description
        self.use_nonce = use_nonce

    @property
    def error(self) -> str:
        """The OAuth error code (token endpoint ``error``, ``WWW-Authenticate`` ``error``)."""
        return "use_dpop_nonce" if self.use_nonce else "invalid_dpop_proof"


@dataclass(frozen=True, slots=True)
class Proof:
    """A proof that passed every check but the replay check (:meth:`ReplayGuard.first_use`)."""

    jkt: str  # the RFC 7638 thumbprint of the proof's key: what ``cnf.jkt`` binds to
    jti: str
    iat: float


class DpopSettings(ServiceSettings):
    """What the provider and the gateway read alike (their own settings add the rest)."""

    # asymmetric only; ES256 is what browsers and the SDKs sign with
    dpop_algorithms: CsvList = Field(default_factory=lambda: list(DEFAULT_ALGORITHMS))
    # a proof is accepted from iat - leeway to iat + max age + leeway (clients' clocks drift)
    dpop_max_age_seconds: int = Field(default=60, ge=5, le=600)
    dpop_leeway_seconds: int = Field(default=30, ge=0, le=300)
    # server nonces (RFC 9449 §8): proofs must carry a DPoP-Nonce handed out in the last two windows
    # (by a clock within the leeway of the checking replica's)
    dpop_nonces: bool = False
    dpop_nonce_seconds: int = Field(default=60, ge=10, le=3600)

    @field_validator("dpop_algorithms")
    @classmethod
    def _dpop_algorithms(cls, value: list[str]) -> list[str]:
        unknown = [alg for alg in value if alg not in SUPPORTED_ALGORITHMS]
        if unknown or not value:
            raise ValueError(
                f"unsupported or forbidden algorithm(s) {', '.join(unknown) or '(none given)'}; "
                f"allowed: {', '.join(sorted(SUPPORTED_ALGORITHMS))}"
            )
        return value

    def proof_verifier(
        self, nonce_secret: bytes | KeyRing | None, clock: Clock = SYSTEM_CLOCK
    ) -> ProofVerifier:
        nonces = (
            NonceSource(nonce_secret, self.dpop_nonce_seconds, clock, skew_seconds=self.dpop_leeway_seconds)
            if self.dpop_nonces and nonce_secret
            else None
        )
        return ProofVerifier(
            algorithms=self.dpop_algorithms,
            max_age_seconds=self.dpop_max_age_seconds,
            leeway_seconds=self.dpop_leeway_seconds,
            nonces=nonces,
            clock=clock,
        )


# --- small helpers ---------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(part: str) -> bytes:
    if not _B64URL.match(part) or len(part) % 4 == 1:
        raise ProofError("dpop_malformed", "The DPoP proof is not base64url.")
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise ProofError("dpop_malformed", "The DPoP proof is not base64url.") from None


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = parse_json(raw)
    except NotAccepted:
        raise ProofError("dpop_malformed", f"The DPoP proof {what} is not JSON.") from None
    if not isinstance(value, dict):
        raise ProofError("dpop_malformed", f"The DPoP proof {what} is not a JSON object.")
    return value


def access_token_hash(token: str) -> str:
    """``ath``: base64url(SHA-256(the access token's ASCII bytes)) (RFC 9449 §4.2)."""
    return b64url(hashlib.sha256(token.encode("ascii", "replace")).digest())


def thumbprint(jwk: dict[str, Any]) -> str:
    """The RFC 7638 SHA-256 thumbprint of a public JWK (EC, RSA or OKP), base64url: ``cnf.jkt``."""
    kty = jwk.get("kty")
    members = _THUMBPRINT_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None:
        raise ProofError("dpop_jwk", "The DPoP proof key has an unsupported key type ('kty').")
    required: dict[str, str] = {}
    for name in members:
        value = jwk.get(name)
        if not isinstance(value, str) or not value:
            raise ProofError("dpop_jwk", f"The DPoP proof key lacks its '{name}' member.")
        required[name] = value
    canonical = json.dumps(required, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def is_thumbprint(value: object) -> bool:
    """A well-formed SHA-256 thumbprint (``cnf.jkt``, ``dpop_jkt``): 43 base64url characters."""
    return isinstance(value, str) and _JKT.match(value) is not None


def _normalise_escapes(text: str) -> str:
    """Percent-escapes in upper case, escapes of unreserved characters decoded (RFC 3986 §6.2.2)."""

    def fix(match: re.Match[str]) -> str:
        char = chr(int(match.group(0)[1:], 16))
        return char if char in _UNRESERVED else match.group(0).upper()

    return _PERCENT.sub(fix, text)


def normalise_url(url: str) -> str | None:
    """``url`` as compared for ``htu``: without query and fragment, scheme and host in lower case,
    the default port dropped, percent-encoding normalised, an empty path as ``/``. ``None`` for
    anything that is not an absolute http(s) URL without user information."""
    if len(url) > MAX_HTU_LENGTH or any(ord(ch) < 0x21 or ord(ch) > 0x7E for ch in url):
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in _DEFAULT_PORTS or not host or "@" in parts.netloc:
        return None
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    return f"{scheme}://{netloc}{_normalise_escapes(parts.path) or '/'}"


#: the proofs of one client name the same few URLs: each normalised once (bounded, attacker input)
_normalised = lru_cache(maxsize=1024)(normalise_url)


def request_url(scheme: str, host: str, raw_path: str) -> str:
    """The URL a client addressed (scheme and ``Host`` as it used them, the raw path), for ``htu``."""
    return f"{scheme}://{host}{raw_path}"


# --- server nonces ------------------------------------------------------------------------------


class NonceSource:
    """Stateless server nonces (RFC 9449 §8): an HMAC of the current time window.

    Every process holding the same secret hands out and accepts the same nonces, so replicas need
    no shared state: a nonce is valid during its window and the next one (``lifetime`` to twice
    that), and a client cannot make one in advance — which is the point of nonces: proofs made
    earlier (by malware that had the key for a moment) stop working.

    Replicas' clocks differ a little, so near a window's start one replica already hands out the new
    window's nonce while another has not reached it. A nonce is therefore taken if any clock within
    ``skew_seconds`` of this one (``DPOP_LEEWAY_SECONDS``, the clock difference tolerated anywhere)
    would take it: up to ``skew_seconds`` before its window begins here, and that much after the next
    one ends. Without it the replica behind refused the nonce the one ahead had just handed out, and
    a client's retry reaching a third replica further behind was refused again.

    The secret rotates the same way while pods roll (``DPOP_NONCE_SECRET`` as a
    :class:`~svckit.keyring.KeyRing`): the first key makes the nonces, named ``<kid>.<mac>`` (a single
    unnamed key makes them as before, unnamed), and every key of the ring checks them, so a nonce from
    a pod that already makes them with the new key is taken by one that only checks it, and the
    other way round. Without it, every rotation refused the nonces of the pods on the other secret.
    """

    #: nonces of recent windows kept (per key) (each is an HMAC; a check looks at a few windows)
    MAX_CACHED_WINDOWS = 64

    def __init__(
        self,
        secret: bytes | KeyRing,
        lifetime: float,
        clock: Clock = SYSTEM_CLOCK,
        *,
        skew_seconds: float = 0.0,
    ) -> None:
        """``secret``: one key, or a :class:`~svckit.keyring.KeyRing` while the key rotates — the first
        key makes the nonces (named ``<kid>.<mac>``), every key checks them."""
        ring = secret if isinstance(secret, KeyRing) else KeyRing.single(secret)
        if any(len(key) < 16 for _, key in ring.keys):
            raise ValueError("the nonce secret must hold at least 16 bytes")
        if lifetime <= 0:
            raise ValueError("the nonce lifetime must be positive")
        if skew_seconds < 0:
            raise ValueError("the clock skew must not be negative")
        self._ring = ring.derive(lambda key: hmac.new(key, b"tsp-dpop-nonce-v1", hashlib.sha256).digest())
        self.lifetime = lifetime
        self.skew = skew_seconds
        self._now = clock.time
        self._cached: tuple[int, str] = (-1, "")
        self._windows: dict[tuple[bytes, int], bytes] = {}

    @staticmethod
    def _mac(key: bytes, window: int) -> str:
        return b64url(hmac.new(key, window.to_bytes(8, "big", signed=True), hashlib.sha256).digest()[:24])

    def _mac_bytes(self, key: bytes, window: int) -> bytes:
        known = self._windows.get((key, window))
        if known is None:
            if len(self._windows) >= self.MAX_CACHED_WINDOWS:
                self._windows.clear()
            known = self._windows[key, window] = self._mac(key, window).encode()
        return known

    def current(self) -> str:
        window = math.floor(self._now() / self.lifetime)
        if self._cached[0] != window:
            self._cached = (window, self._ring.named(self._mac(self._ring.key, window)))
        return self._cached[1]

    def valid(self, nonce: str) -> bool:
        now = self._now()
        # the windows a clock within the skew of this one hands out (its current one) or still takes
        # (its previous one): with no skew, this window and the one before
        first = math.floor((now - self.skew) / self.lifetime) - 1
        last = math.floor((now + self.skew) / self.lifetime)
        # the key its name picks (every key for a nonce without one: svckit.keyring), compared as
        # bytes: compare_digest raises TypeError on a str with non-ASCII characters (client input)
        mac, keys = self._ring.candidates(nonce)
        sent = mac.encode("utf-8", "surrogatepass")
        return any(
            hmac.compare_digest(sent, self._mac_bytes(key, window))
            for key in keys
            for window in range(first, last + 1)
        )


# --- the verifier -------------------------------------------------------------------------------


class ProofVerifier:
    """Every check of a proof that needs no I/O (see the module docstring); thread-safe, no await."""

    def __init__(
        self,
        *,
        algorithms: Iterable[str] = DEFAULT_ALGORITHMS,
        max_age_seconds: float = 60.0,
        leeway_seconds: float = 5.0,
        nonces: NonceSource | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        wanted = tuple(algorithms)
        unknown = [alg for alg in wanted if alg not in SUPPORTED_ALGORITHMS]
        if unknown or not wanted:
            raise ValueError(
                f"unsupported DPoP algorithm(s) {unknown}; allowed: {sorted(SUPPORTED_ALGORITHMS)}"
            )
        available = get_default_algorithms()
        self._algorithms: dict[str, Algorithm] = {alg: available[alg] for alg in wanted}
        self.algorithms = wanted
        self.max_age = max_age_seconds
        self.leeway = leeway_seconds
        self.nonces = nonces
        self._now = clock.time
        self._keys: OrderedDict[tuple[str, str], Any] = OrderedDict()
        # a client signs every proof with one key, so every proof it sends has the same header: what
        # the header decides (alg, key, thumbprint) is kept per header text, checked once
        self._headers: OrderedDict[str, tuple[Algorithm, str, Any]] = OrderedDict()

    @property
    def window_seconds(self) -> float:
        """How long after its ``iat`` a proof may still be accepted somewhere: what the replay store
        must cover. This process accepts it until ``iat`` + max age + leeway by its own clock; a
        replica whose clock is behind by up to the leeway (the clock difference tolerated between
        clients and servers, so between servers too) accepts it that much later. The replay entry
        is written by whichever replica saw the proof first, with its clock: without the second
        leeway it expired while the replicas behind still accepted the proof, and a replay to one of
        them passed."""
        return self.max_age + 2 * self.leeway

    def verify(
        self,
        proof: str,
        *,
        method: str,
        url: str,
        access_token: str | None = None,
        jkt: str | None = None,
    ) -> Proof:
        """Check ``proof`` for a request ``method url`` (and, at a resource, ``access_token`` bound
        to ``jkt``); returns what the replay check and the token binding need."""
        if not proof or len(proof) > MAX_PROOF_BYTES:
            raise ProofError("dpop_malformed", "The DPoP proof is empty or too large.")
        parts = proof.split(".")
        if len(parts) != 3:
            raise ProofError("dpop_malformed", "The DPoP proof is not a JWS in compact form.")
        known = self._headers.get(parts[0])
        algorithm, key_jkt, key = decided = known if known is not None else self._header(parts[0])
        claims = _json_object(_b64decode(parts[1]), "payload")

        signature = _b64decode(parts[2])
        try:
            valid = algorithm.verify(f"{parts[0]}.{parts[1]}".encode("ascii"), key, signature)
        except Exception:  # a malformed signature raises inside the primitives
            valid = False
        if not valid:
            raise ProofError("dpop_signature", "The DPoP proof signature does not verify.")
        if known is None:  # kept once its key signed it: a header is the sender's text, up to 8 KiB
            self._headers[parts[0]] = decided
            if len(self._headers) > _KEY_CACHE_SIZE:
                self._headers.popitem(last=False)

        jti = claims.get("jti")
        if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_LENGTH:
            raise ProofError("dpop_malformed", "The DPoP proof needs a 'jti' of 1 to 255 characters.")
        if claims.get("htm") != method:
            raise ProofError("dpop_htm", "The DPoP proof was made for another HTTP method ('htm').")
        htu = claims.get("htu")
        expected = _normalised(url)
        if not isinstance(htu, str) or expected is None or _normalised(htu) != expected:
            raise ProofError("dpop_htu", "The DPoP proof was made for another URL ('htu').")
        iat = claims.get("iat")
        if isinstance(iat, bool) or not isinstance(iat, int | float) or not math.isfinite(iat):
            raise ProofError("dpop_malformed", "The DPoP proof needs a numeric 'iat'.")
        now = self._now()
        if iat > now + self.leeway:
            raise ProofError("dpop_iat", "The DPoP proof was issued in the future ('iat'); check the clock.")
        if iat < now - self.max_age - self.leeway:
            raise ProofError("dpop_iat", "The DPoP proof is too old ('iat'); make a new one per request.")
        if self.nonces is not None:
            nonce = claims.get("nonce")
            if not isinstance(nonce, str) or not self.nonces.valid(nonce):
                raise ProofError(
                    "dpop_nonce", "A current server nonce is required in the DPoP proof.", use_nonce=True
                )
        if access_token is not None:
            ath = claims.get("ath")
            if not isinstance(ath, str) or not hmac.compare_digest(
                ath.encode("utf-8", "surrogatepass"), access_token_hash(access_token).encode()
            ):
                raise ProofError("dpop_ath", "The DPoP proof was made for another access token ('ath').")
        if jkt is not None and not hmac.compare_digest(key_jkt, jkt):
            raise ProofError("dpop_key_mismatch", "The DPoP proof key is not the one the token is bound to.")
        return Proof(key_jkt, jti, float(iat))

    def _header(self, text: str) -> tuple[Algorithm, str, Any]:
        """The checks of a proof's header that it decides alone (:meth:`verify` remembers what passed
        them once the proof's signature verified)."""
        header = _json_object(_b64decode(text), "header")
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() != "dpop+jwt":
            raise ProofError("dpop_typ", "The DPoP proof type ('typ') must be dpop+jwt.")
        if "crit" in header:
            raise ProofError("dpop_malformed", "The DPoP proof requires unsupported extensions ('crit').")
        alg = header.get("alg")
        algorithm = self._algorithms.get(alg) if isinstance(alg, str) else None
        if algorithm is None:
            raise ProofError(
                "dpop_alg", f"The DPoP proof algorithm is not one of {' '.join(self.algorithms)}."
            )
        assert isinstance(alg, str)
        jwk = header.get("jwk")
        if not isinstance(jwk, dict):
            raise ProofError("dpop_jwk", "The DPoP proof header has no public key ('jwk').")
        key_jkt, key = self._key(alg, algorithm, jwk)
        return algorithm, key_jkt, key

    def _key(self, alg: str, algorithm: Algorithm, jwk: dict[str, Any]) -> tuple[str, Any]:
        """The thumbprint and the key object of ``jwk``, checked against ``alg`` (cached per key)."""
        if PRIVATE_MEMBERS.intersection(jwk):
            raise ProofError("dpop_jwk", "The DPoP proof key ('jwk') must not contain private key material.")
        kty = jwk.get("kty")
        if kty != _KTY[alg[:2]]:
            raise ProofError("dpop_jwk", f"The DPoP proof key type does not fit {alg}.")
        crv = jwk.get("crv")
        if (alg in _CURVES and crv != _CURVES[alg]) or (alg == "EdDSA" and crv not in _OKP_CURVES):
            raise ProofError("dpop_jwk", f"The DPoP proof key's curve does not fit {alg}.")
        jkt = thumbprint(jwk)
        cached = self._keys.get((alg, jkt))
        if cached is not None:
            return jkt, cached
        members = {name: jwk[name] for name in _THUMBPRINT_MEMBERS[str(kty)]}
        try:
            key = algorithm.from_jwk(members)
        except Exception:
            raise ProofError("dpop_jwk", "The DPoP proof key ('jwk') is not a valid public key.") from None
        if kty == "RSA" and key.key_size < MIN_RSA_BITS:
            raise ProofError("dpop_jwk", f"The DPoP proof RSA key is shorter than {MIN_RSA_BITS} bits.")
        self._keys[(alg, jkt)] = key
        if len(self._keys) > _KEY_CACHE_SIZE:
            self._keys.popitem(last=False)
        return jkt, key


# --- replays ------------------------------------------------------------------------------------


class ReplayGuard:
    """Each proof once: a local window in this process plus Redis ``SET NX`` across every process.

    ``first_use`` answers False for a ``(jkt, jti)`` seen before while the proof is still
    acceptable; see the module docstring for what happens while Redis is unavailable and after.
    """

    def __init__(
        self,
        redis: RedisGuard | None,
        namespace: str,
        window_seconds: float,
        *,
        clock: Clock = SYSTEM_CLOCK,
        max_local: int = 200_000,
    ) -> None:
        self.redis = redis
        self.namespace = namespace
        self.window = window_seconds
        self.max_local = max_local
        self._now = clock.time
        self._seen: dict[bytes, float] = {}  # digest -> until (wall seconds), in insertion order
        self._redis_checks = replay_checks.labels("redis")
        self._local_checks = replay_checks.labels("local")
        # the local window written back into Redis once it is back (svckit.windowrewrite)
        self.rewrite = (
            WindowRewrite(
                redis,
                self._window,
                self._now,
                name=f"{namespace}-rewrite",
                message="redis is back: wrote this process's DPoP proof ids into it again",
            )
            if redis is not None
            else None
        )

    def _digest(self, jkt: str, jti: str) -> bytes:
        return hashlib.blake2b(f"{jkt}\n{jti}".encode(), digest_size=16).digest()

    async def first_use(self, proof: Proof) -> bool:
        now = self._now()
        digest = self._digest(proof.jkt, proof.jti)
        until = self._seen.get(digest)
        if until is not None and until > now:
            return False
        keep = max(1.0, proof.iat + self.window - now)
        self._remember(digest, now + keep, now)
        fresh = None
        if self.redis is not None:
            key = self.redis.key(self.namespace, digest.hex())
            ttl = math.ceil(keep)

            async def claim(client: Any) -> bool:
                return bool(await client.set(key, b"1", nx=True, ex=ttl))

            fresh = await self.redis.call(claim)
            if fresh is None and self.redis.readable:
                # Redis refuses writes but serves reads (full): a proof recorded there is a replay
                async def recorded(client: Any) -> bool:
                    return await client.get(key) is not None

                if await self.redis.read(recorded):
                    self._redis_checks.inc()
                    return False
            if fresh is None and self.rewrite is not None:
                self.rewrite.schedule()
        if fresh is None:
            self._local_checks.inc()
            return True
        self._redis_checks.inc()
        return fresh

    def _window(self) -> list[tuple[str, float]]:
        """The local window as Redis keys and their ends, for the rewrite after an outage."""
        assert self.redis is not None
        key, namespace = self.redis.key, self.namespace
        return [(key(namespace, digest.hex()), until) for digest, until in list(self._seen.items())]

    async def close(self) -> None:
        """Stop a rewrite still waiting for Redis (the process is stopping: its window goes with it)."""
        if self.rewrite is not None:
            await self.rewrite.close()

    def _remember(self, digest: bytes, until: float, now: float) -> None:
        seen = self._seen
        if len(seen) >= self.max_local:
            for key in [key for key, value in seen.items() if value <= now]:
                del seen[key]
            while len(seen) >= self.max_local:  # still full of live entries: forget the oldest
                del seen[next(iter(seen))]
        seen[digest] = until

    def __len__(self) -> int:
        return len(self._seen)
