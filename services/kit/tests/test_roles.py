"""Runtime roles (svckit.roles): declared privileges and nothing more, applied idempotently by migrate.

The unit tests read declarations and compute SCRAM verifiers; the others run ``migrate`` against real
Postgres with roles named for this test session, and look at what each role can actually do.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from svckit.migrations import MigrationError, migrate
from svckit.roles import (
    RoleError,
    RuntimeRole,
    parse_privileges,
    read_privileges,
    role_url,
    scram_verifier,
)

from testkit.fixtures import ROLE_PREFIX, create_database, drop_database, drop_runtime_roles, server_url
from testkit.pgproc import PrivatePostgres, postgres_bin

# ---- declarations (fast tier) ---------------------------------------------------------------------


@pytest.mark.unit
def test_a_declaration_names_tables_and_plain_row_privileges() -> None:
    privileges = parse_privileges(
        "# comment\n* select, insert # every other table\nrecords SELECT,INSERT\n\nlog DELETE, SELECT\n"
    )
    assert privileges.of("anything") == ("SELECT", "INSERT")
    assert privileges.of("records") == ("SELECT", "INSERT")
    assert privileges.of("log") == ("SELECT", "DELETE")  # GRANT order, whatever the file's
    assert privileges.of("schema_migrations") == ()  # never, even under *


@pytest.mark.unit
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("records SELECT, TRUNCATE", "TRUNCATE cannot be granted"),
        ("records TRIGGER", "TRIGGER cannot be granted"),
        ("records REFERENCES", "REFERENCES cannot be granted"),
        ("records ALL", "ALL cannot be granted"),
        ("schema_migrations SELECT", "belongs to the migration role"),
        ("records SELECT\nrecords INSERT", "appears twice"),
        ("records", "name at least one privilege"),
        ("Records; SELECT", "is not a table name"),
    ],
)
def test_a_declaration_that_could_bypass_the_rules_is_refused(text: str, message: str) -> None:
    with pytest.raises(RoleError, match=message):
        parse_privileges(text)


@pytest.mark.unit
def test_declarations_of_kit_sets_and_the_service_merge_without_overlap(tmp_path: Path) -> None:
    kit, own = tmp_path / "kit", tmp_path / "own"
    kit.mkdir()
    own.mkdir()
    (kit / "privileges.txt").write_text("outbox SELECT, INSERT, UPDATE, DELETE\n")
    (own / "privileges.txt").write_text("* SELECT\n")
    merged = read_privileges([kit, None, own, tmp_path / "none"])
    assert merged.of("outbox") == ("SELECT", "INSERT", "UPDATE", "DELETE")
    assert merged.of("entries") == ("SELECT",)
    (own / "privileges.txt").write_text("outbox SELECT\n")
    with pytest.raises(RoleError, match="already declared"):
        read_privileges([kit, own])


@pytest.mark.unit
@pytest.mark.parametrize(
    ("name", "password", "message"),
    [
        ("Audit", "pw", "must be 1-63 lower-case"),
        ("tsp_audit; DROP ROLE x", "pw", "must be 1-63 lower-case"),
        ("tsp_audit", None, "a password is needed"),
        ("tsp_audit", "pässword", "printable ASCII"),
    ],
)
def test_a_runtime_role_is_checked_when_configured(name: str, password: str | None, message: str) -> None:
    with pytest.raises(RoleError, match=message):
        RuntimeRole(name, password)


@pytest.mark.unit
def test_a_role_the_platform_team_manages_needs_no_password() -> None:
    assert RuntimeRole("tsp_audit", None, manage=False).password is None


@pytest.mark.unit
def test_a_role_url_keeps_the_server_database_and_options() -> None:
    url = "postgresql://owner:s3cret@db.internal:6432/app?sslmode=verify-full&application_name=x"
    assert (
        role_url(url, "tsp_audit", "p@ss/word")
        == "postgresql://tsp_audit:p%40ss%2Fword@db.internal:6432/app?sslmode=verify-full&application_name=x"
    )
    assert role_url("postgresql://db/app", "r", None) == "postgresql://r@db/app"


# ---- against Postgres ------------------------------------------------------------------------------


async def test_the_verifier_is_the_one_postgres_computes_itself() -> None:
    """Postgres hashes a plaintext password itself; with its salt, our verifier is byte-identical."""
    name = f"{ROLE_PREFIX}scram"
    admin = await asyncpg.connect(server_url())
    try:
        await admin.execute("SET password_encryption = 'scram-sha-256'")
        await admin.execute(f"CREATE ROLE {name} PASSWORD 'correct horse battery staple'")
        stored = await admin.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = $1", name)
    finally:
        await admin.execute(f"DROP ROLE IF EXISTS {name}")
        await admin.close()
    iterations, salt = stored.split("$")[1].split(":")
    assert (
        scram_verifier(
            "correct horse battery staple", salt=base64.b64decode(salt), iterations=int(iterations)
        )
        == stored
    )


SCHEMA_SQL = """
CREATE TABLE things (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text);
CREATE TABLE counters (id serial PRIMARY KEY, n int NOT NULL DEFAULT 0);
CREATE TABLE secrets (id int PRIMARY KEY);
"""


@pytest.fixture
async def scratch(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """A database of its own and a migrations folder with three tables."""
    name = f"tsp_roles_{secrets.token_hex(4)}"
    url = await create_database(name)
    (tmp_path / "0001_tables.sql").write_text(SCHEMA_SQL)
    try:
        yield url, tmp_path
    finally:
        await drop_database(name)


def role(suffix: str, password: str = "pw-" + "x" * 20, manage: bool = True) -> RuntimeRole:
    return RuntimeRole(f"{ROLE_PREFIX}{suffix}", password, manage=manage)


async def can(url: str, sql: str) -> bool:
    conn = await asyncpg.connect(url, server_settings={"search_path": "app"})
    try:
        await conn.execute(sql)
        return True
    except asyncpg.InsufficientPrivilegeError:
        return False
    finally:
        await conn.close()


async def test_migrate_creates_the_role_with_exactly_the_declared_privileges(
    scratch: tuple[str, Path],
) -> None:
    url, folder = scratch
    (folder / "privileges.txt").write_text("things SELECT, INSERT\ncounters SELECT, INSERT, UPDATE\n")
    runtime = role("app1")
    assert await migrate(url, "app", folder, role=runtime) == [1]
    as_role = role_url(url, runtime.name, runtime.password)
    assert await can(as_role, "INSERT INTO things (name) VALUES ('a')")  # identity column: no sequence grant
    assert await can(as_role, "INSERT INTO counters DEFAULT VALUES")  # serial: its sequence was granted
    assert await can(as_role, "UPDATE counters SET n = n + 1")
    assert not await can(as_role, "UPDATE things SET name = 'b'")
    assert not await can(as_role, "DELETE FROM things")
    assert not await can(as_role, "SELECT * FROM secrets")  # not declared: nothing
    assert not await can(as_role, "SELECT * FROM schema_migrations")
    assert not await can(as_role, "CREATE TABLE mine (id int)")
    assert not await can(as_role, "ALTER TABLE things ADD COLUMN x int")

    owner = await asyncpg.connect(url)
    try:
        attributes = await owner.fetchrow(
            "SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls FROM pg_roles"
            " WHERE rolname = $1",
            runtime.name,
        )
        assert attributes is not None
        assert tuple(attributes.values()) == (True, False, False, False, False)
        owners = await owner.fetch(
            "SELECT DISTINCT pg_get_userbyid(relowner) AS owner FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'app'"
        )
        assert [r["owner"] for r in owners] == [await owner.fetchval("SELECT current_user")]
    finally:
        await owner.close()


async def test_migrate_converges_a_removed_privilege_is_revoked_a_new_table_follows_star(
    scratch: tuple[str, Path],
) -> None:
    url, folder = scratch
    runtime = role("app2")
    as_role = role_url(url, runtime.name, runtime.password)
    (folder / "privileges.txt").write_text("* SELECT, INSERT, UPDATE, DELETE\n")
    await migrate(url, "app", folder, role=runtime)
    assert await can(as_role, "DELETE FROM secrets")
    (folder / "privileges.txt").write_text("* SELECT, INSERT, UPDATE, DELETE\nsecrets SELECT\n")
    await migrate(url, "app", folder, role=runtime)  # nothing to migrate; the role converges
    assert not await can(as_role, "DELETE FROM secrets")
    assert await can(as_role, "SELECT * FROM secrets")
    # a table created later by the migration role follows * at once (default privileges)
    owner = await asyncpg.connect(url)
    try:
        await owner.execute("SET search_path = app; CREATE TABLE early (id int)")
    finally:
        await owner.close()
    assert await can(as_role, "INSERT INTO early VALUES (1)")


async def test_services_migrated_at_once_into_one_database_all_get_their_roles(
    scratch: tuple[str, Path],
) -> None:
    """Every service's migration grants its role CONNECT on the one database: the same catalog row
    (``pg_database.datacl``). Run at once (the packaging tests run the four services' migrations in
    parallel, as separate Jobs could), two such grants failed with "tuple concurrently updated" in CI."""
    url, folder = scratch
    (folder / "privileges.txt").write_text("things SELECT\n")
    for attempt in range(3):
        roles = [role(f"par{attempt}_{n}") for n in range(6)]
        await asyncio.gather(
            *(migrate(url, f"app_{attempt}_{n}", folder, role=runtime) for n, runtime in enumerate(roles))
        )
        for n, runtime in enumerate(roles):
            assert await can(
                role_url(url, runtime.name, runtime.password), f"SELECT * FROM app_{attempt}_{n}.things"
            )


async def test_a_role_that_could_bypass_its_privileges_is_refused(scratch: tuple[str, Path]) -> None:
    url, folder = scratch
    (folder / "privileges.txt").write_text("* SELECT\n")
    owner = await asyncpg.connect(url)
    current = await owner.fetchval("SELECT current_user")
    super_role, member, holder = f"{ROLE_PREFIX}su", f"{ROLE_PREFIX}member", f"{ROLE_PREFIX}holder"
    try:
        await owner.execute(f"CREATE ROLE {super_role} LOGIN SUPERUSER")
        await owner.execute(f'CREATE ROLE {member} LOGIN IN ROLE "{current}"')
        await owner.execute(f"CREATE ROLE {holder} LOGIN")
        with pytest.raises(MigrationError, match="has SUPERUSER"):
            await migrate(url, "app", folder, role=RuntimeRole(super_role, manage=False))
        with pytest.raises(MigrationError, match="is a member of the migration role"):
            await migrate(url, "app", folder, role=RuntimeRole(member, manage=False))
        await owner.execute(f"ALTER TABLE app.secrets OWNER TO {holder}")
        with pytest.raises(MigrationError, match="owns secrets"):
            await migrate(url, "app", folder, role=RuntimeRole(holder, manage=False))
        with pytest.raises(MigrationError, match="migration role itself"):
            await migrate(url, "app", folder, role=RuntimeRole(current, manage=False))
    finally:
        await owner.execute("DROP SCHEMA app CASCADE")
        await owner.close()


@pytest.mark.parametrize("manage", [True, False])
async def test_a_role_that_is_a_member_of_any_other_role_is_refused(
    scratch: tuple[str, Path], manage: bool
) -> None:
    """The runtime role's own memberships (tests/security/test_database_roles.py shows what each
    hands it): refused, named, with the REVOKE to run; a member of a NOINHERIT role too (it can still
    SET ROLE to it). Its second login's memberships are checked apart (test_role_rotation.py)."""
    url, folder = scratch
    (folder / "privileges.txt").write_text("* SELECT\n")
    runtime = role(f"grp{int(manage)}", manage=manage)
    other = f"{ROLE_PREFIX}other{int(manage)}"
    owner = await asyncpg.connect(url)
    try:
        await owner.execute(f"CREATE ROLE {other} NOLOGIN NOINHERIT")
        if not manage:
            await owner.execute(f"CREATE ROLE {runtime.name} LOGIN")
        await migrate(url, "app", folder, role=runtime)  # no membership: accepted
        await owner.execute(f"GRANT pg_read_all_data, {other} TO {runtime.name}")
        with pytest.raises(MigrationError) as caught:
            await migrate(url, "app", folder, role=runtime)
        message = str(caught.value)
        assert f"runtime role {runtime.name} is a member of pg_read_all_data, {other}:" in message
        assert f"REVOKE pg_read_all_data FROM {runtime.name}; REVOKE {other} FROM {runtime.name}" in message
        await owner.execute(f"REVOKE pg_read_all_data FROM {runtime.name}")
        with pytest.raises(MigrationError, match=f"is a member of {other}:"):
            await migrate(url, "app", folder, role=runtime)
        await owner.execute(f"REVOKE {other} FROM {runtime.name}")
        await migrate(url, "app", folder, role=runtime)
    finally:
        await owner.execute(f"DROP ROLE IF EXISTS {other}")
        await owner.close()


async def test_without_managing_roles_the_role_must_exist_and_keeps_its_password(
    scratch: tuple[str, Path],
) -> None:
    url, folder = scratch
    (folder / "privileges.txt").write_text("things SELECT\n")
    missing = RuntimeRole(f"{ROLE_PREFIX}missing", manage=False)
    with pytest.raises(MigrationError, match="does not exist"):
        await migrate(url, "app", folder, role=missing)
    given = f"{ROLE_PREFIX}given"
    owner = await asyncpg.connect(url)
    try:
        await owner.execute("SET password_encryption = 'scram-sha-256'")
        await owner.execute(f"CREATE ROLE {given} LOGIN PASSWORD 'kept'")
        before = await owner.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = $1", given)
        await migrate(url, "app", folder, role=RuntimeRole(given, manage=False))
        assert await owner.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = $1", given) == before
    finally:
        await owner.close()
    assert await can(role_url(url, given, "kept"), "SELECT * FROM things")


async def test_the_session_drops_every_role_it_made_even_with_grants_left_behind(
    scratch: tuple[str, Path],
) -> None:
    url, folder = scratch
    (folder / "privileges.txt").write_text("* SELECT\n")
    prefix = f"{ROLE_PREFIX}drop_"
    await migrate(url, "app", folder, role=RuntimeRole(f"{prefix}a", "pw"))
    await migrate(url, "app2", folder, role=RuntimeRole(f"{prefix}b", "pw"))
    assert sorted(await drop_runtime_roles(server_url(), prefix)) == [f"{prefix}a", f"{prefix}b"]
    admin = await asyncpg.connect(server_url())
    try:
        left = await admin.fetchval("SELECT count(*) FROM pg_roles WHERE starts_with(rolname, $1)", prefix)
        assert left == 0
    finally:
        await admin.close()


@pytest.mark.skipif(postgres_bin() is None, reason="needs the system's PostgreSQL binaries")
async def test_the_password_is_set_as_a_verifier_and_works_where_passwords_are_checked() -> None:
    """On a server that checks passwords (the shared one trusts loopback) and logs every statement:
    the runtime role logs in with its password, not with another, and the plaintext never reaches the
    server's log."""
    server = PrivatePostgres(passwords=True, log_statements=True).start()
    try:
        password = "pw-" + secrets.token_urlsafe(18)
        runtime = RuntimeRole("tsp_timesheets", password)
        owner = server.dsn
        folder = Path(__file__).parents[2] / "timesheets" / "timesheets" / "migrations"
        await migrate(owner, "timesheets", folder, role=runtime)
        conn = await asyncpg.connect(role_url(owner, runtime.name, password))
        assert await conn.fetchval("SELECT current_user") == "tsp_timesheets"
        await conn.close()
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(role_url(owner, runtime.name, "not-" + password))
        # a new password replaces the old one on the next migrate
        await migrate(owner, "timesheets", folder, role=RuntimeRole(runtime.name, password + "2"))
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(role_url(owner, runtime.name, password))
        log = server.logs() + (server.log.read_text(errors="replace") if server.log.exists() else "")
        assert "ALTER ROLE" in log or "CREATE ROLE" in log
        assert password not in log
    finally:
        server.remove()
