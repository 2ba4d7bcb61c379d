"""Database TLS against a real PostgreSQL that requires it (a private server started by the test with
certificates made by the test — never the machine's shared Postgres).

``sslmode=verify-full`` with the right CA connects (from the URL's ``sslrootcert``, from
``DB_SSLROOTCERT``, or from the trust store with ``sslrootcert=system``); a wrong CA or a host name
the certificate does not name is refused with a reason a person can act on: the service's
``/readyz`` names it and ``python -m <service> migrate`` exits 1 with one line, at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from svckit.db import Database
from svckit.dbtls import client_ssl, resolve
from svckit.settings import DatabaseSettings, SettingsError, load_settings

from testkit.fixtures import ServiceProcess, new_pair_keys
from testkit.pgproc import postgres_bin
from testkit.pgtls import TlsPostgres, make_ca, make_server_cert

pytestmark = pytest.mark.skipif(postgres_bin() is None, reason="needs the PostgreSQL server packages")

KEYS = new_pair_keys()


class Tls:
    def __init__(self, server: TlsPostgres, ca: Path, wrong_ca: Path) -> None:
        self.server = server
        self.ca = str(ca)
        self.wrong_ca = str(wrong_ca)

    def url(self, host: str = "localhost", **query: str) -> str:
        return self.server.url(host, **query)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tls]:
    certs = tmp_path_factory.mktemp("certs")
    ca = make_ca("Timesheets test database CA")
    other = make_ca("Some other CA")
    ca_path, _ = ca.write(certs, "ca")
    wrong_path, _ = other.write(certs, "wrong-ca")
    server = TlsPostgres(make_server_cert(ca, ["localhost"]))
    server.start()
    try:
        yield Tls(server, ca_path, wrong_path)
    finally:
        server.remove()


async def tls_in_use(url: str, rootcert: str = "") -> bool:
    conn = await asyncpg.connect(url, ssl=client_ssl(url, rootcert))
    try:
        return bool(await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"))
    finally:
        await conn.close()


# --- connecting --------------------------------------------------------------------------------


async def test_verify_full_with_the_right_ca_connects_over_tls(tls: Tls) -> None:
    assert await tls_in_use(tls.url(sslmode="verify-full", sslrootcert=tls.ca))


async def test_db_sslrootcert_supplies_the_ca_and_wins_over_the_url(tls: Tls) -> None:
    settings = load_settings(
        DatabaseSettings,
        env={
            **KEYS,
            "DATABASE_URL": tls.url(sslmode="verify-full", sslrootcert=tls.wrong_ca),
            "DB_SSLROOTCERT": tls.ca,
        },
    )
    database = Database.from_settings(settings, "public")
    try:
        await database.wait_connected(timeout=10)
        await database.check()
    finally:
        await database.close()


async def test_sslrootcert_system_uses_the_trust_store(tls: Tls, monkeypatch: pytest.MonkeyPatch) -> None:
    """``system`` is the image's CA bundle; OpenSSL finds it through SSL_CERT_FILE here, so the test's
    CA stands in for a public one."""
    url = tls.url(sslmode="verify-full", sslrootcert="system")
    with pytest.raises(ssl_refusal()):
        await tls_in_use(url)  # the test CA is in no real trust store
    monkeypatch.setenv("SSL_CERT_FILE", tls.ca)
    assert await tls_in_use(url)


def ssl_refusal() -> type[Exception]:
    import ssl

    return ssl.SSLCertVerificationError


async def test_verify_ca_checks_the_chain_but_not_the_host_name(tls: Tls) -> None:
    """The certificate names ``localhost``; reached as 127.0.0.1, verify-ca passes, verify-full not."""
    assert await tls_in_use(tls.url("127.0.0.1", sslmode="verify-ca", sslrootcert=tls.ca))
    with pytest.raises(ssl_refusal()):
        await tls_in_use(tls.url("127.0.0.1", sslmode="verify-full", sslrootcert=tls.ca))


# --- refusals, as a person sees them -------------------------------------------------------------


async def test_a_wrong_ca_is_refused_with_a_clear_reason(tls: Tls) -> None:
    url = tls.url(sslmode="verify-full", sslrootcert=tls.wrong_ca)
    database = Database(url, tls=resolve(url))
    database.start()
    try:
        deadline = time.monotonic() + 10
        while database.last_error == "not connected yet" and time.monotonic() < deadline:
            await asyncio_sleep(0.05)
        assert not database.connected
        assert database.last_error == (
            "TLS: the database server's certificate was refused: unable to get local issuer "
            f"certificate (sslmode=verify-full, sslrootcert={tls.wrong_ca})"
        )
    finally:
        await database.close()


async def test_a_host_name_mismatch_is_named_without_the_host(tls: Tls) -> None:
    url = tls.url("127.0.0.1", sslmode="verify-full", sslrootcert=tls.ca)
    database = Database(url, tls=resolve(url))
    database.start()
    try:
        deadline = time.monotonic() + 10
        while database.last_error == "not connected yet" and time.monotonic() < deadline:
            await asyncio_sleep(0.05)
        assert database.last_error.startswith(
            "TLS: the database server's certificate was refused: the certificate does not name the "
            "database host"
        )
        assert "127.0.0.1" not in database.last_error
    finally:
        await database.close()


async def asyncio_sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


def readyz(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=5) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def postgres_check(url: str, says: str, timeout: float = 15.0) -> tuple[int, str]:
    """``/readyz``'s status and its ``postgres`` check once the check mentions ``says`` (or at
    ``timeout``): the pool reports its first failure a moment after the process is up."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = readyz(url)
        checks = body.get("checks", {})
        assert isinstance(checks, dict)
        if says in str(checks.get("postgres")) or time.monotonic() > deadline:
            return status, str(checks.get("postgres"))
        time.sleep(0.2)


def test_readyz_of_a_service_names_the_refused_certificate(tls: Tls) -> None:
    env = {
        **KEYS,
        "DATABASE_URL": tls.url(sslmode="verify-full"),
        "DB_SSLROOTCERT": tls.wrong_ca,
    }
    with ServiceProcess("audit", env) as service:
        status, check = postgres_check(service.url, "TLS")
        assert status == 503
        assert check == (
            "failed: TLS: the database server's certificate was refused: unable to get local issuer "
            f"certificate (sslmode=verify-full, sslrootcert={tls.wrong_ca})"
        )


def test_readyz_is_ready_with_the_right_ca(tls: Tls) -> None:
    env = {**KEYS, "DATABASE_URL": tls.url(sslmode="verify-full"), "DB_SSLROOTCERT": tls.ca}
    migrate(env, "audit")
    with ServiceProcess("audit", env) as service:
        deadline = time.monotonic() + 15
        while (status := readyz(service.url)[0]) != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert status == 200


def migrate(env: dict[str, str], service: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", service, "migrate"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_migrate_with_verify_full_succeeds_and_a_wrong_ca_fails_at_once_with_one_line(tls: Tls) -> None:
    good = migrate(
        {**KEYS, "DATABASE_URL": tls.url(sslmode="verify-full", sslrootcert=tls.ca)},
        "timesheets",
    )
    assert good.returncode == 0, good.stderr
    started = time.monotonic()
    bad = migrate(
        {**KEYS, "DATABASE_URL": tls.url(sslmode="verify-full", sslrootcert=tls.wrong_ca)},
        "timesheets",
    )
    assert time.monotonic() - started < 20, "a refused certificate is not waited out like a late database"
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        "migration failed: TLS: the database server's certificate was refused: unable to get local "
        f"issuer certificate (sslmode=verify-full, sslrootcert={tls.wrong_ca})"
    ]
    assert "Traceback" not in bad.stderr + bad.stdout


# --- configuration that cannot work stops the process at start -----------------------------------


@pytest.mark.parametrize(
    ("query", "rootcert", "message"),
    [
        ({"sslmode": "verify-full"}, "", "sslmode=verify-full needs the server's CA but none is named"),
        ({"sslmode": "require", "sslrootcert": "system"}, "", "sslrootcert=system needs sslmode=verify-full"),
        (
            {"sslmode": "prefer"},
            "/etc/ssl/certs/ca-certificates.crt",
            "DB_SSLROOTCERT is set but the sslmode is prefer",
        ),
        (
            {"sslmode": "verify-full"},
            "/nonexistent/ca.crt",
            "DB_SSLROOTCERT: CA file /nonexistent/ca.crt does",
        ),
        (
            {"sslmode": "verify-full", "sslrootcert": "/nope.crt"},
            "",
            "DATABASE_URL sslrootcert: CA file /nope.crt",
        ),
        ({"sslmode": "sometimes"}, "", "DATABASE_URL sslmode must be one of"),
    ],
)
def test_impossible_tls_settings_stop_start_up_with_one_line(
    query: dict[str, str],
    rootcert: str,
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.delenv("PGSSLROOTCERT", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.postgresql/root.crt to fall back on
    from urllib.parse import urlencode

    env = {
        **KEYS,
        "DATABASE_URL": f"postgresql://u:secret-pw@db.internal/app?{urlencode(query)}",
    }
    if rootcert:
        env["DB_SSLROOTCERT"] = rootcert
    with pytest.raises(SettingsError):
        load_settings(DatabaseSettings, env=env)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert message in err[0]
    assert "secret-pw" not in err[0]


def test_modes_without_verification_are_left_to_asyncpg() -> None:
    for mode in ("disable", "allow", "prefer", "require"):
        assert client_ssl(f"postgresql://db/app?sslmode={mode}") is None
    assert client_ssl("postgresql://db/app") is None


def test_db_sslmode_overrides_the_url(tmp_path: Path) -> None:
    """A deployment can insist on a mode whatever URL its Secret holds (the chart's
    externalDatabase.sslMode): imposed non-verifying modes are handed to asyncpg as such."""
    assert client_ssl("postgresql://db/app?sslmode=disable", sslmode_override="require") == "require"
    ca = make_ca("x")
    ca_path, _ = ca.write(tmp_path, "ca")
    context = client_ssl("postgresql://db/app?sslmode=disable", str(ca_path), "verify-full")
    assert not isinstance(context, str | None)
    assert context.check_hostname
    with pytest.raises(ValueError, match="DB_SSLMODE must be one of"):
        resolve("postgresql://db/app", "", "strict")


async def test_db_sslmode_verify_full_refuses_a_wrong_ca_whatever_the_url_says(tls: Tls) -> None:
    url = tls.url(sslmode="disable")
    with pytest.raises(ssl_refusal()):
        await asyncpg.connect(url, ssl=client_ssl(url, tls.wrong_ca, "verify-full"))
    conn = await asyncpg.connect(url, ssl=client_ssl(url, tls.ca, "verify-full"))
    try:
        assert await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    finally:
        await conn.close()
