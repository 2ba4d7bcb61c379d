"""The process's view of the signing keys: which key signs now and what the JWKS publishes.

Keys are reloaded from Postgres periodically; because a rotated key is published ``grace`` seconds
before it signs, every replica learns it (and serves it in the JWKS) before any token carries it.

The schedule (``signs_from``, ``retired_at``, ``publish_until``) is written in the database's time
(``now()``), so it is read in the database's time too: each load measures how far this process's
clock is from the database's and applies it. Compared with the process's own clock, a replica a few
seconds behind the database found no key that signs right after the first one was made (not ready,
and a 500 at the token endpoint), and kept signing with a key a rotation had retired.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import asyncpg
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from svckit.clock import SYSTEM_CLOCK, Clock
from svckit.db import UNAVAILABLE_ERRORS, PooledQueries

from .keys import KeyCipher, Parsed, SigningKey, ensure_signing_key, load_keys

log = logging.getLogger("identity.keys")


class NoSigningKey(RuntimeError):
    """No key is valid for signing right now (run ``python -m identity rotate-keys``)."""


class KeyStore:
    def __init__(
        self, cipher: KeyCipher, alg: str, refresh_seconds: float, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.cipher = cipher
        self.alg = alg
        self.refresh_seconds = refresh_seconds
        self.clock = clock
        self._keys: list[SigningKey] = []
        self._parsed: Parsed = {}  # the keys decrypted so far, by kid and sealed blob (load_keys)
        self._loaded_at = 0.0
        self._offset = 0.0  # the database's clock minus this process's, as of the last load
        self._lock = asyncio.Lock()
        self._stale = False  # the last read failed: the keys in use are those of an earlier one

    async def start(self, pool: asyncpg.Pool | PooledQueries) -> None:
        """Make sure a key can sign, then load every published key."""
        async with pool.acquire() as conn:
            kid = await ensure_signing_key(conn, self.alg, self.cipher)
            if kid:
                log.info("created the first signing key", extra={"kid": kid, "alg": self.alg})
        await self.refresh(pool)

    async def refresh(self, pool: asyncpg.Pool | PooledQueries) -> None:
        async with pool.acquire() as conn:
            keys = await load_keys(conn, self.cipher, self._parsed)
            before = self.clock.time()
            database: datetime = await conn.fetchval("SELECT clock_timestamp()")
            after = self.clock.time()
        self._offset = database.timestamp() - (before + after) / 2
        self._keys = keys
        self._loaded_at = self.clock.monotonic()

    async def refresh_if_stale(self, pool: asyncpg.Pool | PooledQueries) -> None:
        """Read the keys again when the last read is ``refresh_seconds`` old. While the database is
        unreachable the keys last loaded stay in use (the JWKS and discovery need no database; a
        key schedule a read would change is at most an outage old), and the read is tried again
        after ``refresh_seconds``, not on every request; with none loaded yet the error is the
        caller's: the kit's 503. It was a 503 on the JWKS ``refresh_seconds`` into every outage."""
        if self.clock.monotonic() - self._loaded_at < self.refresh_seconds:
            return
        async with self._lock:
            if self.clock.monotonic() - self._loaded_at < self.refresh_seconds:
                return
            try:
                await self.refresh(pool)
            except UNAVAILABLE_ERRORS as exc:
                if not self._keys:
                    raise
                self._loaded_at = self.clock.monotonic()
                if not self._stale:
                    log.warning(
                        "signing keys could not be read again; the keys last loaded stay in use",
                        extra={"error": type(exc).__name__},
                    )
                self._stale = True
                return
            if self._stale:
                log.info("signing keys read again")
                self._stale = False

    def _now(self) -> datetime:
        """The database's time now, as far as this process can tell (the schedule's time)."""
        return datetime.fromtimestamp(self.clock.time() + self._offset, UTC)

    def signer(self, now: datetime | None = None) -> SigningKey:
        moment = now or self._now()
        for key in self._keys:
            if key.signs_at(moment):
                return key
        raise NoSigningKey("no signing key is active; run `python -m identity rotate-keys`")

    def jwks(self, now: datetime | None = None) -> dict[str, Any]:
        moment = now or self._now()
        return {"keys": [dict(key.jwk) for key in self._keys if key.published_at(moment)]}

    def public_key(self, kid: str) -> tuple[rsa.RSAPublicKey | ec.EllipticCurvePublicKey, str] | None:
        now = self._now()
        for key in self._keys:
            if key.kid == kid and key.published_at(now):
                return key.private_key.public_key(), key.alg
        return None

    @property
    def algorithms(self) -> list[str]:
        return sorted({key.alg for key in self._keys})
