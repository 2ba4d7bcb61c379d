"""The URLs the chart composes carry any password: it percent-encodes what it interpolates.

The generated Secret builds DATABASE_URL (the demo PostgreSQL's owner), database-url-<service> (each
runtime role) and redis-url-<component> (each Redis user) from passwords it generated or found in the
live Secret (`lookup`: an operator who rotated one by writing their own keeps it). A password holding
``/ ? # @ :`` or a space, put in raw, ends the URL's authority early (svckit.urlshape then refuses the
pod at start), and one holding ``%41`` would silently become another password. Helm renders here against
a Kubernetes API server on loopback (tests/packaging/fakeapi.py) that holds such a live Secret; each URL
must parse back — with the parser the clients use — to exactly that password, pass svckit's settings,
and log in to a real PostgreSQL (SCRAM) and a real Redis (the chart's own ACL file) as that user from a
separate process given the URL as its environment.
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
from collections.abc import Iterator
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg
import pytest
from svckit.settings import DatabaseSettings, RedisSettings, load_settings
from svckit.urlshape import unreadable

from testkit.pgproc import PrivatePostgres, postgres_bin
from testkit.redisproc import PrivateRedis
from tests.packaging.fakeapi import fake_api
from tests.packaging.support import SCENARIOS, render, secret_data, upgrade_over

SERVICES = ("identity", "timesheets", "approvals", "audit")
REDIS_USERS = ("gateway", "identity", "timesheets", "approvals", "audit")

# every character RFC 3986 gives a meaning inside an authority, a space, '+' (a space in a query, not
# in a userinfo), '%41' (a valid escape: decoded raw it would be 'A'), non-ASCII; one per key
HARD = "p@ss/w?rd#x:y%41 z+~ü"
PASSWORDS = {
    "postgres-password": "own" + HARD,
    **{f"database-password-{s}": f"{s}-{HARD}" for s in SERVICES},
    "redis-password": "probe" + HARD,
    **{f"redis-password-{c}": f"{HARD}-{c}" for c in REDIS_USERS},
}


@pytest.fixture(scope="module")
def data() -> dict[str, str]:
    """The generated Secret an upgrade renders over a live one holding :data:`PASSWORDS`."""
    with fake_api() as api:
        return secret_data(upgrade_over(api, PASSWORDS, SCENARIOS["values-dev.yaml"]))


def urls(data: dict[str, str]) -> Iterator[tuple[str, str, str]]:
    """(Secret key of the URL, the user it names, the password it must carry)."""
    yield "database-url", "timesheets", PASSWORDS["postgres-password"]
    for s in SERVICES:
        yield f"database-url-{s}", f"ts_{s}", PASSWORDS[f"database-password-{s}"]
    for c in REDIS_USERS:
        yield f"redis-url-{c}", c, PASSWORDS[f"redis-password-{c}"]


def test_each_url_parses_to_exactly_its_password(data: dict[str, str]) -> None:
    for key, user, password in urls(data):
        assert unreadable(data[key]) is None, key  # what svckit's settings check at start
        parts = urlsplit(data[key])
        assert parts.username is not None, key
        assert parts.password is not None, key
        # asyncpg and redis-py both unquote the userinfo with urllib.parse.unquote
        assert (unquote(parts.username), unquote(parts.password)) == (user, password), key
        assert parts.hostname in ("ts-timesheets-postgresql", "ts-timesheets-redis"), key
        assert parts.port in (5432, 6379), key


def test_the_services_settings_accept_each_url(data: dict[str, str]) -> None:
    class Both(DatabaseSettings, RedisSettings):
        pass

    for s in SERVICES:
        env = {"DATABASE_URL": data[f"database-url-{s}"], "REDIS_URL": data[f"redis-url-{s}"]}
        settings = load_settings(Both, env)  # exits with status 2 on an unreadable URL
        assert settings.database_url == env["DATABASE_URL"]


# A process that reads the URLs from its environment as a service does (load_settings) and connects
# as the kit does (asyncpg with the settings' TLS; svckit.redisguard's client), printing who it is.
PROBE = """
import asyncio, asyncpg
from svckit.redisguard import bounded_client
from svckit.settings import DatabaseSettings, RedisSettings, load_settings

class Both(DatabaseSettings, RedisSettings):
    pass

async def main() -> None:
    s = load_settings(Both)
    conn = await asyncpg.connect(s.database_url, ssl=s.database_tls.context())
    print(await conn.fetchval("SELECT current_user"))
    await conn.close()
    redis = bounded_client(s.redis_url, timeout=5)
    print(await redis.ping())
    await redis.aclose()

asyncio.run(main())
"""


def moved(url: str, port: int) -> str:
    """``url`` with its host:port moved to 127.0.0.1:``port``, its userinfo kept byte for byte."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{userinfo}@127.0.0.1:{port}"))


async def create_roles(dsn: str) -> None:
    """The database and the login roles the chart's URLs name, with their passwords (as the migration
    Job sets them)."""
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute("CREATE DATABASE timesheets")  # the path of every URL the chart builds
        await admin.execute("SET password_encryption = 'scram-sha-256'")
        roles = [("timesheets", PASSWORDS["postgres-password"])]
        roles += [(f"ts_{s}", PASSWORDS[f"database-password-{s}"]) for s in SERVICES]
        for role, password in roles:
            sql = await admin.fetchval(
                "SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', $1::text, $2::text)", role, password
            )
            await admin.execute(sql)
    finally:
        await admin.close()


@pytest.mark.skipif(postgres_bin() is None, reason="no PostgreSQL binaries to run a server with passwords")
def test_a_process_given_the_urls_logs_in_to_postgres_and_redis(data: dict[str, str]) -> None:
    with PrivatePostgres(passwords=True) as pg, PrivateRedis(acl=data["redis-users.acl"]) as redis:
        asyncio.run(create_roles(pg.dsn))
        for key, user, _ in urls(data):
            if not key.startswith("database-url"):
                continue
            component = key.removeprefix("database-url").removeprefix("-") or "timesheets"
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "DATABASE_URL": moved(data[key], pg.port),
                "REDIS_URL": moved(data[f"redis-url-{component}"], redis.port),
            }
            done = subprocess.run(
                [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60
            )
            assert done.returncode == 0, (key, done.stderr[-2000:])
            assert done.stdout.split() == [user, "True"], key


@pytest.mark.parametrize(("host", "netloc_host"), [("db.internal", "db.internal"), ("fd00::5", "[fd00::5]")])
def test_the_runtime_roles_urls_name_an_external_host_readably(host: str, netloc_host: str) -> None:
    """externalDatabase.host may be an IPv6 address (the schema allows ':'): in a URL it is bracketed
    (RFC 3986 §3.2.2), or its colons read as a port."""
    values = {
        "oidc": {"issuers": ["https://login.example.com/"]},
        "externalDatabase": {"existingSecret": "db", "host": host, "port": 6432, "database": "timesheets"},
        "externalRedis": {"existingSecret": "redis", "sharedCredential": False},
    }
    (secret,) = [o for o in render(values) if o["kind"] == "Secret"]
    url = base64.b64decode(secret["data"]["database-url-audit"]).decode()
    assert unreadable(url) is None
    parts = urlsplit(url)
    assert (parts.hostname, parts.port, parts.path) == (host, 6432, "/timesheets")
    assert parts.netloc.endswith(f"@{netloc_host}:6432")
