"""Signing keys: generation, encryption at rest, rotation schedule and the published JWKS.

Private keys are stored in Postgres encrypted with AES-256-GCM under a key derived (HKDF-SHA256)
from ``IDENTITY_KEY_ENCRYPTION_KEY``; the key id is the associated data, so a ciphertext cannot be
moved to another row. Rotation follows the usual safe schedule: a new key is *published* in the
JWKS ``grace`` seconds before it *signs* (so verifiers' caches learn it first), and the key it
replaces stays published until every token it signed has expired.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import jwt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from svckit.keyring import KeyRing

SUPPORTED_ALGS = ("RS256", "ES256")
Conn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class KeyEncryptionError(RuntimeError):
    """The stored private key cannot be decrypted with the configured key-encryption key."""


class KeyCipher:
    """AES-256-GCM with keys derived from the environment secret; nonce is stored with the data.

    ``IDENTITY_KEY_ENCRYPTION_KEY`` is a key ring (:mod:`svckit.keyring`) so that it can rotate: the
    first key encrypts new signing keys, every key decrypts. A blob encrypted with a named key says
    which (``MAGIC``, the name's length and the name before the nonce), so decryption tries that key
    only; one encrypted with an unnamed key (a single value, as in earlier releases) is exactly the
    format of before (nonce and ciphertext), which every key is tried on. A signing key is decrypted
    while it is published, so the old encryption key may go once every key it encrypted is retired
    and unpublished (``rotate-keys``, then the publication's end: docs/runbook.md).
    """

    #: before a named key's blob: no legacy blob's random nonce starts with it in practice (2^-64), and
    #: a blob that does is still tried the legacy way when the named way fails
    MAGIC = b"\x00tspkek\x01"

    def __init__(self, secret: bytes | KeyRing) -> None:
        ring = secret if isinstance(secret, KeyRing) else KeyRing.single(secret)
        self._ring = ring.derive(
            lambda key: HKDF(
                algorithm=hashes.SHA256(), length=32, salt=None, info=b"tsp-identity-signing-keys-v1"
            ).derive(key)
        )

    def encrypt(self, plaintext: bytes, kid: str) -> bytes:
        nonce = os.urandom(12)
        sealed = nonce + AESGCM(self._ring.key).encrypt(nonce, plaintext, kid.encode())
        name = self._ring.kid.encode()
        return self.MAGIC + bytes([len(name)]) + name + sealed if name else sealed

    def decrypt(self, blob: bytes, kid: str) -> bytes:
        for sealed, keys in self._readings(blob):
            for key in keys:
                try:
                    return AESGCM(key).decrypt(sealed[:12], sealed[12:], kid.encode())
                except (InvalidTag, ValueError):
                    continue  # the next key, or the error below
        raise KeyEncryptionError(
            f"cannot decrypt signing key {kid!r}: IDENTITY_KEY_ENCRYPTION_KEY does not match (none of its "
            "keys encrypted it)"
        )

    def _readings(self, blob: bytes) -> list[tuple[bytes, tuple[bytes, ...]]]:
        """The ways to read ``blob``: as a named key's (that key), then as a legacy one (every key)."""
        everything = tuple(key for _, key in self._ring.keys)
        readings: list[tuple[bytes, tuple[bytes, ...]]] = []
        if blob.startswith(self.MAGIC) and len(blob) > len(self.MAGIC):
            size = blob[len(self.MAGIC)]
            start = len(self.MAGIC) + 1
            name = blob[start : start + size].decode("ascii", "replace")
            readings.append((blob[start + size :], self._ring.keys_for(name)))
        readings.append((blob, everything))
        return readings


def generate_private_key(alg: str) -> PrivateKey:
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(f"unsupported signing algorithm {alg!r}; use one of {SUPPORTED_ALGS}")


def public_jwk(key: PrivateKey, kid: str, alg: str) -> dict[str, Any]:
    """The public half as a JWK (RFC 7517) with ``kid``, ``alg`` and ``use=sig``."""
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        text = jwt.algorithms.RSAAlgorithm.to_jwk(public)
    else:
        text = jwt.algorithms.ECAlgorithm.to_jwk(public)
    jwk: dict[str, Any] = json.loads(text)
    jwk.update({"kid": kid, "alg": alg, "use": "sig"})
    return jwk


def jwk_thumbprint_kid(jwk: dict[str, Any]) -> str:
    """RFC 7638 thumbprint of the public key, used as the key id (stable, collision-free)."""
    required = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y")}[jwk["kty"]]
    canonical = json.dumps({k: jwk[k] for k in required}, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    jwk: dict[str, Any]
    private_key: PrivateKey
    signs_from: datetime
    retired_at: datetime | None
    publish_until: datetime | None

    def signs_at(self, now: datetime) -> bool:
        return self.signs_from <= now and (self.retired_at is None or now < self.retired_at)

    def published_at(self, now: datetime) -> bool:
        return self.publish_until is None or now < self.publish_until


def _new_key_row(alg: str, cipher: KeyCipher) -> tuple[str, dict[str, Any], bytes]:
    key = generate_private_key(alg)
    jwk = public_jwk(key, "", alg)
    kid = jwk_thumbprint_kid(jwk)
    jwk["kid"] = kid
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return kid, jwk, cipher.encrypt(pem, kid)


async def ensure_signing_key(conn: Conn, alg: str, cipher: KeyCipher) -> str | None:
    """Create a key that signs immediately if no key signs now; return its kid (None if not needed).

    Every replica calls this at start, one at a time (the table lock). "Now" is the moment the lock
    is held (``clock_timestamp()``), not the transaction's start (``now()``): a replica whose
    transaction began before another's, but that got the lock second, found the key the other had
    just made "not signing yet" (it signs from the other's later start) and made a second one, which
    stayed published and never signed."""
    async with conn.transaction():
        await conn.execute("LOCK TABLE signing_keys IN SHARE ROW EXCLUSIVE MODE")
        exists = await conn.fetchval(
            """SELECT 1 FROM signing_keys, clock_timestamp() AS now
               WHERE signs_from <= now AND (retired_at IS NULL OR retired_at > now)"""
        )
        if exists:
            return None
        kid, jwk, blob = _new_key_row(alg, cipher)
        await conn.execute(
            """INSERT INTO signing_keys (kid, alg, public_jwk, private_key, signs_from)
               VALUES ($1, $2, $3::jsonb, $4, clock_timestamp())""",
            kid,
            alg,
            json.dumps(jwk),
            blob,
        )
        return kid


async def rotate_keys(
    conn: Conn,
    alg: str,
    cipher: KeyCipher,
    *,
    grace_seconds: int,
    max_token_ttl_seconds: int,
) -> tuple[str, datetime]:
    """Publish a new key that signs from ``now + grace``; schedule the retirement of the others.

    Every key that signs now (or is scheduled to) stops signing when the new one starts and stays in
    the JWKS for ``max_token_ttl_seconds`` (+ a minute of leeway) after that. Returns the new kid and
    the instant it starts signing.
    """
    async with conn.transaction():
        await conn.execute("LOCK TABLE signing_keys IN SHARE ROW EXCLUSIVE MODE")
        now: datetime = await conn.fetchval("SELECT now()")
        starts = now + timedelta(seconds=grace_seconds)
        kid, jwk, blob = _new_key_row(alg, cipher)
        await conn.execute(
            """UPDATE signing_keys
               SET retired_at = $1, publish_until = $1 + make_interval(secs => $2)
               WHERE retired_at IS NULL OR retired_at > $1""",
            starts,
            float(max_token_ttl_seconds + 60),
        )
        await conn.execute(
            """INSERT INTO signing_keys (kid, alg, public_jwk, private_key, signs_from)
               VALUES ($1, $2, $3::jsonb, $4, $5)""",
            kid,
            alg,
            json.dumps(jwk),
            blob,
            starts,
        )
        return kid, starts


#: a private key as stored (its kid and sealed blob) → the key it decrypts and parses to
Parsed = dict[tuple[str, bytes], PrivateKey]


async def load_keys(conn: Conn, cipher: KeyCipher, parsed: Parsed | None = None) -> list[SigningKey]:
    """Every key still published, newest first, with private keys decrypted.

    ``parsed``: the keys an earlier load decrypted, by kid and sealed blob; a key stored as it was
    then is taken from there, not decrypted and parsed again (an RSA-2048 key's parse checks the key:
    ~40 ms of CPU, once a second per published key in the suite's providers, 40% of the pod's CPU
    request; :class:`identity.keystore.KeyStore` reloads every ``KEY_REFRESH_SECONDS``). It is left
    holding exactly the keys this load returned, or as it was if the load fails."""
    rows = await conn.fetch(
        """SELECT kid, alg, public_jwk, private_key, signs_from, retired_at, publish_until
           FROM signing_keys
           WHERE publish_until IS NULL OR publish_until > now()
           ORDER BY signs_from DESC, created_at DESC"""
    )
    keys = []
    known = parsed or {}
    found: Parsed = {}
    for row in rows:
        stored = (row["kid"], bytes(row["private_key"]))
        private = known.get(stored)
        if private is None:
            pem = cipher.decrypt(stored[1], row["kid"])
            loaded = serialization.load_pem_private_key(pem, password=None)
            if not isinstance(loaded, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
                raise KeyEncryptionError(f"signing key {row['kid']!r} has an unsupported type")
            private = loaded
        found[stored] = private
        jwk = row["public_jwk"]
        keys.append(
            SigningKey(
                kid=row["kid"],
                alg=row["alg"],
                jwk=json.loads(jwk) if isinstance(jwk, str) else dict(jwk),
                private_key=private,
                signs_from=row["signs_from"],
                retired_at=row["retired_at"],
                publish_until=row["publish_until"],
            )
        )
    if parsed is not None:
        parsed.clear()
        parsed.update(found)
    return keys


def new_secret(nbytes: int = 32) -> str:
    return secrets.token_urlsafe(nbytes)
