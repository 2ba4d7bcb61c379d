"""``python -m audit verify``: a key file or a file of retained checkpoints it cannot use is a usage
error (exit 2, one line saying why), never a traceback and exit 1, which is the code for "the chain
is BROKEN" (a job that alerts on 1 would page for a typo)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from testkit.clihost import CliHost, run_module

pytestmark = pytest.mark.unit

KEY = {"kty": "OKP", "crv": "Ed25519", "kid": "ck-1", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}


ENV = {"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none", "PATH": "/usr/bin:/bin"}


def verify(*args: str, host: CliHost | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m audit verify ARGS``: a real process, or a run in the session's command host
    (:mod:`testkit.clihost`) for the cases besides the one real run."""
    return run_module("audit", ENV, "verify", *args, host=host)


@pytest.mark.parametrize(
    "jwk",
    [{**KEY, "x": 5}, {**KEY, "x": None}, {**KEY, "x": ["a"]}],
    ids=["number", "null", "list"],
)
def test_a_key_file_with_a_non_string_x_is_a_usage_error(
    tmp_path: Path, jwk: dict[str, object], cli_host: CliHost
) -> None:
    """The first case as a real ``python -m audit verify`` (the usage error's exit 2 as the process
    gives it), the others in the command host."""
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": [jwk]}))
    result = verify("--keys", str(keys), host=None if jwk["x"] == 5 else cli_host)
    assert result.returncode == 2, result.stderr[-500:]
    assert "Traceback" not in result.stderr


def test_a_deeply_nested_checkpoints_file_is_a_usage_error(tmp_path: Path, cli_host: CliHost) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": [KEY]}))
    retained = tmp_path / "checkpoints.json"
    retained.write_text("[" * 100_000 + "]" * 100_000)
    result = verify("--keys", str(keys), "--checkpoints", str(retained), host=cli_host)
    assert result.returncode == 2, result.stderr[-500:]
    assert "Traceback" not in result.stderr
