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
    try:
        conn = await connect(url, login, secret)
    except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError) as exc:
        return type(exc).__name__
    await conn.close()
    pytest.fail(f"{login} logged in with a password that should be refused")


async def login_state(url: str, name: str) -> tuple[bool, bool]:
    """(may log in, has a password) of role ``name``."""
    admin = await asyncpg.connect(url)
    try:
        row = await admin.fetchrow(
            "SELECT rolcanlogin, rolpassword IS NOT NULL AS has_password FROM pg_authid WHERE rolname = $1",
            name,
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


INSERT_ENTRY = """INSERT INTO timesheets.entries
                  (id, owner_issuer, owner_subject, date, project, hours, source)
                  VALUES (gen_random_uuid(), 'https://issuer', 'alice', current_date, 'p', 1, 'api')"""
ATTACKS = {
    "delete_entries": "DELETE FROM timesheets.entries",
    "truncate": "TRUNCATE timesheets.entries",
    "alter_table": "ALTER TABLE timesheets.entries ADD COLUMN x int",
    "bookkeeping": "SELECT * FROM timesheets.schema_migrations",
    "other_schema_read": "SELECT * FROM approvals.decisions",
    "other_schema_write": "DELETE FROM approvals.decisions",
    "create_in_schema": "CREATE TABLE timesheets.shadow (id int)",
    "set_role_owner": "SET ROLE postgres",
    "create_role": "CREATE ROLE mallory LOGIN",
}


async def what_it_may(url: str, login: str, secret: str) -> dict[str, bool]:
    """What a connection as ``login`` may do: insert an entry, and each attack (True: allowed)."""
    conn = await connect(url, login, secret)
    try:
        outcome = {}
        for name, statement in {"insert_entry": INSERT_ENTRY, **ATTACKS}.items():
            try:
                async with conn.transaction():
                    await conn.execute(statement)
                outcome[name] = True
            except asyncpg.InsufficientPrivilegeError:
                outcome[name] = False
        return outcome
    finally:
        await conn.close()


async def migrate_approvals(url: str) -> None:
    await migrate(
        url,
        "approvals",
        SERVICES / "approvals" / "approvals" / "migrations",
        role=RuntimeRole("tsp_approvals", password()),
    )


async def test_two_rotations_alternate_the_logins_with_the_same_privileges_throughout(owner: str) -> None:
    """add (a second login, the pods unchanged) → promote (the pods switch) → drop (the old login
    disabled), twice: a → b → a. Both logins may exactly what the runtime role may during each
    overlap: their service's rows, nothing of another schema, nothing of the owner's."""
    await migrate_approvals(owner)
    expected = {"insert_entry": True, **{name: False for name in ATTACKS}}
    p1, p2, p3 = password(), password(), password()
    steps = [
        # (the login in use, its password, the other login's password): what the chart's Secret holds
        (ROLE, p1, None),  # before: one login
        (ROLE, p1, p2),  # add: the second login can log in, no pod uses it yet
        (OTHER, p2, p1),  # promote: the pods switch, the old login still works
        (OTHER, p2, None),  # drop: the old login disabled
        (OTHER, p2, p3),  # add: the runtime role itself logs in again, with a new password
        (ROLE, p3, p2),  # promote
        (ROLE, p3, None),  # drop
    ]
    for login, secret, other_secret in steps:
        role = RuntimeRole(ROLE, secret, login=login, other_password=other_secret)
        await migrate_timesheets(owner, role)
        assert await what_it_may(owner, login, secret) == expected, (login, other_secret)
        if other_secret is not None:
            assert await what_it_may(owner, role.other, other_secret) == expected, (role.other, login)
        elif (login, secret) != (ROLE, p1):  # dropped: the other login cannot log in any more
            assert await login_state(owner, role.other) == (False, False)
            await refused(owner, role.other, p2 if login == ROLE else p1)
    # the first password is long gone, the second too once its login was dropped
    await refused(owner, ROLE, p1)
    await refused(owner, OTHER, p2)


async def test_migrate_run_again_in_the_same_step_changes_nothing(owner: str) -> None:
    """The chart's Job runs on every upgrade: a step run twice leaves both logins working."""
    p1, p2 = password(), password()
    await migrate_timesheets(owner, RuntimeRole(ROLE, p1))
    for _ in range(2):
        await migrate_timesheets(owner, RuntimeRole(ROLE, p2, login=OTHER, other_password=p1))
    for login, secret in ((ROLE, p1), (OTHER, p2)):
        conn = await connect(owner, login, secret)
        await conn.close()


@pytest.mark.unit
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"login": "tsp_audit_c"}, "is tsp_audit or tsp_audit_b"),
        ({"login": "tsp_timesheets_b"}, "is tsp_audit or tsp_audit_b"),
        ({"other_password": "pw"}, "need different passwords"),
        ({"other_password": "pässword"}, "printable ASCII"),
    ],
)
def test_a_rotation_is_checked_when_configured(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(RoleError, match=message):
        RuntimeRole("tsp_audit", "pw", **kwargs)  # type: ignore[arg-type]


@pytest.mark.unit
def test_a_name_too_long_for_a_second_login_rotates_not_but_works_as_before() -> None:
    name = "r" * 62
    assert RuntimeRole(name, "pw").in_use == name
    with pytest.raises(RoleError, match="too long for a second login"):
        RuntimeRole(name, "pw", other_password="pw2")
    assert RuntimeRole("tsp_audit", None, manage=False, login="tsp_audit_b").other == "tsp_audit"


async def test_platform_team_second_login_is_checked_like_the_role(owner: str) -> None:
    """DB_MANAGE_ROLES=false: the platform team creates ``<role>_b`` (docs/database-roles.md);
    ``migrate`` uses it as created, and refuses one that is worth more than the runtime role."""
    p1, p2 = password(), password()
    await migrate_timesheets(owner, RuntimeRole(ROLE, p1))
    admin = await asyncpg.connect(owner)
    try:
        # as the documentation says: a login, no other attribute, a member of the runtime role
        await admin.execute("SET password_encryption = 'scram-sha-256'")
        await admin.execute(f"CREATE ROLE {OTHER} LOGIN PASSWORD '{p2}' IN ROLE {ROLE}")
        unmanaged = RuntimeRole(ROLE, manage=False, login=OTHER)
        await migrate_timesheets(owner, unmanaged)
        expected = {"insert_entry": True, **{name: False for name in ATTACKS}}
        await migrate_approvals(owner)
        assert await what_it_may(owner, OTHER, p2) == expected
        assert await what_it_may(owner, ROLE, p1) == expected  # the platform team disables it later
        # what it may not be
        # a privilege of its own in the schema is revoked: it holds what the runtime role holds
        await admin.execute(f"GRANT DELETE, TRUNCATE ON timesheets.entries TO {OTHER}")
        await migrate_timesheets(owner, unmanaged)
        assert await what_it_may(owner, OTHER, p2) == expected
        grant_level = int(await admin.fetchval("SHOW server_version_num")) >= 160000
        worth_more = [  # (what makes it so, what migrate's refusal names, the undoing)
            (
                f"CREATE ROLE tsp_extra NOLOGIN; GRANT tsp_extra TO {OTHER}",
                "also a member of tsp_extra",
                f"REVOKE tsp_extra FROM {OTHER}",
            ),
            (
                f"GRANT {ROLE} TO {OTHER} WITH ADMIN OPTION",
                "WITH ADMIN OPTION",
                f"REVOKE ADMIN OPTION FOR {ROLE} FROM {OTHER}",
            ),
            # a membership that does not inherit: the role's NOINHERIT up to PostgreSQL 15, the
            # grant's own option from 16 on (where the role's attribute only sets the default for
            # new grants)
            (
                f"GRANT {ROLE} TO {OTHER} WITH INHERIT FALSE"
                if grant_level
                else f"ALTER ROLE {OTHER} NOINHERIT",
                "does not inherit.*" + ("WITH INHERIT TRUE" if grant_level else "INHERIT"),
                f"GRANT {ROLE} TO {OTHER} WITH INHERIT TRUE"
                if grant_level
                else f"ALTER ROLE {OTHER} INHERIT",
            ),
            (f"ALTER ROLE {OTHER} CREATEROLE", "has CREATEROLE", f"ALTER ROLE {OTHER} NOCREATEROLE"),
            (f"ALTER ROLE {OTHER} SUPERUSER", "has SUPERUSER", f"ALTER ROLE {OTHER} NOSUPERUSER"),
            (f"GRANT postgres TO {OTHER}", "member of", f"REVOKE postgres FROM {OTHER}"),
            (
                f"ALTER TABLE timesheets.day_locks OWNER TO {OTHER}",
                "owns day_locks",
                "ALTER TABLE timesheets.day_locks OWNER TO postgres",
            ),
        ]
        for make, named, undo in worth_more:
            await admin.execute(make)
            with pytest.raises(MigrationError, match=named):
                await migrate_timesheets(owner, unmanaged)
            await admin.execute(undo)
        # the platform team's last step: the old login cannot log in any more
        await admin.execute(f"ALTER ROLE {ROLE} NOLOGIN PASSWORD NULL")
        await migrate_timesheets(owner, unmanaged)
        await refused(owner, ROLE, p1)
        assert await what_it_may(owner, OTHER, p2) == expected
        # and a missing or disabled login in use is named
        with pytest.raises(MigrationError, match=f"{ROLE} cannot log in"):
            await migrate_timesheets(owner, RuntimeRole(ROLE, manage=False))
    finally:
        await admin.execute("DROP ROLE IF EXISTS tsp_extra")
        await admin.close()


async def test_a_second_login_that_does_not_exist_is_named(owner: str) -> None:
    await migrate_timesheets(owner, RuntimeRole(ROLE, password()))
    with pytest.raises(MigrationError, match=f"role {OTHER} does not exist"):
        await migrate_timesheets(owner, RuntimeRole(ROLE, manage=False, login=OTHER))
