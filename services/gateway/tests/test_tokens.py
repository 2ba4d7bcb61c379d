"""Every token check as its own case, over real HTTP against a real provider's keys."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from jwt.algorithms import RSAAlgorithm

from testkit.clock import FakeClock

from .conftest import AUDIENCE, Provider, b64, b64json


def forge(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"sig") -> str:
    return f"{b64json(header)}.{b64json(claims)}.{b64(signature)}"


async def expect_invalid(api: Any, gateway: str, token: str, reason: str, fragment: str = "") -> Any:
    status, headers, body = await api("GET", f"{gateway}/api/timesheets", token)
    assert status == 401, body
    www = headers["WWW-Authenticate"]
    assert www.startswith('Bearer realm="timesheets"')
    assert 'error="invalid_token"' in www
    assert "error_description=" in www
    assert headers["Content-Type"] == "application/problem+json"
    assert body["status"] == 401
    assert body["reason"] == reason, body
    if fragment:
        assert fragment in body["detail"]
    return headers


async def test_valid_token_reaches_upstream_with_identity(api: Any, gateway: str, provider: Provider) -> None:
    status, headers, body = await api(
        "GET", f"{gateway}/api/timesheets?limit=5", provider.token(name="Alice A.")
    )
    assert status == 200, body
    assert body["path"] == "/timesheets"
    assert body["query"] == "limit=5"
    assert body["identity"] == {
        "issuer": provider.issuer,
        "subject": "alice",
        "kind": "user",
        "client_id": "timesheets-spa",
        "scopes": ["openid", "read:timesheets"],
        "name": "Alice A.",
    }
    assert headers["X-Upstream"] == "echo"


async def test_a_name_with_surrounding_spaces_reaches_upstream_trimmed(
    api: Any, gateway: str, provider: Provider
) -> None:
    """A header value cannot carry leading or trailing spaces (RFC 9110 §5.5: a hop strips them), so a
    name signed with them would not verify upstream: the display name is forwarded without them."""
    for name, forwarded in ((" Alice A.", "Alice A."), ("Alice A. ", "Alice A."), ("   ", "")):
        status, _, body = await api("GET", f"{gateway}/api/timesheets", provider.token(name=name))
        assert status == 200, body
        assert body["identity"]["name"] == forwarded


@pytest.mark.parametrize(
    ("name", "forwarded"),
    [
        ("Alice\u202eecila", "Aliceecila"),
        ("\u2067Alice\u2069 Employee", "Alice Employee"),
        ("Alice\u202aB\u202c\u202d\u2066\u2068", "AliceB"),
        ("Alice\x85\x9b2J Employee", "Alice2J Employee"),
        ("\u05d0\u05dc\u05d9\u200f", "\u05d0\u05dc\u05d9\u200f"),
    ],
)
async def test_a_name_is_forwarded_without_bidirectional_or_c1_controls(
    api: Any, gateway: str, provider: Provider, name: str, forwarded: str
) -> None:
    """An external provider's name claim is not ours to refuse (the user would be locked out for a
    profile the operator does not control) but is kept by every service (an approver's queue, the
    audit trail, exports): forwarded without the bidirectional controls (U+202A-U+202E, U+2066-U+2069)
    that would draw it, or what follows it, in another order, nor C1 controls, as C0 ones already
    were. Right-to-left letters and the marks stay."""
    status, _, body = await api("GET", f"{gateway}/api/timesheets", provider.token(name=name))
    assert status == 200, body
    assert body["identity"]["name"] == forwarded


@pytest.mark.parametrize("claims", [{"sub": " alice"}, {"sub": "alice "}, {"azp": " timesheets-spa"}])
async def test_a_subject_or_client_with_surrounding_spaces_is_refused_here(
    api: Any, gateway: str, provider: Provider, claims: dict[str, Any]
) -> None:
    """The subject and the client id name a principal: trimming would make another one of them, and
    forwarded as they are they could not be verified upstream. A clear 401 here, like control
    characters."""
    await expect_invalid(api, gateway, provider.token(**claims), "malformed")


@pytest.mark.parametrize("kid", ["rsa-1", "ec-1", "ed-1", "rsa-pss"])
async def test_every_allowed_algorithm_verifies(api: Any, gateway: str, provider: Provider, kid: str) -> None:
    status, _, body = await api("GET", f"{gateway}/api/timesheets", provider.token(kid))
    assert status == 200, body


async def test_no_token_gets_a_bare_challenge(api: Any, gateway: str) -> None:
    status, headers, body = await api("GET", f"{gateway}/api/timesheets")
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Bearer realm="timesheets"'
    assert body["reason"] == "missing_token"


async def test_other_auth_schemes_count_as_no_token(api: Any, gateway: str) -> None:
    status, headers, _ = await api(
        "GET", f"{gateway}/api/timesheets", headers={"Authorization": "Basic YTpi"}
    )
    assert status == 401
    assert "error=" not in headers["WWW-Authenticate"]


async def test_token_in_query_or_cookie_is_never_used(api: Any, gateway: str, provider: Provider) -> None:
    token = provider.token()
    status, _, body = await api(
        "GET", f"{gateway}/api/timesheets", headers={"Cookie": f"access_token={token}"}
    )
    assert status == 401
    assert body["reason"] == "missing_token"
    status, _, body = await api("GET", f"{gateway}/api/timesheets?access_token={token}")
    assert status == 400
    assert "Authorization header" in body["detail"]


async def test_expired(api: Any, gateway: str, provider: Provider) -> None:
    now = int(time.time())
    await expect_invalid(api, gateway, provider.token(exp=now - 120, iat=now - 900), "expired")


async def test_expiry_within_leeway_is_accepted(api: Any, gateway: str, provider: Provider) -> None:
    now = int(time.time())
    status, _, _ = await api("GET", f"{gateway}/api/timesheets", provider.token(exp=now - 5, iat=now - 900))
    assert status == 200


@pytest.mark.parametrize("claim", ["nbf", "iat"])
async def test_a_token_from_the_future_is_a_clock_fault_not_the_callers(
    api: Any, gateway: str, provider: Provider, claim: str
) -> None:
    """Signed by the issuer, starting 300 s ahead of the gateway's clock: one of the two clocks is off
    (tests/faults/test_clock_skew.py does it for real). 503 ``token_clock_skew`` with ``Retry-After``
    (until it becomes acceptable, at most 300 s), without the ``invalid_token`` challenge that sends a
    client to sign in again — for another token from the same clock."""
    claims: dict[str, Any] = {claim: int(time.time()) + 300}
    status, headers, body = await api("GET", f"{gateway}/api/timesheets", provider.token(**claims))
    assert status == 503, body
    assert body["reason"] == "token_clock_skew", body
    assert "WWW-Authenticate" not in headers
    assert 200 <= int(headers["Retry-After"]) <= 300, headers["Retry-After"]  # less the leeway
    # whole seconds signed, read on the gateway's clock a moment later
    assert re.search(r"\b(299|300) s ahead of the gateway's clock", body["detail"]), body["detail"]


async def test_missing_exp(api: Any, gateway: str, provider: Provider) -> None:
    await expect_invalid(api, gateway, provider.token(exp=None), "missing_exp")


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("exp", float("nan")),  # issue 14: NaN compared false with the clock, so it never expired
        ("exp", float("inf")),
        ("exp", float("-inf")),
        ("exp", "4102444800"),
        ("exp", True),
        ("exp", 10**20),  # beyond year 9999
        ("exp", 1e300),
        ("nbf", float("nan")),
        ("nbf", "0"),
        ("iat", float("inf")),
        ("iat", False),
    ],
)
async def test_time_claims_must_be_finite_numbers(
    api: Any, gateway: str, provider: Provider, claim: str, value: Any
) -> None:
    token = provider.token(**{claim: value})  # really signed: only the claim's value is wrong
    payload = token.split(".")[1]
    sent = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))[claim]
    assert repr(sent) == repr(value)  # the value went out as is (NaN and Infinity as JSON literals)
    await expect_invalid(api, gateway, token, "malformed")


async def test_wrong_issuer(api: Any, gateway: str, provider: Provider) -> None:
    await expect_invalid(api, gateway, provider.token(iss="https://evil.example/"), "issuer")
    # the issuer must match exactly: no missing trailing slash, no prefix games
    await expect_invalid(api, gateway, provider.token(iss=provider.issuer.rstrip("/")), "issuer")


async def test_wrong_audience(api: Any, gateway: str, provider: Provider) -> None:
    await expect_invalid(api, gateway, provider.token(aud="https://other.example/api"), "audience")
    await expect_invalid(api, gateway, provider.token(aud=["https://other.example/api"]), "audience")
    await expect_invalid(api, gateway, provider.token(aud=None), "audience")


async def test_audience_as_string_is_accepted(api: Any, gateway: str, provider: Provider) -> None:
    status, _, _ = await api("GET", f"{gateway}/api/timesheets", provider.token(aud=AUDIENCE))
    assert status == 200


async def test_alg_none(api: Any, gateway: str, provider: Provider) -> None:
    token = forge({"alg": "none", "typ": "JWT"}, provider.claims(), b"")
    assert token.endswith(".")
    await expect_invalid(api, gateway, token, "alg_not_allowed")
    await expect_invalid(api, gateway, forge({"alg": "NONE"}, provider.claims()), "alg_not_allowed")


async def test_hs256_signed_with_the_public_key(api: Any, gateway: str, provider: Provider) -> None:
    key, _ = provider.keys["rsa-1"]
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = f"{b64json({'alg': 'HS256', 'kid': 'rsa-1', 'typ': 'JWT'})}.{b64json(provider.claims())}"
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    await expect_invalid(api, gateway, f"{signing_input}.{b64(mac)}", "alg_not_allowed")


async def test_unknown_kid(api: Any, gateway: str, provider: Provider) -> None:
    provider.add_key("never-published", "RS256", publish=False)
    await expect_invalid(api, gateway, provider.token("never-published"), "unknown_kid")


async def test_tampered_payload(api: Any, gateway: str, provider: Provider) -> None:
    header, _, signature = provider.token().split(".")
    claims = provider.claims(scope="openid read:timesheets approve:timesheets read:audit")
    await expect_invalid(api, gateway, f"{header}.{b64json(claims)}.{signature}", "bad_signature")


async def test_tampered_header(api: Any, gateway: str, provider: Provider) -> None:
    _, payload, signature = provider.token("rsa-1").split(".")
    header = b64json({"alg": "RS256", "kid": "rsa-1", "typ": "JWT"})  # was at+jwt: signature must break
    await expect_invalid(api, gateway, f"{header}.{payload}.{signature}", "bad_signature")


async def test_key_type_must_match_alg(api: Any, gateway: str, provider: Provider) -> None:
    # a PS256 header on the RS256 key id: right key type, but the JWK says alg RS256
    _, payload, signature = provider.token("rsa-1").split(".")
    header = b64json({"alg": "PS256", "kid": "rsa-1", "typ": "at+jwt"})
    await expect_invalid(api, gateway, f"{header}.{payload}.{signature}", "unknown_kid")
    # an ES256 header naming the RSA key id
    header = b64json({"alg": "ES256", "kid": "rsa-1", "typ": "at+jwt"})
    await expect_invalid(api, gateway, f"{header}.{payload}.{signature}", "unknown_kid")


@pytest.mark.parametrize("field", ["jku", "jwk", "x5u", "x5c"])
async def test_key_injection_in_header(api: Any, gateway: str, provider: Provider, field: str) -> None:
    # signed with a real key, so only the injected header field can be the reason for refusal
    value: Any = {
        "jku": "https://evil.example/jwks",
        "x5u": "https://evil.example/cert.pem",
        "jwk": provider.public_jwk("rsa-1"),
        "x5c": ["MIIBIjANBg"],
    }[field]
    await expect_invalid(api, gateway, provider.token(headers={field: value}), "header_key")


async def test_unknown_crit(api: Any, gateway: str, provider: Provider) -> None:
    token = provider.token(headers={"crit": ["exp-ext"], "exp-ext": True})
    await expect_invalid(api, gateway, token, "crit")


async def test_oversized_token(api: Any, gateway: str, provider: Provider) -> None:
    token = provider.token(padding="x" * 9000)
    await expect_invalid(api, gateway, token, "too_large")


@pytest.mark.parametrize(
    "token",
    [
        "abc",
        "a.b",
        "a.b.c.d",
        "!!!.???.***",
        "eyJhbGciOiJSUzI1NiJ9=.e30.c2ln",
        "e30.e30.c2ln",  # no alg
        f"{b64(b'not json')}.e30.c2ln",
        f"{b64json([1, 2])}.e30.c2ln",
    ],
)
async def test_malformed(api: Any, gateway: str, token: str) -> None:
    await expect_invalid(api, gateway, token, "malformed")


async def test_lone_surrogates_in_claims_are_malformed_not_a_500(
    api: Any, gateway: str, provider: Provider
) -> None:
    """A signed token may escape a lone surrogate ("\\ud800") into a claim; no UTF-8 header of the
    signed identity could carry it. The payload is refused as not JSON (I-JSON) before that."""
    surrogates: list[dict[str, Any]] = [{"sub": "alice\ud800"}, {"azp": "spa\udfff"}, {"name": "Ali\ud800ce"}]
    for claims in surrogates:
        await expect_invalid(api, gateway, provider.token(**claims), "malformed")


async def test_empty_bearer_is_malformed_not_missing(api: Any, gateway: str) -> None:
    status, headers, body = await api(
        "GET", f"{gateway}/api/timesheets", headers={"Authorization": "Bearer "}
    )
    assert status == 401
    assert body["reason"] == "malformed"
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]


@pytest.mark.parametrize("typ", ["JWT", "jwt", "at+jwt", "application/at+jwt"])
async def test_accepted_typ(api: Any, gateway: str, provider: Provider, typ: str) -> None:
    status, _, _ = await api("GET", f"{gateway}/api/timesheets", provider.token(headers={"typ": typ}))
    assert status == 200


async def test_absent_typ_is_accepted(api: Any, gateway: str, provider: Provider) -> None:
    key, _ = provider.keys["rsa-1"]
    header = b64json({"alg": "RS256", "kid": "rsa-1"})
    payload = b64json(provider.claims())
    signature = RSAAlgorithm(RSAAlgorithm.SHA256).sign(f"{header}.{payload}".encode(), key)
    status, _, body = await api("GET", f"{gateway}/api/timesheets", f"{header}.{payload}.{b64(signature)}")
    assert status == 200, body


@pytest.mark.parametrize("typ", ["dpop+jwt", "secevent+jwt", "logout+jwt", "JOSE"])
async def test_wrong_typ(api: Any, gateway: str, provider: Provider, typ: str) -> None:
    await expect_invalid(api, gateway, provider.token(headers={"typ": typ}), "typ")


async def test_id_token_presented_as_access_token(api: Any, gateway: str, provider: Provider) -> None:
    # the shape an OIDC provider issues as an ID token: audience = the client, nonce, at_hash
    id_token = provider.token(
        headers={"typ": "JWT"}, aud="timesheets-spa", nonce="n-0S6_WzA2Mj", at_hash="77QmUPtjPfzWtF2AnpK9RQ"
    )
    await expect_invalid(api, gateway, id_token, "audience")
    # even when it also names the API as an audience, ID-token claims give it away
    sneaky = provider.token(headers={"typ": "JWT"}, aud=["timesheets-spa", AUDIENCE], nonce="n-0S6_WzA2Mj")
    await expect_invalid(api, gateway, sneaky, "id_token")


async def test_subject_namespaced_by_issuer(api: Any, gateway: str, provider: Provider) -> None:
    _, _, body = await api("GET", f"{gateway}/api/timesheets", provider.token(sub="bob"))
    assert (body["identity"]["issuer"], body["identity"]["subject"]) == (provider.issuer, "bob")


async def test_client_credentials_token_is_a_client(api: Any, gateway: str, provider: Provider) -> None:
    token = provider.token(
        sub="timesheets-batch@clients",
        azp="timesheets-batch",
        gty="client-credentials",
        scope="batch:upload",
        aud=AUDIENCE,
    )
    status, _, body = await api("POST", f"{gateway}/api/timesheets/upload", token, data=b"date,hours\n")
    assert status == 200, body
    assert body["identity"]["kind"] == "client"
    assert body["identity"]["client_id"] == "timesheets-batch"


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ({"scope": "read:timesheets create:timesheets"}, ["create:timesheets", "read:timesheets"]),
        ({"scope": None, "scp": "read:timesheets"}, ["read:timesheets"]),
        ({"scope": None, "scp": ["read:timesheets", "read:audit"]}, ["read:audit", "read:timesheets"]),
        ({"scope": "openid", "permissions": ["read:timesheets"]}, ["openid", "read:timesheets"]),
    ],
)
async def test_scope_claims(
    api: Any, gateway: str, provider: Provider, claims: dict[str, Any], expected: list[str]
) -> None:
    status, _, body = await api("GET", f"{gateway}/api/timesheets", provider.token(**claims))
    assert status == 200, body
    assert body["identity"]["scopes"] == expected


async def test_cached_token_never_outlives_exp(api: Any, start_gateway: Any, provider: Provider) -> None:
    clock = FakeClock(start=time.time())  # the gateway's clock: moved, not waited for
    async with start_gateway(clock, jwt_leeway_seconds=0) as gateway:
        now = int(clock.time())
        token = provider.token(iat=now, exp=now + 2)  # no leeway: iat from the gateway's clock too
        for _ in range(3):
            status, _, _ = await api("GET", f"{gateway}/api/timesheets", token)
            assert status == 200
        clock.advance(2.1)
        await expect_invalid(api, gateway, token, "expired")
