"""Settings: safe defaults, empty chart values meaning "default", refusals naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest
from gateway.issuers import IssuerConfigError, load_issuers
from gateway.settings import GatewaySettings
from svckit.settings import SettingsError, load_settings

from testkit.fixtures import new_pair_keys

pytestmark = pytest.mark.unit

KEYS = new_pair_keys()


def test_defaults_and_empty_values() -> None:
    settings = load_settings(GatewaySettings, env={**KEYS, "SPA_SCOPES": "", "CORS_ORIGINS": ""})
    assert settings.port == 8080
    assert settings.oidc_issuer == ["http://localhost:9000/"]
    assert settings.jwt_algorithms == ["RS256", "PS256", "ES256", "EdDSA"]
    assert settings.spa_scopes.startswith("openid profile email read:timesheets")
    assert settings.cors_origins == []
    assert settings.spa_issuer == "http://localhost:9000/"
    many = load_settings(
        GatewaySettings, env={**KEYS, "OIDC_ISSUER": "https://a.example/, https://b.example/"}
    )
    assert many.oidc_issuer == ["https://a.example/", "https://b.example/"]


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("JWT_ALGORITHMS", "RS256,HS256", "HS256"),
        ("JWT_ALGORITHMS", "none", "none"),
        ("JWT_LEEWAY_SECONDS", "3600", "JWT_LEEWAY_SECONDS"),
        ("OIDC_ISSUER", "localhost:9000", "OIDC_ISSUER"),
        ("SPA_AUTH_FLOW", "password", "SPA_AUTH_FLOW"),
        ("TIMESHEETS_URL", "ftp://x", "TIMESHEETS_URL"),
        ("MAX_TOKEN_BYTES", "10", "MAX_TOKEN_BYTES"),
    ],
)
def test_bad_values_name_the_variable(
    variable: str, value: str, fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SettingsError):
        load_settings(GatewaySettings, env={**KEYS, variable: value})
    err = capsys.readouterr().err
    assert variable in err
    assert fragment in err
    assert not any(value.split(":")[1].split(",")[0] in err for value in KEYS.values())


def test_issuers_file_may_only_refine_trusted_issuers(tmp_path: Path) -> None:
    path = tmp_path / "issuers.yaml"
    path.write_text('issuers:\n  "https://evil.example/": {jwks_uri: "https://evil.example/jwks"}\n')
    settings = load_settings(GatewaySettings, env={**KEYS, "GATEWAY_ISSUERS_FILE": str(path)})
    with pytest.raises(IssuerConfigError, match="not listed in OIDC_ISSUER"):
        load_issuers(settings)
    path.write_text('issuers:\n  "http://localhost:9000/": {algorithms: [HS256]}\n')
    with pytest.raises(IssuerConfigError, match="not in JWT_ALGORITHMS"):
        load_issuers(settings)
    path.write_text('issuers:\n  "http://localhost:9000/": {scope_claims: [roles]}\n')
    with pytest.raises(IssuerConfigError, match="unknown scope claims"):
        load_issuers(settings)


def test_the_dpop_nonce_secret_is_one_secret_or_named_keys(capsys: pytest.CaptureFixture[str]) -> None:
    """DPOP_NONCE_SECRET reads like the other multi-key settings while it rotates (svckit.keyring):
    one secret alone as before, or kid:secret[,kid:secret…], the first making nonces."""
    on = {**KEYS, "DPOP_NONCES": "true"}
    single = load_settings(GatewaySettings, env={**on, "DPOP_NONCE_SECRET": "n" * 40})
    assert single.dpop_nonce_keys is not None
    assert single.dpop_nonce_keys.kids == ("",)
    ring = load_settings(GatewaySettings, env={**on, "DPOP_NONCE_SECRET": f"new:{'b' * 40},old:{'a' * 40}"})
    assert ring.dpop_nonce_keys is not None
    assert ring.dpop_nonce_keys.kids == ("new", "old")
    assert load_settings(GatewaySettings, env={**KEYS, "DPOP_NONCE_SECRET": "n" * 40}).dpop_nonce_keys is None
    for value in ("", "short", f"{'a' * 40},{'b' * 40}", f"new:{'b' * 40},old:short-secret"):
        with pytest.raises(SettingsError):
            load_settings(GatewaySettings, env={**on, "DPOP_NONCE_SECRET": value})
        err = capsys.readouterr().err
        assert "DPOP_NONCE_SECRET" in err
        assert ("a" * 40) not in err
        assert "short-secret" not in err


@pytest.mark.parametrize(("limit", "pool"), [("32", "32"), ("300", "256"), ("2", "1")])
def test_an_in_flight_limit_at_or_above_the_pool_is_refused(
    limit: str, pool: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """At or above the pool's size the per-subject limit lets one token's slow readers hold every
    pooled connection to a service: the setting would protect nothing while looking as if it did."""
    env = {**KEYS, "GATEWAY_MAX_IN_FLIGHT_PER_SUBJECT": limit, "UPSTREAM_POOL_SIZE": pool}
    with pytest.raises(SettingsError):
        load_settings(GatewaySettings, env=env)
    err = capsys.readouterr().err
    assert "GATEWAY_MAX_IN_FLIGHT_PER_SUBJECT" in err
    assert f"UPSTREAM_POOL_SIZE ({pool})" in err


@pytest.mark.parametrize(
    ("env", "limit"),
    [
        ({}, 64),  # the default, below the default pool of 256
        ({"UPSTREAM_POOL_SIZE": "16"}, 15),  # unset: follows a smaller pool
        ({"UPSTREAM_POOL_SIZE": "1"}, 0),  # one connection cannot be shared out
        ({"UPSTREAM_POOL_SIZE": "16", "GATEWAY_MAX_IN_FLIGHT_PER_SUBJECT": "0"}, 0),  # off, explicitly
        ({"UPSTREAM_POOL_SIZE": "16", "GATEWAY_MAX_IN_FLIGHT_PER_SUBJECT": "15"}, 15),
    ],
)
def test_the_in_flight_limit_stays_below_the_pool(env: dict[str, str], limit: int) -> None:
    settings = load_settings(GatewaySettings, env={**KEYS, **env})
    assert settings.in_flight_limit == limit
