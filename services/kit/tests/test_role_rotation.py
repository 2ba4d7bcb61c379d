"""Rotating a runtime role's password while the pods roll (svckit.roles, "alternating logins").

Postgres keeps one password per role: a new release that sets a new password on ``<prefix><service>``
leaves every pod still on the old one unable to open a connection (its pool growing, a reconnect after
a failover) until it is replaced. The rotation therefore alternates between two logins that both
inherit the runtime role's privileges, ``<role>`` and ``<role>_b``: the new release's ``migrate``
sets the password of the login not in use and the pods switch to it, the old login keeps its password
until the rotation's last step disables it.

Passwords are checked only by a server that asks for them: the shared test server trusts loopback,
so these tests run against a private cluster with SCRAM authentication (testkit.pgproc), migrated by
its owner (superuser ``postgres``, as the tests' ``DATABASE_URL``). What a login may do is the same on
either server.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from svckit.migrations import MigrationError, migrate
from svckit.roles import RoleError, RuntimeRole, role_url

from testkit.pgproc import PrivatePostgres, postgres_bin

pytestmark = pytest.mark.skipif(postgres_bin() is None, reason="needs the system's PostgreSQL binaries")

SERVICES = Path(__file__).resolve().parents[2]
ROLE = "tsp_timesheets"
OTHER = "tsp_timesheets_b"


@pytest.fixture(scope="module")
def server() -> Iterator[PrivatePostgres]:
    """A private cluster that checks passwords (SCRAM over TCP for every role but ``postgres``)."""
    pg = PrivatePostgres(passwords=True).start()
    try:
        yield pg
    finally:
        pg.remove()


@pytest.fixture
async def owner(server: PrivatePostgres) -> AsyncIterator[str]:
    """A fresh database on that cluster, owned by ``postgres``; its roles dropped afterwards."""
    name = f"rot_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(server.dsn)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        yield server.dsn.rsplit("/", 1)[0] + "/" + name
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        for role in await admin.fetch("SELECT rolname FROM pg_roles WHERE rolname LIKE 'tsp\\_%'"):
            await admin.execute(f'DROP ROLE "{role["rolname"]}"')
    finally:
        await admin.close()


def password() -> str:
    return "pw-" + secrets.token_urlsafe(18)


async def connect(url: str, login: str, secret: str) -> asyncpg.Connection:
    return await asyncpg.connect(role_url(url, login, secret))


async def refused(url: str, login: str, secret: str) -> str:
    """A new connection as ``login`` with ``secret`` is refused; the SQLSTATE class-28 error's name."""
    with pytest.raises((asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)) as caught:
        conn = await connect(url, login, secret)
        await conn.close()
    return type(caught.value).__name__


async def login_state(url: str, name: str) -> tuple[bool, bool]:
    """(may log in, has a password) of role ``name``."""
    admin = await asyncpg.connect(url)
    try:
        row = await admin.fetchrow(
            "SELECT rolcanlogin, rolpassword IS NOT NULL AS has_password FROM pg_authid WHERE rolname = $1", name
        )
        assert row is not None
        return bool(row["rolcanlogin"]), bool(row["has_password"])
    finally:
        await admin.close()


async def migrate_timesheets(url: str, role: RuntimeRole) -> None:
    await migrate(url, "timesheets", SERVICES / "timesheets" / "timesheets" / "migrations", role=role)


async def test_a_rotation_keeps_the_old_password_working_until_its_last_step(owner: str) -> None:
    """The defect: the old release's pods (P1) could not open a new connection once the new release's
    ``migrate`` set P2. With the rotation, P1 keeps working through the roll; only its last step
    (the old login disabled, once no pod uses it) refuses P1."""
    p1, p2 = password(), password()
    await migrate_timesheets(owner, RuntimeRole(ROLE, p1))
    old_pod = await connect(owner, ROLE, p1)  # an old pod, its pool already open
    try:
        # the new release: its pods log in as the other login with P2, the old one keeps P1
        await migrate_timesheets(owner, RuntimeRole(ROLE, p2, login=OTHER, other_password=p1))
        again = await connect(owner, ROLE, p1)  # an old pod's pool grows, or it reconnects
        assert await again.fetchval("SELECT current_user") == ROLE
        await again.close()
        new_pod = await connect(owner, OTHER, p2)
        assert await new_pod.fetchval("SELECT current_user") == OTHER
        await new_pod.close()
        assert await old_pod.fetchval("SELECT 1") == 1
        # the last step, once every pod runs the new release: the old login is disabled
        await migrate_timesheets(owner, RuntimeRole(ROLE, p2, login=OTHER))
        await refused(owner, ROLE, p1)  # no password to check any more, and NOLOGIN
        assert await login_state(owner, ROLE) == (False, False)
        new_pod = await connect(owner, OTHER, p2)
        await new_pod.close()
    finally:
        await old_pod.close()


async def test_setting_a_new_password_on_the_login_in_use_still_replaces_it(owner: str) -> None:
    """Without the rotation (one login, DB_RUNTIME_PASSWORD changed) the behaviour is as before: the
    new password replaces the old at once. This is why a rotation uses the other login."""
    p1, p2 = password(), password()
    await migrate_timesheets(owner, RuntimeRole(ROLE, p1))
    await migrate_timesheets(owner, RuntimeRole(ROLE, p2))
    assert await refused(owner, ROLE, p1) == "InvalidPasswordError"
    conn = await connect(owner, ROLE, p2)
    await conn.close()
