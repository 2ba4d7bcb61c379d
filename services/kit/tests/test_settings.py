"""Settings: a bad or missing variable stops the process with one line that names it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from svckit.settings import DatabaseSettings, SettingsError, load_settings, parse_identity_keys

GOOD_KEYS = "k1:" + "a" * 43


@pytest.mark.unit
def test_identity_keys_first_signs_all_verify() -> None:
    keys = parse_identity_keys(f"{GOOD_KEYS},k0:{'b' * 40}")
    assert list(keys) == ["k1", "k0"]
    assert all(len(secret) >= 32 for secret in keys.values())


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
        load_settings(DatabaseSettings, env={"IDENTITY_KEYS": GOOD_KEYS, "PORT": "seventy"})
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "PORT" in err[0]


@pytest.mark.unit
def test_secret_values_are_not_echoed(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SettingsError):
        load_settings(DatabaseSettings, env={"IDENTITY_KEYS": "k1:supersecretbutshort"})
    err = capsys.readouterr().err
    assert "IDENTITY_KEYS" in err
    assert "supersecretbutshort" not in err


@pytest.mark.parametrize(
    ("package", "env", "variable"),
    [
        ("timesheets", {"IDENTITY_KEYS": GOOD_KEYS, "DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ("audit", {"IDENTITY_KEYS": ""}, "IDENTITY_KEYS"),
        ("approvals", {"IDENTITY_KEYS": GOOD_KEYS, "DB_POOL_MAX": "0"}, "DB_POOL_MAX"),
        ("gateway", {"IDENTITY_KEYS": GOOD_KEYS, "LOG_LEVEL": "chatty"}, "LOG_LEVEL"),
    ],
)
def test_service_refuses_to_start(package: str, env: dict[str, str], variable: str) -> None:
    clean = {k: v for k, v in os.environ.items() if k not in {"IDENTITY_KEYS", "DATABASE_URL"}}
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
