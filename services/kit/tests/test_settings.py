"""Settings: a bad or missing variable stops the process with one line that names it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from svckit.identity import pair_variable
from svckit.settings import DatabaseSettings, SettingsError, load_settings, parse_identity_keys

from testkit.fixtures import new_pair_keys

GOOD_KEYS = "k1:" + "a" * 43
PAIRS = new_pair_keys()


@pytest.mark.unit
def test_identity_keys_first_signs_all_verify() -> None:
    keys = parse_identity_keys(f"{GOOD_KEYS},k0:{'b' * 40}")
    assert list(keys) == ["k1", "k0"]
    assert all(len(secret) >= 32 for secret in keys.values())


@pytest.mark.unit
@pytest.mark.parametrize(
    "value",
    [
        "Rz7!qP0x:" + "a" * 40,  # a raw secret with a colon in it, taken for kid:secret
        "Rz7qP0xW:short",
        "Rz7qP0xW:" + "a" * 43 + ",Rz7qP0xW:" + "b" * 43,
    ],
)
def test_a_refused_key_entry_is_named_by_position_never_by_its_text(value: str) -> None:
    """A secret set without a kid but holding a ``:`` reads as ``kid:secret``: what stands before the
    colon is then part of the secret, so a refusal names the entry's position, not its "kid"."""
    with pytest.raises(ValueError, match=r"^entry [12]: ") as refused:
        parse_identity_keys(value)
    assert "Rz7" not in str(refused.value)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("nocolon", "kid:secret"),
        ("k1:short", "shorter than 32 bytes"),
        (f"{GOOD_KEYS},{GOOD_KEYS}", "appears twice"),
        ("bad kid!:" + "a" * 40, "may only hold"),
    ],
)
def test_identity_keys_refused(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_identity_keys(value)


@pytest.mark.unit
def test_load_settings_exits_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SettingsError) as exc:
        load_settings(DatabaseSettings, env={**PAIRS, "PORT": "seventy"})
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "PORT" in err[0]


@pytest.mark.unit
def test_secret_values_are_not_echoed(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SettingsError):
        load_settings(DatabaseSettings, env={"IDENTITY_KEYS_GATEWAY_TO_AUDIT": "k1:supersecretbutshort"})
    err = capsys.readouterr().err
    assert "IDENTITY_KEYS_GATEWAY_TO_AUDIT" in err
    assert "supersecretbutshort" not in err


@pytest.mark.parametrize(
    ("package", "env", "variable"),
    [
        ("timesheets", {**PAIRS, "DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ("audit", {**PAIRS, "IDENTITY_KEYS_TIMESHEETS_TO_AUDIT": ""}, "IDENTITY_KEYS_TIMESHEETS_TO_AUDIT"),
        ("approvals", {**PAIRS, "DB_POOL_MAX": "0"}, "DB_POOL_MAX"),
        ("gateway", {**PAIRS, "LOG_LEVEL": "chatty"}, "LOG_LEVEL"),
        (
            "gateway",
            {**PAIRS, "IDENTITY_KEYS_GATEWAY_TO_APPROVALS": ""},
            "IDENTITY_KEYS_GATEWAY_TO_APPROVALS",
        ),
    ],
)
def test_service_refuses_to_start(package: str, env: dict[str, str], variable: str) -> None:
    clean = {k: v for k, v in os.environ.items() if k not in {*PAIRS, "DATABASE_URL"}}
    result = subprocess.run(
        [sys.executable, "-m", package],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]


@pytest.mark.unit
def test_the_providers_pair_is_required_by_the_provider_only() -> None:
    """The bundled identity provider signs its denials' relay to audit with the identity → audit key and
    cannot serve without it; the audit service serves without it (a release using Auth0 runs no
    provider), and then accepts nothing from ``identity``."""
    without = {k: v for k, v in PAIRS.items() if k != pair_variable("identity", "audit")}
    audit = load_settings(DatabaseSettings, env={**without, "SERVICE_NAME": "audit"})
    assert audit.missing_identity_pairs() == ""
    assert "identity" not in audit.identity_verify_keys
    provider = load_settings(DatabaseSettings, env={**without, "SERVICE_NAME": "identity"})
    assert "IDENTITY_KEYS_IDENTITY_TO_AUDIT" in provider.missing_identity_pairs()
    both = load_settings(DatabaseSettings, env={**PAIRS, "SERVICE_NAME": "audit"})
    assert set(both.identity_verify_keys) == {"gateway", "timesheets", "approvals", "identity"}
    assert not load_settings(
        DatabaseSettings, env={**PAIRS, "SERVICE_NAME": "identity"}
    ).missing_identity_pairs()


def test_a_service_reads_only_the_pairs_it_is_an_end_of() -> None:
    settings = load_settings(DatabaseSettings, env={**PAIRS, "SERVICE_NAME": "timesheets"})
    assert set(settings.identity_verify_keys) == {"gateway", "approvals"}
    assert settings.identity_sign_keys("audit") == parse_identity_keys(
        PAIRS[pair_variable("timesheets", "audit")]
    )
    with pytest.raises(ValueError, match="IDENTITY_KEYS_TIMESHEETS_TO_APPROVALS is not set"):
        settings.identity_sign_keys("approvals")


@pytest.mark.unit
def test_a_key_id_may_name_one_sender_only(capsys: pytest.CaptureFixture[str]) -> None:
    shared = {
        pair_variable("gateway", "timesheets"): f"same:{'a' * 43}",
        pair_variable("approvals", "timesheets"): f"same:{'b' * 43}",
    }
    with pytest.raises(SettingsError):
        load_settings(DatabaseSettings, env={**PAIRS, **shared, "SERVICE_NAME": "timesheets"})
    err = capsys.readouterr().err
    assert (
        "'same' is in both IDENTITY_KEYS_GATEWAY_TO_TIMESHEETS and IDENTITY_KEYS_APPROVALS_TO_TIMESHEETS"
        in err
    )
