"""A DATABASE_URL or REDIS_URL whose password holds a character it must percent-encode (``/``, ``?``,
``#``, ``@``: base64 passwords hold ``/``) is refused at start, in one line naming the variable, and no
part of the password reaches the output.

The clients' URL parsers otherwise cut the URL inside the password and fail on what follows:
asyncpg's ``invalid literal for int() with base 10: '<start of the password>'`` or ``bad query field:
'<rest of the password>@host…'``, redis-py's ``Port could not be cast to integer value as '<…>'`` — in a
traceback on the migration Job's stderr, in the service's JSON log on every retry of its outbox
listener, or as the crash of the process. Each service is started here as in production
(``python -m <service> [migrate]``) and all it writes is captured: each command's first case in a
process of its own, the other passwords' through the same entry in the session's command host.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from urllib.parse import urlsplit

import pytest

from testkit.clihost import CliHost
from testkit.fixtures import free_port, new_pair_keys

PAIRS = new_pair_keys()
#: each password holds one character its URL must percent-encode, between two recognisable halves
PASSWORDS = [
    "Frag0one/Frag0two",
    "Frag0one?Frag0two",
    "Frag0one#Frag0two",
    "Frag0one@Frag0two",
    "1234/Frag0two",  # the authority then ends in a valid-looking port; the '@' follows in the path
    "1234?Frag0two",  # likewise, the '@' in the query
]


def _server() -> str:
    """host:port of the test session's Postgres (a reachable server: a refusal is not a timeout)."""
    return urlsplit(os.environ["DATABASE_URL"]).netloc.rpartition("@")[2]


def _env(env: dict[str, str]) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if k not in {*PAIRS, "DATABASE_URL", "REDIS_URL"}}
    ports = {"PORT": str(free_port()), "METRICS_PORT": str(free_port())}
    return {**clean, **PAIRS, **ports, **env}


def _run(package: str, env: dict[str, str], *args: str, wait: float = 20.0) -> tuple[int | None, str]:
    """Run ``python -m package *args`` until it exits (at most ``wait`` seconds: a service that went
    on serving is stopped); its exit status (``None``: it was still running) and everything written."""
    process = subprocess.Popen(
        [sys.executable, "-m", package, *args],
        env=_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a service that went on serving is stopped with its workers
    )
    try:
        output, _ = process.communicate(timeout=wait)
        return process.returncode, output
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        return None, output


def _refusal(
    host: CliHost, password: str, package: str, env: dict[str, str], *args: str
) -> tuple[int | None, str]:
    """The first password's case of a command in a real ``python -m`` process (:func:`_run`: the
    interpreter's start counted, a service that went on serving stopped), the others' through the same
    entry in the session's command host (:mod:`testkit.clihost`; ~1 s of imports a case saved; one
    that went on serving instead of refusing would not answer within ``wait`` and fail the test)."""
    if password == PASSWORDS[0]:
        return _run(package, env, *args)
    result = host.run(package, _env(env), *args, timeout=20.0)
    return result.returncode, result.stdout + result.stderr


def _assert_refused_without_password(status: int | None, output: str, variable: str) -> None:
    assert "Frag0" not in output, output
    assert status == 2, output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith(f"invalid configuration: {variable} "), output


@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize("command", ["migrate", "serve"])
def test_a_database_url_cut_inside_its_password_is_refused_without_echoing_it(
    password: str, command: str, cli_host: CliHost
) -> None:
    url = f"postgresql://app:{password}@{_server()}/test"
    status, output = _refusal(cli_host, password, "timesheets", {"DATABASE_URL": url}, command)
    _assert_refused_without_password(status, output, "DATABASE_URL")


@pytest.mark.parametrize("password", PASSWORDS)
def test_a_redis_url_cut_inside_its_password_is_refused_without_echoing_it(
    password: str, cli_host: CliHost
) -> None:
    url = f"redis://tsp:{password}@127.0.0.1:6379/0"
    status, output = _refusal(cli_host, password, "gateway", {"REDIS_URL": url})
    _assert_refused_without_password(status, output, "REDIS_URL")


@pytest.mark.unit
@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:Frag0one%2FFrag0two%3F%23%40@db.example:5432/timesheets?sslmode=require",
        "postgresql://postgres@127.0.0.1:5432/postgres",
        "postgres://app:pw@[::1]:5432/x",
        "postgresql://app:pw@h1:5432,h2:5433/x?target_session_attrs=read-write",
        "postgresql:///timesheets?host=/var/run/postgresql",
        "postgresql://db.example:5432/x?user=admin@server&password=pw",  # Azure's user@server
        "postgresql:///db?host=/var/run/postgresql&password=a@b",  # the password as an option
    ],
)
def test_well_formed_database_urls_are_still_taken(url: str) -> None:
    from svckit.settings import DatabaseSettings, load_settings

    settings = load_settings(DatabaseSettings, env={"DATABASE_URL": url, "DB_SSLROOTCERT": ""})
    assert settings.database_url == url


@pytest.mark.unit
@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://:Frag0one%2FFrag0two@127.0.0.1:6379/0",
        "rediss://tsp-gateway:pw@redis.example:6380/2",
        "redis://[::1]:6379",
        "unix:///run/redis.sock?db=0",
        "unix:///run/redis.sock?password=p@ss",
    ],
)
def test_well_formed_redis_urls_are_still_taken(url: str) -> None:
    from svckit.settings import RedisSettings, load_settings

    assert load_settings(RedisSettings, env={"REDIS_URL": url}).redis_url == url


@pytest.mark.unit
@pytest.mark.parametrize(
    ("variable", "url"),
    [
        ("DATABASE_URL", "postgresql://app:pw@fd00::5:5432/x"),
        ("DATABASE_URL", "postgresql://app:pw@h1:5432,fd00::5:5432/x"),
        ("REDIS_URL", "redis://gateway:pw@::1:6379/0"),
    ],
)
def test_an_ipv6_address_without_brackets_is_named_so(
    variable: str, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused as before, but the reason was "percent-encode '/', '?', '#' and '@' in the password":
    wrong advice for an IPv6 literal the author forgot to bracket (what an IPv6-only cluster's
    addresses invite)."""
    from svckit.settings import DatabaseSettings, RedisSettings, SettingsError, load_settings

    model = DatabaseSettings if variable == "DATABASE_URL" else RedisSettings
    with pytest.raises(SettingsError):
        load_settings(model, env={variable: url, "DB_SSLROOTCERT": ""})
    said = capsys.readouterr().err
    assert f"{variable} " in said, said
    assert "IPv6 address in brackets" in said, said
