"""Pure logic of the provider, in process (the fast tier): ID tokens and id_token_hint with PyJWT, and
the freshness bound of prompt=login/max_age (the throttle windows: test_throttle_windows.py)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from datetime import UTC, datetime

import jwt
import pytest
from identity.authorize import LOGIN_AFTER, login_after
from identity.browser import CsrfSigner
from identity.keys import KeyCipher, SigningKey, generate_private_key, jwk_thumbprint_kid, public_jwk
from identity.keystore import KeyStore
from identity.models import Client, SignedInUser, User
from identity.settings import IdentitySettings
from identity.tokens import IdTokenMinter, InvalidIdTokenHint, half_hash, verify_id_token_hint
from svckit.keyring import KeyRing
from svckit.settings import load_settings

pytestmark = pytest.mark.unit

ISSUER = "http://localhost:9000/"
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
    allowed_scopes=("openid", "profile", "email"),
)
ALICE = SignedInUser(User("local|alice", "alice", "a@example.com", "Alice", ("employee",)), auth_time=1234)


def settings() -> IdentitySettings:
    env = {
        "IDENTITY_KEY_ENCRYPTION_KEY": secrets.token_urlsafe(32),
        "IDENTITY_SESSION_SECRET": secrets.token_urlsafe(32),
        "IDENTITY_ISSUER": ISSUER,
    }
    return load_settings(IdentitySettings, env=env)


def keystore(alg: str = "RS256") -> KeyStore:
    key = generate_private_key(alg)
    jwk = public_jwk(key, "", alg)
    kid = jwk_thumbprint_kid(jwk)
    store = KeyStore(KeyCipher(secrets.token_bytes(32)), alg, 30)
    store._keys = [SigningKey(kid, alg, {**jwk, "kid": kid}, key, datetime.now(UTC), None, None)]
    return store


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_id_tokens_are_signed_with_pyjwt_and_carry_what_oidc_requires(alg: str) -> None:
    config, keys = settings(), keystore(alg)
    token = IdTokenMinter(config, keys).mint(
        CLIENT, ALICE, "openid profile email", nonce="n-1", access_token="the.access.token"
    )
    header = jwt.get_unverified_header(token)
    assert (header["alg"], header["kid"], header["typ"]) == (alg, keys.signer().kid, "JWT")
    found = keys.public_key(header["kid"])
    assert found is not None
    public, _ = found
    claims = jwt.decode(token, public, algorithms=[alg], audience="spa", issuer=ISSUER)
    assert claims["sub"] == "local|alice"
    assert claims["azp"] == "spa"
    assert claims["auth_time"] == 1234
    assert claims["nonce"] == "n-1"
    assert claims["amr"] == ["pwd"]
    assert claims["exp"] - claims["iat"] == config.id_token_ttl_seconds
    assert (claims["name"], claims["email"], claims["email_verified"]) == ("Alice", "a@example.com", True)
    digest = hashlib.sha256(b"the.access.token").digest()[:16]
    assert claims["at_hash"] == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert half_hash("the.access.token") == claims["at_hash"]


def test_scopes_decide_the_released_claims() -> None:
    token = IdTokenMinter(settings(), keystore()).mint(CLIENT, ALICE, "openid")
    claims = jwt.decode(token, options={"verify_signature": False})
    assert "email" not in claims
    assert "name" not in claims
    assert "nonce" not in claims
    assert "at_hash" not in claims


def test_an_expired_id_token_hint_is_accepted_a_foreign_one_is_not() -> None:
    config, keys = settings(), keystore()
    old = jwt.encode(
        {"iss": ISSUER, "sub": "local|alice", "aud": "spa", "exp": 1, "iat": 0},
        keys.signer().private_key,
        algorithm="RS256",
        headers={"kid": keys.signer().kid},
    )
    assert verify_id_token_hint(config, keys, old)["sub"] == "local|alice"
    stranger = keystore()
    forged = jwt.encode(
        {"iss": ISSUER, "sub": "local|alice", "aud": "spa"},
        stranger.signer().private_key,
        algorithm="RS256",
        headers={"kid": keys.signer().kid},  # our kid, someone else's key
    )
    with pytest.raises(InvalidIdTokenHint):
        verify_id_token_hint(config, keys, forged)
    with pytest.raises(InvalidIdTokenHint):
        verify_id_token_hint(config, keys, "not-a-token")


def test_prompt_login_and_max_age_bound_the_sign_in_time() -> None:
    now = 1_000_000.0
    assert login_after([("prompt", "none")], now) is None
    assert login_after([("prompt", "login")], now) == now
    assert login_after([("max_age", "300")], now) == now - 300
    assert login_after([("max_age", "0")], now) == now
    assert login_after([("max_age", "300"), (LOGIN_AFTER, "999999.5")], now) == 999_999.5
    assert login_after([(LOGIN_AFTER, "junk")], now) == now, "unreadable: the strictest bound"
    # A max_age that is not a number of seconds asked for a fresh sign-in all the same: dropping it
    # (as before) let a client's demand for re-authentication pass on an old session.
    for unreadable in ("-5", "-1", "1e3", "+1", "300s", " 300", "", "\u0663"):
        assert login_after([("max_age", unreadable)], now) == now, unreadable


# --- CSRF tokens while IDENTITY_SESSION_SECRET rotates (svckit.keyring) ------------------------------


def test_csrf_tokens_of_a_single_secret_are_those_of_earlier_releases() -> None:
    """One secret without a key id makes the tokens earlier releases made and took, so pods of the
    release before and of this one accept each other's forms while an upgrade rolls."""
    secret = secrets.token_bytes(32)
    key = hashlib.sha256(b"tsp-identity-csrf-v1" + secret).digest()
    before = base64.urlsafe_b64encode(hmac.new(key, b"login\ncookie", hashlib.sha256).digest()).rstrip(b"=")
    signer = CsrfSigner(KeyRing.single(secret))
    assert signer.token("cookie", "login") == before.decode()
    assert signer.verify("cookie", "login", before.decode())


def test_csrf_tokens_are_made_with_the_first_key_and_checked_with_each() -> None:
    old, new = "o" * 40, "n" * 40
    adding, first, after = (
        CsrfSigner(KeyRing.parse(value))
        for value in (f"old:{old},new:{new}", f"new:{new},old:{old}", f"new:{new}")
    )
    made = adding.token("cookie", "consent")
    assert made.startswith("old.")
    assert first.verify("cookie", "consent", made)
    assert adding.verify("cookie", "consent", first.token("cookie", "consent"))
    assert not after.verify("cookie", "consent", made)  # the old key dropped
    assert not first.verify("cookie", "login", made)  # bound to its purpose and cookie as before
    assert not first.verify("other", "consent", made)


def test_the_session_secret_reads_as_a_key_ring() -> None:
    def read(value: str) -> IdentitySettings:
        return IdentitySettings(identity_key_encryption_key="k" * 40, identity_session_secret=value)

    assert read("s" * 40).session_keys.kids == ("",)
    ring = read(f"b:{'b' * 40},a:{'a' * 40}").session_keys
    assert ring.kids == ("b", "a")
    nonces = read(f"b:{'b' * 40},a:{'a' * 40}").dpop_nonce_keys
    assert nonces.kids == ("b", "a")
    assert nonces.key != ring.key  # a key of its own, derived
    with pytest.raises(ValueError, match="must each be named"):
        read(f"{'a' * 40},{'b' * 40}")


def test_the_unknown_user_hash_costs_what_a_stored_hash_costs() -> None:
    """An unknown user name is checked against ``_DUMMY_HASH`` (written out, not hashed at each
    start): with other parameters than the hasher's its check would take another time than a wrong
    password's, and tell which names exist."""
    from identity.passwords import _DUMMY_HASH, _HASHER, hash_secret, verify_secret

    assert not _HASHER.check_needs_rehash(_DUMMY_HASH)
    assert _DUMMY_HASH.split("$")[:4] == hash_secret("anything").split("$")[:4]
    assert _HASHER.verify(_DUMMY_HASH, "no-such-user-dummy-password")
    assert not verify_secret(None, "no-such-user-dummy-password")
