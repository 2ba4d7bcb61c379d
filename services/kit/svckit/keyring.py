"""Secrets that must rotate while pods roll: several keys, the first one makes tokens, every one checks.

A rolling update runs pods of two configurations side by side behind one Service, and a client's
requests land on either. A value one pod makes with a secret (a DPoP nonce, a CSRF token) and another
checks must therefore verify on a pod of the other configuration too — which one key per pod cannot
give. So such a secret is a key ring, written like the platform's other multi-key settings
(``IDENTITY_KEYS_<SENDER>_TO_<RECEIVER>``, ``AUDIT_CHECKPOINT_KEYS``): ``kid:secret[,kid:secret…]``,
each secret at least 32 bytes (base64url or raw text), key ids of letters, digits, ``-``, ``_``,
``.``. A rotation adds the new key second (every pod checks it, none makes with it), then puts it
first, then drops the old one (docs/runbook.md), a rollout each.

One secret alone, without a key id (no ``:`` in the value), is what earlier releases read, and still
works: a key without a name. Several keys must each be named (a value with ``,`` but no ``:`` is
refused rather than read as one raw secret).

A token made with a named key carries that name in front of its MAC, ``<kid>.<mac>`` (the MACs are
base64url and hold no ``.``), so a check tries the one key it names, not every key. A token without a
name (made by an unnamed key, or by an earlier release during the upgrade) is checked against every
key; one naming a key this pod does not have, only against an unnamed key (a pod still given the
single value of before, while the others name the same key). An unnamed key makes tokens without a
name, exactly as earlier releases did, so pods of the release before accept them while an upgrade
rolls. The name is a hint and not part of the MAC: every key of the ring is trusted alike, and a key
dropped from the ring no longer checks anything.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass

from .settings import MIN_IDENTITY_KEY_BYTES, decode_secret, parse_identity_keys

#: between a key id and the MAC in a token (a MAC is base64url: never holds it)
SEPARATOR = "."


@dataclass(frozen=True, repr=False)
class KeyRing:
    """Keys in order, ``(kid, key)``; the first makes tokens. ``kid`` is ``""`` for the one unnamed key."""

    keys: tuple[tuple[str, bytes], ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("a key ring needs at least one key")

    def __repr__(self) -> str:  # never the key material
        return f"KeyRing(kids={[kid for kid, _ in self.keys]!r})"

    @classmethod
    def parse(cls, text: str) -> KeyRing:
        """``kid:secret[,kid:secret…]``, or one secret without a key id (a ``ValueError`` names no key
        material)."""
        value = text.strip()
        if ":" in value:
            return cls(tuple(parse_identity_keys(value).items()))
        if "," in value:
            raise ValueError("several keys must each be named: 'kid:secret,kid:secret'")
        raw = decode_secret(value)
        if len(raw) < MIN_IDENTITY_KEY_BYTES:
            raise ValueError(f"must hold at least {MIN_IDENTITY_KEY_BYTES} bytes (base64url or raw text)")
        return cls.single(raw)

    @classmethod
    def single(cls, key: bytes) -> KeyRing:
        """One unnamed key (a single value, as earlier releases read it)."""
        return cls((("", key),))

    @property
    def kid(self) -> str:
        """The name of the key that makes tokens (``""``: unnamed)."""
        return self.keys[0][0]

    @property
    def key(self) -> bytes:
        """The key that makes tokens."""
        return self.keys[0][1]

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(kid for kid, _ in self.keys)

    def derive(self, derivation: Callable[[bytes], bytes]) -> KeyRing:
        """The same ring with each key replaced by ``derivation(key)`` (a purpose's own key), names kept."""
        return KeyRing(tuple((kid, derivation(key)) for kid, key in self.keys))

    def named(self, mac: str) -> str:
        """A token made with the first key: its name in front of ``mac`` (none for an unnamed key)."""
        return f"{self.kid}{SEPARATOR}{mac}" if self.kid else mac

    def keys_for(self, kid: str | None) -> tuple[bytes, ...]:
        """The keys that may have made something named ``kid`` (``None``: unnamed): the key of that
        name; for no name every key; for a name this ring has no key of, an unnamed key only."""
        if kid is None:
            return tuple(key for _, key in self.keys)
        found = tuple(key for name, key in self.keys if name == kid)
        return found or tuple(key for name, key in self.keys if not name)

    def candidates(self, token: str) -> tuple[str, tuple[bytes, ...]]:
        """The MAC part of ``token`` and the keys that may have made it (see the module docstring)."""
        kid, separator, mac = token.rpartition(SEPARATOR)
        if not separator:
            return token, self.keys_for(None)
        return mac, self.keys_for(kid)

    def verify(self, token: str, mac_of: Callable[[bytes], bytes]) -> bool:
        """Whether ``token`` is ``named(mac)`` for some key that may have made it, ``mac_of(key)`` being
        the MAC that key makes (compared in constant time, as bytes: the token is client input)."""
        mac, keys = self.candidates(token)
        sent = mac.encode("utf-8", "surrogatepass")
        return any(hmac.compare_digest(sent, mac_of(key)) for key in keys)
