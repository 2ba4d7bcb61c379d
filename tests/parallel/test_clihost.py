"""The command host (:mod:`testkit.clihost`) answers a command line as ``python -m`` does.

The tests that run the corpus of a command line's cases in the host (the identity admin commands,
``python -m audit verify``) rely on it giving what a real process gives: the same exit code, stdout
and stderr — for a success, a usage error of argparse, a ``SystemExit`` with a message, a refusal
of the settings read from the environment given, stdin given as text. Each case here runs both ways
and the answers are compared whole. (A traceback is the one answer that differs: its frames are the
host's; the tests only ever assert there is none.)
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from testkit.clihost import CliHost, run_module

BASE_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}

CASES = [
    pytest.param(("json.tool",), '{"b": [1, 2], "a": "\\u20ac"}', {}, id="success-stdin-stdout"),
    pytest.param(("json.tool",), '{"b": ', {}, id="systemexit-message"),
    pytest.param(("json.tool", "--no-such-option"), None, {}, id="argparse-usage-error"),
    pytest.param(("identity", "add-user", "erin"), None, {}, id="identity-settings-from-env"),
    pytest.param(
        ("audit", "verify", "--since", "abc"),
        None,
        {"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none"},
        id="audit-verify-usage-error",
    ),
]


@pytest.fixture(scope="module")
def host() -> Iterator[CliHost]:
    host = CliHost()
    yield host
    host.close()


@pytest.mark.parametrize(("argv", "stdin", "env"), CASES)
def test_the_host_answers_as_the_interpreter_does(
    host: CliHost, argv: tuple[str, ...], stdin: str | None, env: dict[str, str]
) -> None:
    environment = {**BASE_ENV, **env}
    real = run_module(argv[0], environment, *argv[1:], stdin=stdin)
    hosted = host.run(argv[0], environment, *argv[1:], stdin=stdin)
    assert (hosted.returncode, hosted.stdout, hosted.stderr) == (real.returncode, real.stdout, real.stderr)
    assert "Traceback" not in real.stderr


def test_a_run_leaves_the_host_as_it_found_it(host: CliHost) -> None:
    """The environment and stdin of one run are not the next run's."""
    key = {"IDENTITY_KEY_ENCRYPTION_KEY": "k" * 44}
    first = host.run("identity", {**BASE_ENV, **key}, "add-user", "erin", stdin="a-password\n")
    assert first.returncode == 2
    assert "IDENTITY_SESSION_SECRET is required" in first.stderr
    assert "IDENTITY_KEY_ENCRYPTION_KEY" not in first.stderr
    second = host.run("identity", BASE_ENV, "add-user", "erin")
    assert "IDENTITY_KEY_ENCRYPTION_KEY is required" in second.stderr, "the first run's variable was kept"
    assert host.run("json.tool", BASE_ENV, stdin='{"x": 1}').returncode == 0
    assert host.run("json.tool", BASE_ENV).returncode == 1, "the first run's stdin was read again"


def test_a_runs_logging_set_up_is_not_the_next_runs(host: CliHost) -> None:
    """A service's command points the root logger at its own stdout (svckit.logs); ``python -m audit
    export-checkpoints`` logs without setting logging up (its retries on stderr, as the last-resort
    handler prints them). After the first, the host printed a logging error with a traceback for
    each retry: the handler still wrote to the first run's closed stdout."""
    from testkit.fixtures import new_pair_keys

    keyed = {**BASE_ENV, **new_pair_keys(), "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none"}
    configured = host.run("timesheets", keyed, "outbox", "accept-audit-restore")
    assert configured.returncode == 2, configured.stderr
    env = {**BASE_ENV, "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/x", "DB_CONNECT_TIMEOUT_SECONDS": "1"}
    real = run_module("audit", env, "export-checkpoints")
    hosted = host.run("audit", env, "export-checkpoints")
    assert "database not reachable, retrying" in real.stderr
    assert (hosted.returncode, hosted.stdout, hosted.stderr) == (real.returncode, real.stdout, real.stderr)
