"""Key rings (svckit.keyring): secrets that rotate while pods roll, read like the other multi-key settings."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from svckit.keyring import KeyRing

pytestmark = pytest.mark.unit

A = "a" * 40
B = "b" * 40


def test_one_secret_without_a_key_id_is_one_unnamed_key_as_before() -> None:
    ring = KeyRing.parse(A)
    assert ring.keys == (("", A.encode()),)
    assert ring.named("mac") == "mac"  # tokens as earlier releases made them
    base64url = base64.urlsafe_b64encode(bytes(range(32))).rstrip(b"=").decode()
    assert KeyRing.parse(base64url).key == bytes(range(32))  # decoded, as before


def test_named_keys_in_order_the_first_makes_tokens() -> None:
    ring = KeyRing.parse(f" new:{B} , old:{A} ")
    assert ring.kids == ("new", "old")
    assert ring.kid == "new"
    assert ring.key == B.encode()
    assert ring.named("mac") == "new.mac"


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("short", "at least 32 bytes"),
        (f"{A},{B}", "must each be named"),
        (f"k1:{A},k1:{B}", "appears twice"),
        (f"k 1:{A}", "key id may only hold"),
        (f"k1:{A},k2:short", "entry 2: the secret is shorter"),
        (f"k1:{A},{B}", "entry 2: each entry must be 'kid:secret'"),
        ("", "at least 32 bytes"),
    ],
)
def test_malformed_values_are_refused_without_echoing_a_key(value: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint) as refused:
        KeyRing.parse(value)
    assert A not in str(refused.value)
    assert B not in str(refused.value)


def test_a_named_token_is_checked_with_the_key_it_names_only() -> None:
    ring = KeyRing.parse(f"new:{B},old:{A}")
    assert ring.candidates("old.mac") == ("mac", (A.encode(),))
    assert ring.candidates("mac") == ("mac", (B.encode(), A.encode()))  # unnamed: every key
    assert ring.candidates("gone.mac") == ("mac", ())  # a key not in the ring: none
    unnamed = KeyRing.parse(A)
    assert unnamed.candidates("old.mac") == ("mac", (A.encode(),))  # an unnamed key answers for any name


def test_verify_and_derive() -> None:
    ring = KeyRing.parse(f"new:{B},old:{A}").derive(lambda key: hashlib.sha256(key).digest())

    def mac_of(key: bytes) -> bytes:
        return hmac.new(key, b"message", hashlib.sha256).hexdigest().encode()

    made = ring.named(mac_of(ring.key).decode())
    assert ring.verify(made, mac_of)
    old_token = "old." + mac_of(hashlib.sha256(A.encode()).digest()).decode()
    assert ring.verify(old_token, mac_of)
    assert (
        not KeyRing.parse(f"new:{B}")
        .derive(lambda key: hashlib.sha256(key).digest())
        .verify(old_token, mac_of)
    )
    assert not ring.verify("new.\udc80", mac_of)  # client input that is no ASCII: refused, no error


def test_the_representation_names_the_keys_not_their_material() -> None:
    assert repr(KeyRing.parse(f"new:{B},old:{A}")) == "KeyRing(kids=['new', 'old'])"
