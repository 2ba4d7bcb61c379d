"""Revoked access tokens: a deny set fed by the providers' revocation stream.

The gateway verifies tokens offline (and remembers verified ones), so a token revoked at the provider
would keep passing until ``exp``. Providers therefore publish revocations to the Redis stream
``<REDIS_KEY_PREFIX>revocations`` (entries ``{iss, jti, exp, reason}``, docs/CONTRACTS.md, "Revocation
events"); every gateway worker process reads it with a blocking ``XREAD`` on a connection of its own
and keeps a deny set ``(iss, jti) → exp`` in memory, which :class:`gateway.tokens.TokenVerifier`
consults on every request, verified-token cache hits included (one dict look-up, no Redis round trip).

* A new entry reaches every worker within milliseconds (``XREAD BLOCK`` returns as soon as it is
  written); the issue-14 bound is 2 s.
* On start, and after losing Redis, a worker reads the stream from the beginning (``0``): what was
  revoked while it was away is learnt as soon as it reconnects. The provider re-publishes everything
  still unexpired when Redis lost the stream itself.
* An entry is kept until the token's ``exp`` plus the issuer's clock leeway (the token is refused by
  its own expiry after that). Entries for issuers the gateway does not trust are ignored, as are
  malformed ones.
* The stream is trusted, so only the provider may write it: each component connects to Redis as a
  user of its own (svckit.redisacl), the gateways' may only read this key (``%R~``) and the other
  services' may not touch it. A writer could do more than make the gateway refuse tokens: one entry
  with the last possible id ends every later ``XADD`` and leaves each reader waiting after it, and a
  stream deleted under its ``revocations:complete`` marker loses what it held, so revoked tokens
  would pass again.
* A *revocation cutoff* is an entry without ``jti``: ``{iss, issued_before, until, reason}`` (unix
  seconds; the bundled provider's ``after-restore`` publishes one, reason ``restore``). Every token of
  ``iss`` whose ``iat`` is before ``issued_before`` — or that has no ``iat`` — is refused until
  ``until`` (by then each such token has expired: the provider sets it to the cutoff plus the
  longest access-token lifetime plus the largest leeway). Like Keycloak's not-before push, it reaches
  tokens no ledger knows (those issued after a restored backup). The check is one dict look-up by
  issuer (empty unless a cutoff is held) and a comparison, on every request, cache hits included.
  ``iat`` and ``issued_before`` are both written by the provider's side (its replica's clock and its
  database's), so no gateway clock enters that comparison; the gateway's clock only ends the cutoff
  at ``until``. Gateways of before this entry shape read it as malformed (no ``jti``) and ignore it
  (``gateway_revocations_received_total{outcome="ignored"}``).
* While Redis is unreachable the deny set keeps what it has (revocations published meanwhile arrive
  on reconnection); the reader retries with capped exponential back-off and jitter: the first retry
  within ``REDIS_RETRY_SECONDS``, doubling up to ``max_retry_seconds`` (5 s by default), so a long
  outage is not a connection attempt every second from every gateway process. It logs the outage's
  start, then every :data:`LOG_EVERY`-th failed attempt, and one line when it reads again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import Counter, Gauge
from redis.asyncio import Redis
from svckit.redisguard import REDIS_ERRORS, RedisGuard, describe_redis_error
from svckit.tasks import backoff_delay

log = logging.getLogger("gateway.revocations")

STREAM = "revocations"
#: during an outage, one warning for the first failed attempt and then one for every this many
LOG_EVERY = 10
MAX_JTI_LENGTH = 255
#: 9999-12-31T23:59:59Z: a time beyond it in an entry is malformed (gateway.tokens.MAX_NUMERIC_DATE)
MAX_UNIX_SECONDS = 253_402_300_799

received = Counter(
    "gateway_revocations_received_total",
    "Revocation events read from the stream, by outcome (added, expired, ignored).",
    ["outcome"],
)
feed_errors = Counter(
    "gateway_revocation_feed_errors_total",
    "Times the revocation stream reader lost Redis (it reconnects and reads from the start).",
)
denied_tokens = Gauge(
    "gateway_revoked_tokens",
    "Revoked, unexpired access tokens this gateway refuses (largest deny set among its workers).",
    multiprocess_mode="livemax",
)


#: The most cutoffs held per issuer (one per restore within the longest token lifetime: a handful at
#: most); beyond it the one ending first is dropped, never the newest
MAX_CUTOFFS_PER_ISSUER = 16


class DenyList:
    """``(iss, jti) → keep until`` (unix seconds): revoked tokens, refused until they expire; and per
    issuer its revocation cutoffs, ``(issued before, until)``: tokens issued before, refused until."""

    def __init__(self, clock: Callable[[], float] = time.time, max_entries: int = 1_000_000) -> None:
        self._entries: dict[tuple[str, str], float] = {}
        self._cutoffs: dict[str, tuple[tuple[float, float], ...]] = {}  # issuer → (issued_before, until)…
        self.clock = clock
        self.max_entries = max_entries

    def add_cutoff(self, issuer: str, issued_before: float, until: float) -> bool:
        """Remember a revocation cutoff; False when it has already ended or is held already."""
        now = self.clock()
        if until <= now:
            return False
        held = tuple(c for c in self._cutoffs.get(issuer, ()) if c[1] > now)
        if any(before >= issued_before and end >= until for before, end in held):
            self._cutoffs[issuer] = held
            return False  # the same, or covered by one held (a re-read, a re-publication)
        kept = [c for c in held if not (c[0] <= issued_before and c[1] <= until)]  # covered by the new
        kept.append((issued_before, until))
        kept.sort(key=lambda c: c[1], reverse=True)  # ending last first
        self._cutoffs[issuer] = tuple(kept[:MAX_CUTOFFS_PER_ISSUER])
        return True

    def cut_off(self, issuer: str, issued_at: float | None, now: float) -> bool:
        """Is a token of ``issuer`` issued at ``issued_at`` (``None``: no ``iat``) refused by a cutoff?
        One dict look-up when the issuer has none (always, but for the minutes after a restore)."""
        cutoffs = self._cutoffs.get(issuer)
        if cutoffs is None:
            return False
        for issued_before, until in cutoffs:
            if now < until and (issued_at is None or issued_at < issued_before):
                return True
        return False

    def cutoffs(self, issuer: str) -> tuple[tuple[float, float], ...]:
        """The cutoffs held for ``issuer``, ``(issued_before, until)``, ending last first."""
        return self._cutoffs.get(issuer, ())

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, issuer: str, jti: str, keep_until: float) -> bool:
        """Remember a revocation; False when it has already expired (nothing to refuse)."""
        now = self.clock()
        if keep_until <= now:
            return False
        if len(self._entries) >= self.max_entries:
            self.purge(now)
            if len(self._entries) >= self.max_entries:
                log.error(
                    "revocation deny set full; dropping the oldest entry", extra={"max": self.max_entries}
                )
                del self._entries[next(iter(self._entries))]
        key = (issuer, jti)
        self._entries[key] = max(keep_until, self._entries.get(key, 0.0))
        return True

    def denied(self, issuer: str, jti: str) -> bool:
        """O(1): is this token revoked? (An entry past its time may linger; its token is expired.)"""
        return (issuer, jti) in self._entries

    def purge(self, now: float | None = None) -> None:
        moment = self.clock() if now is None else now
        self._entries = {key: until for key, until in self._entries.items() if until > moment}
        cutoffs = {issuer: tuple(c for c in held if c[1] > moment) for issuer, held in self._cutoffs.items()}
        self._cutoffs = {issuer: held for issuer, held in cutoffs.items() if held}
        denied_tokens.set(len(self._entries))


def _text(fields: Mapping[bytes, bytes], name: bytes) -> str | None:
    value = fields.get(name)
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _seconds(text: str | None) -> float | None:
    """A unix time from the stream: a finite number from 0 to year 9999, else ``None`` (malformed)."""
    try:
        value = float(text or "")
    except ValueError:
        return None
    if not math.isfinite(value) or not 0 <= value <= MAX_UNIX_SECONDS:
        return None
    return value


class RevocationFeed:
    """Reads the stream into a :class:`DenyList`; one per worker process (started in the lifespan)."""

    def __init__(
        self,
        redis: RedisGuard,
        deny: DenyList,
        leeways: Mapping[str, int],
        *,
        block_seconds: float = 5.0,
        purge_seconds: float = 60.0,
        max_retry_seconds: float = 5.0,
    ) -> None:
        self.redis = redis
        self.deny = deny
        self.leeways = dict(leeways)  # trusted issuer → its clock leeway (seconds)
        self.block_ms = max(1, int(block_seconds * 1000))
        self.read_timeout = block_seconds + max(redis.timeout, 1.0)
        self.purge_seconds = purge_seconds
        self.max_retry_seconds = max(max_retry_seconds, redis.retry_seconds)
        self.stream = redis.key(STREAM)
        self.last_id = "0"
        self.connected = asyncio.Event()  # set while reading (tests and readiness may wait on it)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="gateway-revocation-feed")

    async def stop(self, timeout: float = 2.0) -> None:
        """Cancel the reader, bounded: a cancellation that lands as a socket timeout fires inside
        redis-py can surface as ``TimeoutError`` (and look like Redis failing), so the loop also
        checks ``_stopping`` and shutdown never waits on it for more than ``timeout``."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        deadline = time.monotonic() + timeout
        while not task.done() and time.monotonic() < deadline:
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)
        if not task.done():
            log.warning("the revocation stream reader did not stop in time")
        elif not task.cancelled() and task.exception() is not None:
            log.warning("the revocation stream reader ended with an error", exc_info=task.exception())

    def apply(self, fields: Mapping[bytes, bytes]) -> str:
        """Add one stream entry to the deny set; returns the outcome (a metric label)."""
        issuer, jti, exp_text = _text(fields, b"iss"), _text(fields, b"jti"), _text(fields, b"exp")
        if issuer is None or issuer not in self.leeways:
            return "ignored"
        if jti is None and b"issued_before" in fields:
            return self._apply_cutoff(issuer, fields)
        if not jti or len(jti) > MAX_JTI_LENGTH:
            return "ignored"
        try:
            exp = float(exp_text or "")
        except ValueError:
            return "ignored"
        if not math.isfinite(exp):
            return "ignored"
        added = self.deny.add(issuer, jti, exp + self.leeways[issuer])
        return "added" if added else "expired"

    def _apply_cutoff(self, issuer: str, fields: Mapping[bytes, bytes]) -> str:
        """A revocation cutoff (an entry without ``jti``; the module docstring)."""
        issued_before = _seconds(_text(fields, b"issued_before"))
        until = _seconds(_text(fields, b"until"))
        if issued_before is None or until is None or until < issued_before:
            return "ignored"
        if until <= self.deny.clock():
            return "expired"
        if self.deny.add_cutoff(issuer, issued_before, until):
            log.warning(
                "revocation cutoff: tokens of this issuer issued before it are refused",
                extra={
                    "issuer": issuer,
                    "issued_before": issued_before,
                    "until": until,
                    "reason": (_text(fields, b"reason") or "")[:40],
                },
            )
        return "added"

    async def _run(self) -> None:
        next_purge = time.monotonic() + self.purge_seconds
        failures = 0  # failed attempts in a row (the outage in progress)
        down_since = 0.0
        while not self._stopping:
            client: Redis = self.redis.dedicated(self.read_timeout)
            self.last_id = "0"  # (re)connected: read everything the stream still holds
            try:
                while not self._stopping:
                    response: Any = await client.xread(
                        {self.stream: self.last_id}, count=1000, block=self.block_ms
                    )
                    self.connected.set()
                    if failures:
                        log.info(
                            "revocation stream readable again",
                            extra={
                                "attempts": failures,
                                "outage_seconds": round(time.monotonic() - down_since, 1),
                            },
                        )
                        failures = 0
                    for _stream, entries in response or []:
                        for entry_id, fields in entries:
                            received.labels(self.apply(fields)).inc()
                            self.last_id = entry_id.decode()
                    denied_tokens.set(len(self.deny))
                    if time.monotonic() >= next_purge:
                        self.deny.purge()
                        next_purge = time.monotonic() + self.purge_seconds
            except REDIS_ERRORS as exc:
                self.connected.clear()
                if self._stopping:
                    return
                feed_errors.inc()
                if failures == 0:
                    # the guard's circuit (and its one line) at the outage's start: opened again at
                    # every retry, it logged once per attempt too
                    self.redis.mark_down(exc)
                    down_since = time.monotonic()
                failures += 1
                if failures == 1 or failures % LOG_EVERY == 0:
                    log.warning(
                        "revocation stream unavailable; retrying with back-off",
                        extra={"error": describe_redis_error(exc), "attempts": failures},
                    )
            finally:
                with contextlib.suppress(*REDIS_ERRORS):
                    await client.aclose()
            if failures:
                await asyncio.sleep(backoff_delay(failures, self.redis.retry_seconds, self.max_retry_seconds))
