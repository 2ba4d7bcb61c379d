"""Signed checkpoints of the audit chain: what is signed, with which keys, and how to read one back.

Why: the hash chain proves the records are consistent with each other, not that they are the ones
that were written — whoever holds the database owner's rights can change a record, recompute every
later hash and re-enable the append-only trigger, and the chain verifies again. A checkpoint is the
chain's head (``seq`` and its ``hash``) signed with an Ed25519 key that lives outside the database
(``AUDIT_CHECKPOINT_KEYS``, a Secret): a rewritten history no longer ends in, or passes through,
the heads that were signed, and no amount of database access can sign new ones.

A checkpoint is a JWS (RFC 7515, ``alg`` EdDSA, ``kid`` the signing key, ``typ``
:data:`JWS_TYPE`) over canonical JSON::

    {"count": 1842, "head": "<hash of record 1842>", "n": 17, "prev": "<digest of checkpoint 16>",
     "seq": 1842, "signed_at": "2026-11-23T17:05:00.000000Z"}

``n`` numbers checkpoints 1, 2, 3…; ``prev`` is the :attr:`Checkpoint.digest` (SHA-256 of the compact
JWS) of checkpoint ``n - 1`` (64 zeros for the first), so checkpoints form a chain of their own and
one that goes missing from the middle is noticed. ``count`` is the number of records up to ``seq``
(equal to it: the chain has no gaps, which the signer verified before signing).

Keys: ``AUDIT_CHECKPOINT_KEYS`` is ``kid:seed[,kid:seed…]`` — each seed the 32 bytes of an Ed25519
private key, base64url. The first signs; the others only verify (the previous key during a
rotation). Their public halves are published as a JWKS (:meth:`CheckpointKeys.jwks`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from jwt.algorithms import OKPAlgorithm

JWS_TYPE = "tsp-audit-checkpoint+jws"
GENESIS_DIGEST = "0" * 64
_KID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HASH = re.compile(r"[0-9a-f]{64}")
_FIELDS = ("count", "head", "n", "prev", "seq", "signed_at")
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")


class CheckpointKeyError(ValueError):
    """``AUDIT_CHECKPOINT_KEYS`` (or a JWKS) cannot be used; the message never holds key material."""


class InvalidCheckpoint(ValueError):
    """Not a checkpoint this platform signed: malformed, or its signature does not verify."""


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _segment(text: str) -> bytes:
    """A JWS segment: base64url in its one canonical spelling. With the unused bits of its last
    character set, it would be another string for the same bytes: another JWS (another digest, which
    the next checkpoint's ``prev`` names) that still verifies."""
    raw = _b64decode(text)
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != text:
        raise binascii.Error("not in canonical base64url")
    return raw


def timestamp(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds").removesuffix("+00:00") + "Z"


@dataclass(frozen=True)
class Checkpoint:
    number: int
    seq: int
    head: str
    count: int
    signed_at: datetime
    prev: str
    key_id: str
    jws: str

    @property
    def digest(self) -> str:
        """What the next checkpoint's ``prev`` holds: SHA-256 of the compact JWS."""
        return hashlib.sha256(self.jws.encode("ascii")).hexdigest()

    def flattened(self) -> dict[str, str]:
        """The JWS in its flattened JSON serialization (RFC 7515 §7.2.2): how log lines carry it."""
        protected, payload, signature = self.jws.split(".")
        return {"protected": protected, "payload": payload, "signature": signature}

    def log_fields(self) -> dict[str, Any]:
        """The checkpoint as one structured log line's ``checkpoint`` field (a copy outside the
        database that ``python -m audit verify --checkpoints`` reads back)."""
        return {
            "number": self.number,
            "seq": self.seq,
            "head": self.head,
            "count": self.count,
            "signed_at": timestamp(self.signed_at),
            "prev": self.prev,
            "key_id": self.key_id,
            "jws": self.flattened(),
        }


def parse(jws: str) -> Checkpoint:
    """Read a checkpoint without checking its signature (:meth:`PublicKeys.verify` does)."""
    parts = jws.split(".")
    if len(parts) != 3 or not all(_SEGMENT.fullmatch(part) for part in parts):
        raise InvalidCheckpoint("not a JWS in compact serialization")
    try:
        header = json.loads(_segment(parts[0]))
        payload = json.loads(_segment(parts[1]))
    except (ValueError, binascii.Error) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidCheckpoint(f"not a JWS: {exc}") from None
    if not isinstance(header, dict):
        raise InvalidCheckpoint("not a JWS: the header is not an object")
    if header.get("typ") != JWS_TYPE or header.get("alg") != "EdDSA":
        raise InvalidCheckpoint("not an audit checkpoint (typ or alg)")
    if not isinstance(payload, dict) or sorted(payload) != list(_FIELDS):
        raise InvalidCheckpoint("unexpected fields")
    kid = header.get("kid")
    number, seq, count = payload["n"], payload["seq"], payload["count"]
    if not isinstance(kid, str) or not _KID.fullmatch(kid):
        raise InvalidCheckpoint("bad kid")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (number, seq, count)):
        raise InvalidCheckpoint("n, seq and count must be non-negative integers")
    if number < 1 or count != seq:
        raise InvalidCheckpoint("n must be ≥ 1 and count equal to seq")
    head, prev = payload["head"], payload["prev"]
    if not (
        isinstance(head, str) and _HASH.fullmatch(head) and isinstance(prev, str) and _HASH.fullmatch(prev)
    ):
        raise InvalidCheckpoint("head and prev must be SHA-256 hex digests")
    try:
        signed_at = datetime.fromisoformat(str(payload["signed_at"]).replace("Z", "+00:00"))
    except ValueError:
        raise InvalidCheckpoint("bad signed_at") from None
    if signed_at.tzinfo is None:
        raise InvalidCheckpoint("signed_at without an offset")
    return Checkpoint(number, seq, head, count, signed_at, prev, kid, jws)


def from_flattened(value: Mapping[str, Any]) -> str:
    """A compact JWS from its flattened JSON serialization."""
    parts = [value.get(name) for name in ("protected", "payload", "signature")]
    if not all(isinstance(part, str) and part for part in parts):
        raise InvalidCheckpoint("a flattened JWS needs protected, payload and signature")
    return ".".join(str(part) for part in parts)


class PublicKeys:
    """Key id → Ed25519 public key: what verifying a checkpoint needs (a JWKS, or derived)."""

    def __init__(self, keys: Mapping[str, Ed25519PublicKey]) -> None:
        self.keys = dict(keys)

    @classmethod
    def from_jwks(cls, document: Any) -> PublicKeys:
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise CheckpointKeyError("a JWKS is an object with a 'keys' list")
        keys: dict[str, Ed25519PublicKey] = {}
        for jwk in document["keys"]:
            if not isinstance(jwk, dict) or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
                continue  # not an Ed25519 key: not one of ours
            kid = jwk.get("kid")
            if not isinstance(kid, str) or not _KID.fullmatch(kid):
                raise CheckpointKeyError("every Ed25519 key of the JWKS needs a kid")
            try:
                key = OKPAlgorithm.from_jwk(jwk)
            except (jwt.InvalidKeyError, ValueError, TypeError) as exc:  # TypeError: "x" not a string
                raise CheckpointKeyError(f"key {kid}: {exc}") from None
            if not isinstance(key, Ed25519PublicKey):
                raise CheckpointKeyError(f"key {kid} is not a public key")
            keys[kid] = key
        return cls(keys)

    def known(self, kid: str) -> bool:
        return kid in self.keys

    def verify(self, jws: str) -> Checkpoint:
        """The checkpoint, if its signature verifies with the key its ``kid`` names; else
        :class:`InvalidCheckpoint` (an unknown ``kid`` included)."""
        return self.check(parse(jws))

    def check(self, checkpoint: Checkpoint) -> Checkpoint:
        """:meth:`verify` for a checkpoint already parsed (a full verification checks every one:
        the Ed25519 check itself, without parsing the JWS again)."""
        key = self.keys.get(checkpoint.key_id)
        if key is None:
            raise InvalidCheckpoint(f"signed by an unknown key {checkpoint.key_id!r}")
        signing_input, _, signature = checkpoint.jws.rpartition(".")
        try:
            key.verify(_segment(signature), signing_input.encode("ascii"))
        except (InvalidSignature, binascii.Error, ValueError):
            raise InvalidCheckpoint("the signature does not verify") from None
        return checkpoint

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The public keys as a JWKS (RFC 7517), in configuration order (the signing key first)."""
        keys = []
        for kid, key in self.keys.items():
            jwk = OKPAlgorithm.to_jwk(key, as_dict=True)
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": "EdDSA"})
        return {"keys": keys}


class CheckpointKeys(PublicKeys):
    """``AUDIT_CHECKPOINT_KEYS``: private keys, the first of which signs."""

    def __init__(self, private: Mapping[str, Ed25519PrivateKey]) -> None:
        if not private:
            raise CheckpointKeyError("at least one key is needed")
        super().__init__({kid: key.public_key() for kid, key in private.items()})
        self.private = dict(private)

    @classmethod
    def parse(cls, text: str) -> CheckpointKeys:
        private: dict[str, Ed25519PrivateKey] = {}
        # Entries are named by position, never by their text: what stands before an entry's colon is
        # read as its kid, but is the seed itself when the two were written the other way round (a
        # base64url seed is a valid kid) — and the refusal goes to stderr and the pod's log.
        for number, item in enumerate(text.split(","), start=1):
            kid, sep, seed = item.strip().partition(":")
            if not sep or not _KID.fullmatch(kid):
                raise CheckpointKeyError(
                    f"entry {number}: each entry must be 'kid:seed' (kid: letters, digits, '.', '_', '-')"
                )
            if kid in private:
                raise CheckpointKeyError(f"entry {number}: its key id appears twice")
            try:
                raw = _b64decode(seed.strip())
            except (binascii.Error, ValueError):
                raw = b""
            if len(raw) != 32:
                raise CheckpointKeyError(f"entry {number}: the seed must be 32 bytes, base64url")
            private[kid] = Ed25519PrivateKey.from_private_bytes(raw)
        return cls(private)

    @staticmethod
    def generate(kid: str) -> str:
        """A new ``kid:seed`` entry (``make dev``, tests, the runbook's rotation)."""
        seed = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        return f"{kid}:{base64.urlsafe_b64encode(seed).rstrip(b'=').decode()}"

    @property
    def signing_kid(self) -> str:
        return next(iter(self.private))

    def sign(self, number: int, seq: int, head: str, signed_at: datetime, prev: str) -> Checkpoint:
        payload = {
            "count": seq,
            "head": head,
            "n": number,
            "prev": prev,
            "seq": seq,
            "signed_at": timestamp(signed_at),
        }
        body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        jws = jwt.api_jws.PyJWS().encode(
            body,
            self.private[self.signing_kid],
            algorithm="EdDSA",
            headers={"kid": self.signing_kid, "typ": JWS_TYPE},
        )
        return parse(jws)
