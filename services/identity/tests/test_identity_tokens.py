"""Access token minting in-process: both header types, both algorithms, scope narrowing."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from identity.keys import KeyCipher, SigningKey, generate_private_key, jwk_thumbprint_kid, public_jwk
from identity.keystore import KeyStore, NoSigningKey
from identity.models import Client, SignedInUser, User
from identity.settings import IdentitySettings
from identity.tokens import AccessTokenMinter, InvalidAccessToken, verify_access_token
from svckit.settings import load_settings

pytestmark = pytest.mark.unit

ISSUER = "http://localhost:9000/"


def settings(**env: str) -> IdentitySettings:
    base = {
        "IDENTITY_KEY_ENCRYPTION_KEY": secrets.token_urlsafe(32),
        "IDENTITY_SESSION_SECRET": secrets.token_urlsafe(32),
        "IDENTITY_ISSUER": ISSUER,
    }
    return load_settings(IdentitySettings, env={**base, **env})


def keystore(alg: str, *, signs_from: datetime | None = None) -> KeyStore:
    key = generate_private_key(alg)
    jwk = public_jwk(key, "", alg)
    kid = jwk_thumbprint_kid(jwk)
    store = KeyStore(KeyCipher(secrets.token_bytes(32)), alg, 30)
    store._keys = [
        SigningKey(kid, alg, {**jwk, "kid": kid}, key, signs_from or datetime.now(UTC), None, None)
    ]
    return store


CLIENT = Client(
    client_id="spa",
    name="SPA",
    first_party=True,
    secret_hash=None,
    redirect_uris=("http://localhost:8080/",),
    post_logout_redirect_uris=(),
    web_origins=(),
    grant_types=("authorization_code",),
    response_types=("code",),
    allowed_scopes=("openid", "read:timesheets", "approve:timesheets", "read:audit"),
)
ALICE = SignedInUser(User("local|alice", "alice", "a@example.com", "Alice", ("employee",)), auth_time=1)


@pytest.mark.parametrize(("typ", "alg"), [("at+jwt", "RS256"), ("JWT", "RS256"), ("at+jwt", "ES256")])
def test_header_type_and_algorithm(typ: str, alg: str) -> None:
    config = settings(ACCESS_TOKEN_TYP=typ)
    keys = keystore(alg)
    token: dict[str, Any] = AccessTokenMinter(config, keys)(
        "authorization_code", CLIENT, ALICE, "openid read:timesheets approve:timesheets read:audit"
    )
    header = jwt.get_unverified_header(token["access_token"])
    assert header["typ"] == typ
    assert header["alg"] == alg
    assert header["kid"] == keys.signer().kid
    claims = verify_access_token(config, keys, token["access_token"])
    assert claims["permissions"] == ["read:timesheets"]  # an employee: no approve, no audit
    assert token["scope"] == "openid read:timesheets"


def test_userinfo_refuses_tokens_for_other_audiences_and_foreign_keys() -> None:
    config = settings()
    keys = keystore("RS256")
    cc = AccessTokenMinter(config, keys)("client_credentials", CLIENT, None, "read:timesheets")
    with pytest.raises(InvalidAccessToken):
        verify_access_token(config, keys, cc["access_token"])  # not audienced to /userinfo
    foreign = keystore("RS256")
    user_token = AccessTokenMinter(config, foreign)("authorization_code", CLIENT, ALICE, "openid")
    with pytest.raises(InvalidAccessToken):
        verify_access_token(config, keys, user_token["access_token"])


def signed(keys: KeyStore, **claims: Any) -> str:
    """A token signed by ``keys``' signing key with these claims over valid ``/userinfo`` ones."""
    now = int(datetime.now(UTC).timestamp())
    base = {"iss": ISSUER, "aud": [ISSUER + "userinfo"], "sub": "s", "jti": "j", "iat": now, "exp": now + 60}
    signer = keys.signer()
    payload = {k: v for k, v in {**base, **claims}.items() if v is not None}
    return jwt.encode(payload, signer.private_key, algorithm=signer.alg, headers={"kid": signer.kid})


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": 1_000_000}, "expired"),
        ({"iss": "https://elsewhere.example/"}, "issuer"),
        ({"aud": "https://timesheets.abc.example/api"}, "audience"),
        ({"jti": None}, "malformed"),
        ({"iat": 4_000_000_000, "nbf": 4_000_000_000}, "not_yet_valid"),
    ],
)
def test_userinfo_refusals_carry_a_fixed_reason(claims: dict[str, Any], reason: str) -> None:
    """The reason goes to ``identity_userinfo_refusals_total`` and the audit trail: a fixed label,
    never PyJWT's message."""
    config, keys = settings(), keystore("RS256")
    assert verify_access_token(config, keys, signed(keys))["sub"] == "s"
    with pytest.raises(InvalidAccessToken) as refused:
        verify_access_token(config, keys, signed(keys, **claims))
    assert refused.value.reason == reason


def test_userinfo_refusals_of_foreign_and_broken_tokens() -> None:
    config, keys = settings(), keystore("RS256")
    token = signed(keys)
    cases = {
        "unknown_kid": signed(keystore("RS256")),
        "malformed": "not-a-token",
        "bad_signature": token[:-4] + ("BBBB" if token.endswith("AAAA") else "AAAA"),
    }
    for reason, sent in cases.items():
        with pytest.raises(InvalidAccessToken) as refused:
            verify_access_token(config, keys, sent)
        assert refused.value.reason == reason, sent


def test_a_key_scheduled_for_later_does_not_sign_yet() -> None:
    keys = keystore("RS256", signs_from=datetime.now(UTC) + timedelta(minutes=5))
    with pytest.raises(NoSigningKey):
        keys.signer()
    assert keys.jwks()["keys"], "but it is already published"


def test_client_address_believes_only_trusted_proxies() -> None:
    from identity.browser import client_address
    from starlette.requests import Request

    def request(peer: str, forwarded: str | None) -> Request:
        headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded else []
        return Request(
            {"type": "http", "headers": headers, "client": (peer, 1234), "method": "GET", "path": "/"}
        )

    trusted = settings(IDENTITY_TRUSTED_PROXIES="10.0.0.0/8,fd00::/8").trusted_proxy_networks
    assert client_address(request("203.0.113.9", "1.2.3.4"), trusted, "x-forwarded-for") == "203.0.113.9"
    assert client_address(request("10.1.2.3", "198.51.100.7"), trusted, "x-forwarded-for") == "198.51.100.7"
    # a client-supplied left part does not win over the address the proxy saw
    assert (
        client_address(request("10.1.2.3", "6.6.6.6, 198.51.100.7, 10.9.9.9"), trusted, "x-forwarded-for")
        == "198.51.100.7"
    )
    assert client_address(request("10.1.2.3", None), trusted, "x-forwarded-for") == "10.1.2.3"
    assert client_address(request("10.1.2.3", "1.2.3.4"), (), "x-forwarded-for") == "10.1.2.3"


def test_client_secret_verifications_are_cached_only_on_success() -> None:
    from identity.passwords import VerifiedSecrets, hash_secret

    cache = VerifiedSecrets(ttl_seconds=60)
    stored = hash_secret("right-secret")
    assert not cache.verify(stored, "wrong-secret")
    assert cache.verify(stored, "right-secret")
    assert cache.verify(stored, "right-secret")  # from the cache
    assert not cache.verify(stored, "wrong-secret")  # failures are never cached
    rotated = hash_secret("new-secret")
    assert not cache.verify(rotated, "right-secret")  # a new stored hash misses the cache
    assert len(cache._entries) == 1
