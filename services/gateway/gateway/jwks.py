"""Signing keys of the trusted issuers: discovery, JWKS fetch, and a two-layer cache.

Layers: the worker's memory, then Redis (shared by every replica, so a new replica with a warm Redis
never calls the provider), then the provider (``{issuer}.well-known/openid-configuration`` →
``jwks_uri``, or the per-issuer ``jwks_uri`` override).

* Freshness: a key set is fresh for the provider's ``Cache-Control: max-age`` clamped to
  ``[JWKS_MIN_TTL_SECONDS, JWKS_MAX_TTL_SECONDS]`` (``JWKS_DEFAULT_TTL_SECONDS`` without one). A stale
  set keeps serving while one background refresh runs; it is dropped after
  ``JWKS_MAX_STALE_SECONDS`` — keys never live forever if the provider stays unreachable.
* Renewing stale keys across replicas: every replica and worker holds the same set (loaded from one
  copy in Redis), so it goes stale everywhere at once, and under traffic each starts its background
  refresh within moments of the others — N replicas x W workers provider calls every TTL (twice that
  with discovery). A background refresh of a set that still serves therefore first takes a lease in
  Redis (``gateway:jwks-refresh:<issuer>``, ``SET NX PX``, for as long as its fetch may take): the one that
  gets it asks the provider and leaves the new copy in Redis; the others keep serving the stale set
  and look at Redis again :data:`LEASE_RETRY_SECONDS` later. A load that a request waits for (no
  usable keys, an unknown ``kid``) takes no lease, nor does any load while Redis is unavailable.
  ``gateway_jwks_lease_total{outcome}`` counts it: ``taken``, ``held``, then ``handed_off`` (the
  holder's copy read) or ``lapsed`` (no copy, the lease free again: this replica renews them).
* Unknown ``kid``: one refresh per issuer, single-flight (concurrent requests await the same task),
  and at most one per ``JWKS_REFETCH_COOLDOWN_SECONDS`` so a flood of made-up ``kid`` values costs
  the provider one request per cool-down, not one per token.
* Provider failing: each failed fetch puts the issuer in back-off — exponential from
  ``JWKS_RETRY_MIN_SECONDS`` up to ``JWKS_RETRY_MAX_SECONDS``, with jitter so replicas do not retry in
  step — during which no request, stale-key refresh or unknown ``kid`` fetches from it: requests go on
  with the cached keys (or fail fast when there are none). So the fetches an unreachable provider sees
  are bounded whatever the traffic (issue 11: 298 fetches in 2.6 s), one at a time per issuer, and the
  warning is logged once per failure streak and then at most every :data:`WARN_EVERY_SECONDS`.
* Readiness: :meth:`JwksCache.ready` says whether at least one trusted issuer has usable keys (fresh,
  or stale within ``JWKS_MAX_STALE_SECONDS``): ``/readyz`` is 503 without any, 200 with cached keys
  while the provider is down.
* Only verification keys are loaded: private key material, ``use`` other than ``sig``, RSA keys under
  2048 bits and unknown key types are skipped.
* Redis is not trusted with keys: only the gateway's Redis user may write ``gateway:*``
  (svckit.redisacl), but a Redis shared with a wider credential (``externalRedis.sharedCredential``),
  or anyone holding the gateway's, could plant a key set there that would let its author sign tokens
  for anyone. A copy is stored with an HMAC-SHA256 under ``GATEWAY_CACHE_SECRET`` (the gateway's
  alone) over the issuer and the document; a copy whose MAC does not verify is ignored
  (``gateway_jwks_cache_total{layer="redis",result="rejected"}``, and a warning) and the provider
  asked instead. Without the setting each process draws a key of its own, so replicas do not share
  copies (each fetches once at start).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from jwt.exceptions import InvalidKeyError
from redis.asyncio import Redis
from svckit.clock import SYSTEM_CLOCK, Clock
from svckit.redisguard import RedisGuard

from . import metrics
from .issuers import IssuerConfig
from .settings import GatewaySettings

log = logging.getLogger("gateway.jwks")

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey

_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?", re.IGNORECASE)
MAX_JWKS_BYTES = 512 * 1024
MIN_RSA_BITS = 2048
EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}


class KeysUnavailable(Exception):
    """No usable key set for an issuer (provider unreachable and nothing cached)."""


class UnknownKey(Exception):
    """The issuer's current key set has no key with this ``kid`` (after the permitted refresh)."""


@dataclass(frozen=True, slots=True)
class Jwk:
    kid: str | None
    alg: str | None
    key: PublicKey

    def suits(self, alg: str) -> bool:
        """The key type must match the algorithm family (and the JWK's own ``alg``, when it has one)."""
        if self.alg is not None and self.alg != alg:
            return False
        key = self.key
        if alg.startswith(("RS", "PS")):
            return isinstance(key, rsa.RSAPublicKey)
        if alg in EC_CURVES:
            return isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == EC_CURVES[alg]
        if alg == "EdDSA":
            return isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
        return False


@dataclass(slots=True)
class KeySet:
    keys: dict[str, Jwk]
    anonymous: list[Jwk]  # keys without a kid (only usable when they are the only candidate)
    fetched_at: float  # wall clock: when the provider served it (travels through Redis)
    ttl: float
    jwks_uri: str

    def fresh(self, now: float) -> bool:
        return now < self.fetched_at + self.ttl


def parse_jwk(entry: object) -> Jwk | None:
    if not isinstance(entry, dict):
        return None
    if "d" in entry or entry.get("use", "sig") != "sig":
        return None
    ops = entry.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None
    kty = entry.get("kty")
    text = json.dumps(entry)
    try:
        if kty == "RSA":
            key: Any = RSAAlgorithm.from_jwk(text)
            if not isinstance(key, rsa.RSAPublicKey) or key.key_size < MIN_RSA_BITS:
                return None
        elif kty == "EC":
            key = ECAlgorithm.from_jwk(text)
            if not isinstance(key, ec.EllipticCurvePublicKey):
                return None
        elif kty == "OKP":
            key = OKPAlgorithm.from_jwk(text)
            if not isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
                return None
        else:
            return None
    except (InvalidKeyError, ValueError, TypeError, KeyError):
        return None
    kid = entry.get("kid")
    alg = entry.get("alg")
    return Jwk(kid if isinstance(kid, str) else None, alg if isinstance(alg, str) else None, key)


def parse_jwks(document: object, *, fetched_at: float, ttl: float, jwks_uri: str) -> KeySet:
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError("the JWKS document has no 'keys' list")
    keys: dict[str, Jwk] = {}
    anonymous: list[Jwk] = []
    for entry in entries:
        jwk = parse_jwk(entry)
        if jwk is None:
            continue
        if jwk.kid is None:
            anonymous.append(jwk)
        else:
            keys.setdefault(jwk.kid, jwk)
    if not keys and not anonymous:
        raise ValueError("the JWKS document holds no usable verification key")
    return KeySet(keys, anonymous, fetched_at, ttl, jwks_uri)


def ttl_from(cache_control: str | None, settings: GatewaySettings) -> float:
    match = _MAX_AGE.search(cache_control or "")
    if match is None or "no-store" in (cache_control or "").lower():
        seconds = settings.jwks_default_ttl_seconds
    else:
        seconds = int(match.group(1))
    return float(min(max(seconds, settings.jwks_min_ttl_seconds), settings.jwks_max_ttl_seconds))


@dataclass(slots=True)
class IssuerKeys:
    """Cache state of one issuer."""

    config: IssuerConfig
    keyset: KeySet | None = None
    raw: Any = None  # the JWKS document of ``keyset`` (stored in Redis as-is)
    inflight: asyncio.Task[None] | None = None
    next_unknown_refresh: float = 0.0  # monotonic
    redis_key_suffix: str = field(default="")
    failures: int = 0  # consecutive failed fetches
    retry_at: float = 0.0  # monotonic: no fetch from this issuer before (back-off after a failure)
    warned_at: float = float("-inf")  # monotonic: when the last failure warning was logged
    unwarned: int = 0  # failures since that warning
    lease_wait_until: float = 0.0  # monotonic: another replica renews the keys; look at Redis then
    lease_waited: bool = False  # the last renewal found the lease held: the next load says how it ended


WARN_EVERY_SECONDS = 60.0
#: After another replica took the refresh lease: when to look for the copy it leaves in Redis.
LEASE_RETRY_SECONDS = 0.5


class JwksCache:
    def __init__(
        self,
        settings: GatewaySettings,
        issuers: dict[str, IssuerConfig],
        redis: RedisGuard | None,
        session: aiohttp.ClientSession,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.redis = redis
        self.session = session
        self.state = {issuer: IssuerKeys(config) for issuer, config in issuers.items()}
        self._timeout = aiohttp.ClientTimeout(total=settings.jwks_fetch_timeout_seconds)
        self._mac_key = settings.gateway_cache_key or secrets.token_bytes(32)

    # --- look-up (hot path) ------------------------------------------------------------------

    async def key_for(self, issuer: str, kid: str | None, alg: str) -> Jwk:
        state = self.state[issuer]
        now = self.clock.time()
        keyset = state.keyset
        if keyset is None or now > keyset.fetched_at + self.settings.jwks_max_stale_seconds:
            metrics.jwks_cache.labels("memory", "miss").inc()
            if self._backing_off(state):
                raise KeysUnavailable(issuer)  # fail fast: the provider failed a moment ago
            await self._refresh(state, unknown_kid=None)
            keyset = state.keyset
            if keyset is None or self.clock.time() > keyset.fetched_at + self.settings.jwks_max_stale_seconds:
                raise KeysUnavailable(issuer)
        elif not keyset.fresh(now):
            self._refresh_in_background(state)
        found = self._pick(keyset, kid, alg)
        if found is not None:
            metrics.jwks_cache.labels("memory", "hit").inc()
            return found
        metrics.jwks_cache.labels("memory", "miss").inc()
        if kid is None:
            raise UnknownKey("no kid")
        if state.inflight is None and (
            self.clock.monotonic() < state.next_unknown_refresh or self._backing_off(state)
        ):
            raise UnknownKey(kid)
        await self._refresh(state, unknown_kid=kid)
        keyset = state.keyset
        found = self._pick(keyset, kid, alg) if keyset is not None else None
        if found is None:
            raise UnknownKey(kid)
        return found

    @staticmethod
    def _pick(keyset: KeySet, kid: str | None, alg: str) -> Jwk | None:
        if kid is not None:
            jwk = keyset.keys.get(kid)
            return jwk if jwk is not None and jwk.suits(alg) else None
        candidates = [jwk for jwk in (*keyset.keys.values(), *keyset.anonymous) if jwk.suits(alg)]
        return candidates[0] if len(candidates) == 1 else None

    # --- refresh (single-flight) -------------------------------------------------------------

    def _backing_off(self, state: IssuerKeys) -> bool:
        return self.clock.monotonic() < state.retry_at

    def _refresh_in_background(self, state: IssuerKeys) -> None:
        if (
            state.inflight is None
            and not self._backing_off(state)
            and self.clock.monotonic() >= state.lease_wait_until
        ):
            self._start(state, unknown_kid=None)

    def _start(self, state: IssuerKeys, unknown_kid: str | None) -> asyncio.Task[None]:
        """The issuer's one load in flight, started now if there is none (set synchronously, so that
        every request of the same event-loop turn finds it and none starts another)."""
        if state.inflight is None:
            task = asyncio.ensure_future(self._load(state, unknown_kid))
            state.inflight = task
            task.add_done_callback(lambda _: setattr(state, "inflight", None))
        return state.inflight

    async def _refresh(self, state: IssuerKeys, unknown_kid: str | None) -> None:
        if unknown_kid is not None:
            state.next_unknown_refresh = self.clock.monotonic() + self.settings.jwks_refetch_cooldown_seconds
        await asyncio.shield(self._start(state, unknown_kid))

    async def _load(self, state: IssuerKeys, unknown_kid: str | None) -> None:
        """Redis first (another replica may already hold newer keys), then the provider."""
        waited, state.lease_waited = state.lease_waited, False
        copy = await self._from_redis(state)
        current = state.keyset
        now = self.clock.time()
        if copy is not None and (current is None or copy[0].fetched_at > current.fetched_at):
            usable = copy[0].fresh(now) and (unknown_kid is None or unknown_kid in copy[0].keys)
            if usable or current is None:
                state.keyset, state.raw = copy
                if usable:
                    metrics.jwks_cache.labels("redis", "hit").inc()
                    if waited:
                        metrics.jwks_lease.labels("handed_off").inc()
                    self._update_age(state)
                    return
        metrics.jwks_cache.labels("redis", "miss").inc()
        lease = None
        if unknown_kid is None and current is not None and self.usable(state):
            lease = await self._take_lease(state)
            if lease is False:  # another replica is renewing them: its copy will be in Redis
                metrics.jwks_lease.labels("held").inc()
                state.lease_waited = True
                state.lease_wait_until = self.clock.monotonic() + LEASE_RETRY_SECONDS
                return
            if lease and waited:  # the holder's lease ended and it left no copy: renewed here
                metrics.jwks_lease.labels("lapsed").inc()
                log.info(
                    "the replica renewing the signing keys left no copy in Redis (its fetch failed, or "
                    "it stopped); renewing them here",
                    extra={"issuer": state.config.issuer},
                )
            elif lease:
                metrics.jwks_lease.labels("taken").inc()
        try:
            keyset, raw = await self._fetch(state)
        except Exception as exc:  # the provider being down must never break verification
            outcome = "invalid" if isinstance(exc, ValueError) else "error"
            metrics.jwks_fetch.labels(state.config.issuer, outcome).inc()
            self._failed(state, exc)
            self._update_age(state)
            if lease:
                await self._release_lease(state)
            return
        metrics.jwks_fetch.labels(state.config.issuer, "ok").inc()
        if state.failures:
            log.info(
                "signing keys fetched again",
                extra={"issuer": state.config.issuer, "failed_attempts": state.failures},
            )
        state.failures, state.retry_at, state.unwarned = 0, 0.0, 0
        state.warned_at = float("-inf")
        state.keyset, state.raw = keyset, raw
        self._update_age(state)
        await self._to_redis(state)
        if lease:
            await self._release_lease(state)

    def _failed(self, state: IssuerKeys, exc: Exception) -> None:
        """Back off (exponential, capped, jittered) and warn — once per streak, then rarely."""
        state.failures += 1
        settings = self.settings
        ceiling = min(
            settings.jwks_retry_max_seconds, settings.jwks_retry_min_seconds * 2 ** (state.failures - 1)
        )
        delay = ceiling * random.uniform(0.5, 1.0)
        now = self.clock.monotonic()
        state.retry_at = now + delay
        state.unwarned += 1
        if now - state.warned_at >= WARN_EVERY_SECONDS:
            log.warning(
                "fetching signing keys failed; cached keys stay in use",
                extra={
                    "issuer": state.config.issuer,
                    "error": f"{type(exc).__name__}: {exc}"[:200],
                    "failures": state.unwarned,
                    "retry_in": round(delay, 1),
                    "cached_keys": state.keyset is not None,
                },
            )
            state.warned_at, state.unwarned = now, 0

    def usable(self, state: IssuerKeys) -> bool:
        keyset = state.keyset
        return (
            keyset is not None
            and self.clock.time() <= keyset.fetched_at + self.settings.jwks_max_stale_seconds
        )

    def maintain(self) -> None:
        """Refresh, in the background, every issuer without fresh keys whose back-off has passed.

        Called every second by the gateway: keys missing at start-up (the provider was down) arrive
        once it is back without waiting for a request — a gateway that is not ready gets none — and
        stale keys are renewed even when no token of that issuer comes by."""
        now = self.clock.time()
        for state in self.state.values():
            if state.keyset is None or not state.keyset.fresh(now):
                self._refresh_in_background(state)

    def ready(self) -> list[str]:
        """The trusted issuers whose keys can verify a token now (fresh, or stale within the bound)."""
        return [issuer for issuer, state in self.state.items() if self.usable(state)]

    async def _fetch(self, state: IssuerKeys) -> tuple[KeySet, Any]:
        jwks_uri = state.config.jwks_uri
        if jwks_uri is None:
            discovery = await self._get_json(state.config.discovery_url)
            if not isinstance(discovery, dict):
                raise ValueError("the discovery document is not a JSON object")
            if discovery.get("issuer") != state.config.issuer:
                raise ValueError("the discovery document names a different issuer")
            jwks_uri = discovery.get("jwks_uri")
            if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
                raise ValueError("the discovery document has no usable jwks_uri")
        async with self.session.get(jwks_uri, timeout=self._timeout, allow_redirects=False) as response:
            if response.status != 200:
                raise aiohttp.ClientResponseError(
                    response.request_info, (), status=response.status, message="JWKS fetch failed"
                )
            body = await response.content.read(MAX_JWKS_BYTES + 1)
            if len(body) > MAX_JWKS_BYTES:
                raise ValueError("the JWKS document is too large")
            ttl = ttl_from(response.headers.get("Cache-Control"), self.settings)
        document = json.loads(body)
        return parse_jwks(document, fetched_at=self.clock.time(), ttl=ttl, jwks_uri=jwks_uri), document

    async def _get_json(self, url: str) -> Any:
        async with self.session.get(url, timeout=self._timeout, allow_redirects=False) as response:
            if response.status != 200:
                raise aiohttp.ClientResponseError(
                    response.request_info, (), status=response.status, message="discovery failed"
                )
            body = await response.content.read(MAX_JWKS_BYTES + 1)
            if len(body) > MAX_JWKS_BYTES:
                raise ValueError("the discovery document is too large")
            return json.loads(body)

    # --- Redis layer -------------------------------------------------------------------------

    def _redis_key(self, state: IssuerKeys) -> str:
        assert self.redis is not None
        return self.redis.key("gateway", "jwks", state.config.issuer)

    def _mac(self, issuer: str, document: str) -> str:
        # surrogatepass: a copy from Redis may hold lone surrogates (valid JSON); it then fails the MAC
        text = document.encode("utf-8", "surrogatepass")
        message = b"tsp-gateway-jwks-v1\n%b\n%b" % (issuer.encode(), text)
        return hmac.new(self._mac_key, message, hashlib.sha256).hexdigest()

    async def _from_redis(self, state: IssuerKeys) -> tuple[KeySet, Any] | None:
        if self.redis is None:
            return None
        key = self._redis_key(state)
        raw = await self.redis.call(lambda client: client.get(key))
        if raw is None:
            return None
        try:
            envelope = json.loads(raw)
            document, mac = envelope["payload"], envelope["mac"]
            if not isinstance(document, str) or not isinstance(mac, str):
                raise TypeError("payload and mac are strings")
        except (ValueError, KeyError, TypeError):
            document = mac = ""
        expected = self._mac(state.config.issuer, document)
        if not hmac.compare_digest(mac.encode("utf-8", "surrogatepass"), expected.encode()):
            metrics.jwks_cache.labels("redis", "rejected").inc()
            log.warning(
                "ignored a key set in Redis that this gateway's MAC does not vouch for: written by "
                "something else, or GATEWAY_CACHE_SECRET differs between replicas",
                extra={"issuer": state.config.issuer},
            )
            return None
        try:
            stored = json.loads(document)
            keyset = parse_jwks(
                stored["jwks"],
                fetched_at=float(stored["fetched_at"]),
                ttl=float(stored["ttl"]),
                jwks_uri=str(stored["jwks_uri"]),
            )
        except (ValueError, KeyError, TypeError):
            return None
        if self.clock.time() > keyset.fetched_at + self.settings.jwks_max_stale_seconds:
            return None
        return keyset, stored["jwks"]

    def _lease_key(self, state: IssuerKeys) -> str:
        assert self.redis is not None
        return self.redis.key("gateway", "jwks-refresh", state.config.issuer)

    async def _take_lease(self, state: IssuerKeys) -> bool | None:
        """The right to renew the issuer's keys for every replica (see the module docstring): True
        taken, False another replica holds it, None no lease to be had (no Redis, or it failed:
        renew as if alone)."""
        if self.redis is None:
            return None
        key = self._lease_key(state)
        # as long as the holder's fetch may take (discovery, then the key set: a timeout each) and a
        # second more, so that it is still the holder's when it lets it go (a SET over a lease that
        # expired meanwhile would end another replica's: the gateway's Redis user has no DEL)
        lifetime = int((2 * self.settings.jwks_fetch_timeout_seconds + 1) * 1000)

        async def run(client: Redis) -> bool:
            return bool(await client.set(key, "1", nx=True, px=lifetime))

        taken: bool | None = await self.redis.call(run)
        return taken

    async def _release_lease(self, state: IssuerKeys) -> None:
        """Let the lease go at once (the next renewal, a TTL later, must not wait for it to expire).
        A ``SET`` that expires in a millisecond: the gateway's Redis user has no ``DEL``."""
        if self.redis is None:
            return
        key = self._lease_key(state)
        await self.redis.call(lambda client: client.set(key, "0", px=1))

    async def _to_redis(self, state: IssuerKeys) -> None:
        if self.redis is None or state.keyset is None:
            return
        keyset = state.keyset
        document = json.dumps(
            {
                "jwks": state.raw,
                "fetched_at": keyset.fetched_at,
                "ttl": keyset.ttl,
                "jwks_uri": keyset.jwks_uri,
            }
        )
        payload = json.dumps({"payload": document, "mac": self._mac(state.config.issuer, document)})
        key = self._redis_key(state)
        expire = int(self.settings.jwks_max_stale_seconds)
        await self.redis.call(lambda client: client.set(key, payload, ex=expire))

    # --- warm-up and bookkeeping -------------------------------------------------------------

    def _update_age(self, state: IssuerKeys) -> None:
        if state.keyset is not None:
            metrics.jwks_key_age.labels(state.config.issuer).set(
                max(0.0, self.clock.time() - state.keyset.fetched_at)
            )

    def update_ages(self) -> None:
        for state in self.state.values():
            self._update_age(state)

    async def warm(self) -> None:
        """Load every issuer's keys at start-up (Redis first), so the first request does not wait."""
        await asyncio.gather(*(self._refresh(state, None) for state in self.state.values()))

    async def close(self) -> None:
        for state in self.state.values():
            if state.inflight is not None:
                state.inflight.cancel()
