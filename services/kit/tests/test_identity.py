"""The identity contract: what a service accepts and what it refuses."""

from __future__ import annotations

import hmac
import os

import pytest
from prometheus_client import REGISTRY
from svckit.identity import (
    CONTENT_DIGEST,
    KEY_ID,
    NONCE,
    SCOPES,
    SERVICE_ISSUER,
    SIGNATURE,
    SUBJECT,
    TIMESTAMP,
    Identity,
    IdentityError,
    IdentitySigner,
    IdentityVerifier,
    _hmac_states,
    content_digest,
    identity_headers,
    may_assert,
    new_nonce,
)
from svckit.settings import parse_identity_keys

pytestmark = pytest.mark.unit

KEYS = parse_identity_keys("new:" + "n" * 40 + ",old:" + "o" * 40)
ALICE = Identity("http://localhost:9000/", "alice", "user", "timesheets-spa", frozenset({"read:timesheets"}))


def signed(keys: dict[str, bytes] = KEYS, **kwargs: object) -> dict[str, str]:
    return IdentitySigner(keys).headers(ALICE, method="GET", target="/timesheets?limit=5", now=1000, **kwargs)  # type: ignore[arg-type]


def verify(headers: dict[str, str], *, method: str = "GET", target: str = "/timesheets?limit=5") -> Identity:
    return IdentityVerifier({"gateway": KEYS}, 60).verify(headers, method=method, target=target, now=1010)


def test_round_trip() -> None:
    assert verify(signed()) == ALICE


def test_previous_key_still_verifies() -> None:
    old_first = {"old": KEYS["old"], "new": KEYS["new"]}
    headers = signed(old_first)
    assert headers[KEY_ID] == "old"
    assert verify(headers) == ALICE


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({SUBJECT: "bob"}, "bad_signature"),
        ({SCOPES: "read:timesheets approve:timesheets"}, "bad_signature"),
        ({KEY_ID: "retired"}, "unknown_key"),
        ({TIMESTAMP: "900"}, "bad_signature"),  # another time than signed: the signature does not follow
        ({TIMESTAMP: "soon"}, "malformed"),
        ({SIGNATURE: ""}, "missing"),
        ({NONCE: "n" * 32}, "bad_signature"),  # another nonce: the captured signature does not follow
        ({NONCE: ""}, "malformed"),
        ({CONTENT_DIGEST: content_digest(b'{"hours": 99}')}, "bad_signature"),  # a digest of another body
        ({CONTENT_DIGEST: "md5=:abc:"}, "malformed"),
    ],
)
def test_tampering_refused(change: dict[str, str], reason: str) -> None:
    headers = {**signed(), **change}
    with pytest.raises(IdentityError) as exc:
        verify(headers)
    assert exc.value.reason == reason


@pytest.mark.parametrize(("signed_at", "offset"), [(900, 110), (1100, -90)])
def test_a_signature_from_another_clock_is_refused_for_the_clock_and_its_offset_kept(
    signed_at: int, offset: int
) -> None:
    """Signed beyond the window, by the right key: ``clock_skew`` (not ``stale`` nor the caller's fault),
    and the offset (receiver's clock minus the signed time) is on ``identity_clock_offset_seconds``."""
    headers = IdentitySigner(KEYS).headers(ALICE, method="GET", target="/timesheets?limit=5", now=signed_at)
    with pytest.raises(IdentityError) as exc:
        verify(headers)
    assert exc.value.reason == "clock_skew"
    assert f"{abs(offset)} s" in exc.value.detail
    assert REGISTRY.get_sample_value("identity_clock_offset_seconds", {"sender": "gateway"}) == offset


def test_within_the_window_the_offset_is_kept_too() -> None:
    verify(signed())  # signed at 1000, verified at 1010
    assert REGISTRY.get_sample_value("identity_clock_offset_seconds", {"sender": "gateway"}) == 10


def test_a_forged_timestamp_is_a_bad_signature_and_moves_no_offset() -> None:
    verify(signed())
    with pytest.raises(IdentityError) as exc:
        verify({**signed(), TIMESTAMP: "5000"})
    assert exc.value.reason == "bad_signature"
    assert REGISTRY.get_sample_value("identity_clock_offset_seconds", {"sender": "gateway"}) == 10


@pytest.mark.parametrize(
    ("method", "target"), [("DELETE", "/timesheets?limit=5"), ("GET", "/timesheets?limit=500")]
)
def test_bound_to_request_line(method: str, target: str) -> None:
    with pytest.raises(IdentityError, match="does not verify"):
        verify(signed(), method=method, target=target)


def test_unknown_signing_key_refused() -> None:
    stranger = parse_identity_keys("new:" + "x" * 40)
    with pytest.raises(IdentityError):
        verify(signed(stranger))


def test_control_characters_cannot_be_signed() -> None:
    evil = Identity("http://localhost:9000/", "alice\nX-Evil: 1", "user")
    signer = IdentitySigner(KEYS)
    for _ in range(2):  # the signer keeps identities it signed: never one it refused
        with pytest.raises(ValueError, match="control characters"):
            signer.headers(evil, method="GET", target="/")
    signer.headers(ALICE, method="GET", target="/")  # kept from here on
    with pytest.raises(ValueError, match="control characters"):
        signer.headers(ALICE, method="GET", target="/", request_id="rid\r\nX-Evil: 1")


ZOE = Identity(
    "https://tenant.auth0.com/", "auth0|zoë", "user", "spa", frozenset({"b", "a"}), "Zoë Ünïcode ✓"
)


def parse_block(block: bytes) -> list[tuple[bytes, bytes]]:
    assert block.endswith(b"\r\n")
    return [(name, value) for name, _, value in (line.partition(b": ") for line in block.split(b"\r\n")[:-1])]


@pytest.mark.parametrize("identity", [ALICE, ZOE, Identity.service("approvals", ["read:timesheets"])])
def test_prepared_identity_signs_exactly_like_the_signer(identity: Identity) -> None:
    # the gateway's per-token fast path must produce the very headers the reference signer does
    signer = IdentitySigner(KEYS)
    nonce = new_nonce()
    reference = signer.headers(
        identity,
        method="post",
        target="/timesheets/é?x=1",
        request_id="rid-12345",
        now=1000,
        nonce=nonce,
        body=b"{}",
    )
    block = signer.prepare(identity).header_block(
        method="post",
        target="/timesheets/é?x=1".encode(),
        request_id=b"rid-12345",
        timestamp=b"1000",
        nonce=nonce.encode(),
        digest=content_digest(b"{}").encode(),
    )
    lines = parse_block(block)
    assert {k.decode(): v.decode() for k, v in lines} == reference
    assert len(lines) == len(reference)


def test_utf8_identity_headers_verify_through_the_middleware_decoding() -> None:
    signer = IdentitySigner(KEYS)
    raw = parse_block(
        signer.prepare(ZOE).header_block(
            method="GET", target=b"/timesheets", request_id=b"rid-12345", timestamp=b"1005", nonce=b"n" * 32
        )
    )
    headers = identity_headers([*raw, (b"accept", b"*/*"), (b"x-other", b"\xff")])
    verifier = IdentityVerifier({"gateway": KEYS}, 60)
    assert verifier.verify(headers, method="GET", target="/timesheets", now=1010) == ZOE
    with pytest.raises(IdentityError) as exc:
        identity_headers([(SUBJECT.encode(), b"\xff\xfe")])
    assert exc.value.reason == "malformed"


def _identity_headers_by_prefix(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """What ``identity_headers`` gave before it looked the verifier's names up: every name tested
    against the prefix and decoded."""
    return {
        key.decode("latin-1"): value.decode("utf-8")
        for key, value in raw
        if key.startswith(b"x-identity-") or key in (b"x-request-id", b"content-digest")
    }


@pytest.mark.parametrize(
    "extra",
    [
        [],
        [(b"x-identity-subject", b"mallory")],  # repeated: the last one, as before
        [(b"x-identity-unknown", "é".encode())],  # a prefixed name the verifier does not read
        [(b"x-request-id", b"second"), (b"content-digest", b"sha-256=:x:")],
        [(b"x-identity", b"no dash"), (b"x-identityx", b"y"), (b"X-Identity-Subject", b"upper")],
        [(b"accept", b"*/*"), (b"x-other", b"\xff"), (b"host", b"h")],  # others, even undecodable
    ],
)
def test_identity_headers_are_the_prefixed_ones_as_before(extra: list[tuple[bytes, bytes]]) -> None:
    raw = parse_block(
        IdentitySigner(KEYS)
        .prepare(ZOE)
        .header_block(
            method="GET", target=b"/timesheets", request_id=b"rid-12345", timestamp=b"1005", nonce=b"n" * 32
        )
    )
    for headers in ([*raw, *extra], [*extra, *raw]):
        assert identity_headers(headers) == _identity_headers_by_prefix(headers)


@pytest.mark.parametrize("name", [b"x-identity-unknown", b"x-request-id", b"content-digest", NONCE.encode()])
def test_identity_headers_not_utf8_are_malformed_whichever_is_read(name: bytes) -> None:
    with pytest.raises(IdentityError) as exc:
        identity_headers([(b"accept", b"*/*"), (name, b"\xff\xfe")])
    assert exc.value.reason == "malformed"


@pytest.mark.parametrize(
    "identity",
    [
        Identity("https://i/", "ali\nce"),
        Identity("https://i/\r\nx-identity-kind: service", "alice"),
        Identity("https://i/", "alice", scopes=frozenset({"read\r\nx: y"})),
        Identity("https://i/", "alice", name="Zoë\r\n"),
    ],
)
def test_prepare_refuses_control_characters(identity: Identity) -> None:
    # the prepared block goes into the request head verbatim: no header may be smuggled in with it
    with pytest.raises(ValueError, match="control characters"):
        IdentitySigner(KEYS).prepare(identity)


# --- principal binding: a key asserts only the principal of its sender --------------------------------

APPROVALS_KEY = parse_identity_keys("approvals-ts-1:" + "p" * 40)
RECEIVER = IdentityVerifier({"gateway": KEYS, "approvals": APPROVALS_KEY}, 60)


def as_approvals(identity: Identity) -> dict[str, str]:
    return IdentitySigner(APPROVALS_KEY).headers(identity, method="POST", target="/internal/apply", now=1000)


def test_a_service_key_asserts_its_own_service() -> None:
    approvals = Identity.service("approvals")
    assert (
        RECEIVER.verify(as_approvals(approvals), method="POST", target="/internal/apply", now=1010)
        == approvals
    )


@pytest.mark.parametrize(
    "claimed",
    [
        ALICE,  # a user: only the gateway may assert one
        Identity("http://localhost:9000/", "batch", "client", "batch"),  # a client acting as itself
        Identity.service("timesheets"),  # another service
        Identity.service("gateway"),
        Identity(SERVICE_ISSUER, "approvals", "user", "approvals"),  # its own name, not as a service
        Identity.service("approvals", ["read:audit"]),  # itself, with scopes no token granted it
    ],
)
def test_a_service_key_asserting_anyone_else_is_refused(claimed: Identity) -> None:
    # the attack: a holder of approvals' key signs, correctly, a principal that is not approvals
    with pytest.raises(IdentityError) as exc:
        RECEIVER.verify(as_approvals(claimed), method="POST", target="/internal/apply", now=1010)
    assert exc.value.reason == "wrong_principal"


def test_the_gateway_asserts_users_clients_and_itself_but_no_other_service() -> None:
    assert may_assert("gateway", ALICE)
    assert may_assert("gateway", Identity("https://tenant.auth0.com/", "c1@clients", "client", "c1"))
    assert may_assert("gateway", Identity.service("gateway"))
    assert not may_assert("gateway", Identity.service("approvals"))
    assert not may_assert("gateway", Identity(SERVICE_ISSUER, "approvals", "user"))
    gateway_signed = IdentitySigner(KEYS).headers(
        Identity.service("approvals"), method="POST", target="/internal/apply", now=1000
    )
    with pytest.raises(IdentityError) as exc:
        RECEIVER.verify(gateway_signed, method="POST", target="/internal/apply", now=1010)
    assert exc.value.reason == "wrong_principal"


def test_one_key_id_for_two_senders_is_refused() -> None:
    with pytest.raises(ValueError, match="each key id must name one sender"):
        IdentityVerifier({"gateway": KEYS, "approvals": {"new": b"x" * 32}}, 60)


def test_the_signed_string_is_the_documented_one() -> None:
    """docs/CONTRACTS.md spells this string out for other implementations (the HAProxy benchmark's)."""
    headers = IdentitySigner({"k1": b"s" * 32}).headers(
        ALICE, method="get", target="/timesheets?limit=5", request_id="rid-12345", now=1000, nonce="n" * 32
    )
    expected = "\n".join(
        [
            "tsp-identity-v2",
            "k1",
            "1000",
            "GET",
            "/timesheets?limit=5",
            "rid-12345",
            "n" * 32,
            "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:",
            "http://localhost:9000/",
            "alice",
            "user",
            "timesheets-spa",
            "read:timesheets",
            "",
        ]
    ).encode()
    import base64
    import hashlib
    import hmac

    mac = base64.urlsafe_b64encode(hmac.digest(b"s" * 32, expected, hashlib.sha256)).rstrip(b"=").decode()
    assert headers[SIGNATURE] == mac
    assert headers[CONTENT_DIGEST] == "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"


def test_forked_processes_send_different_nonces() -> None:
    """A forked worker must not repeat its parent's nonces: the receiver would refuse them as replays."""
    from svckit.identity import new_nonce

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: one nonce to the parent, then out without running pytest's exit
        os.write(write, new_nonce().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 32
    assert child != new_nonce()


@pytest.mark.parametrize("key_length", [0, 1, 32, 64, 65, 200])
def test_the_prepared_hmac_states_are_hmac_sha256(key_length: int) -> None:
    """PreparedIdentity signs through precomputed RFC 2104 states: the same bytes as hmac.digest for
    keys shorter than, as long as and longer than SHA-256's block."""
    key, message = bytes(range(key_length % 256)) * (key_length // 256 + 1), b"tsp-identity-v2\n" * 20
    key = key[:key_length]
    inner, outer = _hmac_states(key)
    inner = inner.copy()
    inner.update(message)
    outer = outer.copy()
    outer.update(inner.digest())
    assert outer.digest() == hmac.digest(key, message, "sha256")


def test_identities_kept_between_requests_are_kept_per_key_and_still_checked_whole() -> None:
    """The verifier keeps each identity it made (with its part of the signed string and whether the
    key's sender may assert it): a user the gateway asserted is still refused from approvals' key, a
    signature over other values is still refused, scopes in another order are the same identity, and
    a full cache starts over."""
    receiver = IdentityVerifier({"gateway": KEYS, "approvals": APPROVALS_KEY}, 60)
    receiver.MAX_CACHED_IDENTITIES = 2
    target = "/internal/apply"
    by_gateway = IdentitySigner(KEYS).headers(ALICE, method="POST", target=target, now=1000)
    assert receiver.verify(by_gateway, method="POST", target=target, now=1010) == ALICE
    for _ in range(2):  # from the cache the second time
        with pytest.raises(IdentityError) as exc:
            receiver.verify(as_approvals(ALICE), method="POST", target=target, now=1010)
        assert exc.value.reason == "wrong_principal"
    again = IdentitySigner(KEYS).headers(ALICE, method="POST", target=target, now=1000)
    assert receiver.verify(again, method="POST", target=target, now=1010) == ALICE
    with pytest.raises(IdentityError) as exc:
        receiver.verify({**again, SUBJECT: "bob"}, method="POST", target=target, now=1010)
    assert exc.value.reason == "bad_signature"
    two = Identity(ALICE.issuer, "carol", "user", "spa", frozenset({"b:x", "a:y"}))
    reordered = {**IdentitySigner(KEYS).headers(two, method="POST", target=target, now=1000)}
    reordered[SCOPES] = "b:x a:y"  # the signed string sorts them: the same identity
    assert receiver.verify(reordered, method="POST", target=target, now=1010) == two
    assert len(receiver._identities) <= 2
