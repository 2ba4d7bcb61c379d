"""The identity contract: what a service accepts and what it refuses."""

from __future__ import annotations

import pytest
from svckit.identity import (
    KEY_ID,
    SCOPES,
    SIGNATURE,
    SUBJECT,
    TIMESTAMP,
    Identity,
    IdentityError,
    IdentitySigner,
    IdentityVerifier,
)
from svckit.settings import parse_identity_keys

KEYS = parse_identity_keys("new:" + "n" * 40 + ",old:" + "o" * 40)
ALICE = Identity("http://localhost:9000/", "alice", "user", "timesheets-spa", frozenset({"read:timesheets"}))


def signed(keys: dict[str, bytes] = KEYS, **kwargs: object) -> dict[str, str]:
    return IdentitySigner(keys).headers(ALICE, method="GET", target="/timesheets?limit=5", now=1000, **kwargs)  # type: ignore[arg-type]


def verify(headers: dict[str, str], *, method: str = "GET", target: str = "/timesheets?limit=5") -> Identity:
    return IdentityVerifier(KEYS, 60).verify(headers, method=method, target=target, now=1010)


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
        ({TIMESTAMP: "900"}, "stale"),
        ({TIMESTAMP: "soon"}, "malformed"),
        ({SIGNATURE: ""}, "missing"),
    ],
)
def test_tampering_refused(change: dict[str, str], reason: str) -> None:
    headers = {**signed(), **change}
    with pytest.raises(IdentityError) as exc:
        verify(headers)
    assert exc.value.reason == reason


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
    with pytest.raises(ValueError, match="control characters"):
        IdentitySigner(KEYS).headers(evil, method="GET", target="/")
