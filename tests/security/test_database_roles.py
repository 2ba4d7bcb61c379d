"""What a service's database credentials are worth to an attacker: each attack run as a runtime role.

Each service connects as a login role of its own (svckit.roles) that owns nothing. Whoever steals a
service's ``DATABASE_URL`` gets exactly the rows that service may touch, and the audit service's
role cannot change or remove a record, nor switch off or replace what keeps them append-only. Every
attack below is refused by Postgres' privilege checks themselves (SQLSTATE 42501, "permission
denied" or "must be owner"), before any trigger is reached: the triggers remain a second fence for
the owner.
"""

from __future__ import annotations

import contextlib
import uuid
import zlib
from pathlib import Path

import asyncpg
import pytest
from svckit.migrations import migrate
from svckit.roles import RuntimeRole, role_url

from testkit.fixtures import ROLE_PREFIX, IsolatedEnv, migrate_schema, runtime_role, runtime_url

from .conftest import Edge

SERVICES = Path(__file__).resolve().parents[2] / "services"
SCHEMAS = ("identity", "timesheets", "approvals", "audit")
REFUSED = r"permission denied|must be owner"


@pytest.fixture(scope="module")
async def schemas(isolated_env: IsolatedEnv) -> str:
    """Every service's schema in a database of its own, one audit record in it (written by the
    audit service's own role, as ingestion does). Not the session database: that record's made-up
    hashes would break the session's chain for every audit test that runs after this module."""
    database_url = isolated_env("db_roles")["DATABASE_URL"]
    for schema in SCHEMAS:
        await migrate_schema(database_url, schema, SERVICES / schema / schema)
    audit = await asyncpg.connect(runtime_url(database_url, "audit"))
    try:
        await audit.execute(
            """INSERT INTO audit.records (seq, id, occurred_at, recorded_at, source, actor_issuer,
                   actor_subject, actor_kind, actor_client_id, actor_name, action, resource_type,
                   resource_id, outcome, request_id, details, prev_hash, hash)
               SELECT coalesce(max(seq), 0) + 1, $1, now(), now(), 'timesheets', 'i', 'alice', 'user',
                   'c', 'Alice', 'timesheet.created', 'timesheet', 'x', 'success', NULL, '{}',
                   repeat('0', 64), repeat('a', 64)
               FROM audit.records""",
            uuid.uuid4(),
        )
    finally:
        await audit.close()
    return database_url


async def migrate_schema_as(database_url: str, schema: str, package_dir: Path, role: RuntimeRole) -> None:
    await migrate(database_url, schema, package_dir / "migrations", role=role)


async def as_role(database_url: str, service: str) -> asyncpg.Connection:
    return await asyncpg.connect(runtime_url(database_url, service), server_settings={"search_path": service})


async def refused(conn: asyncpg.Connection, statement: str) -> str:
    """Run ``statement`` expecting Postgres to refuse it for want of privilege; the message."""
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match=REFUSED) as caught:
        await conn.execute(statement)
    return str(caught.value)


AUDIT_ATTACKS = {
    "update": "UPDATE audit.records SET actor_subject = 'mallory'",
    "delete": "DELETE FROM audit.records",
    "truncate": "TRUNCATE audit.records",
    "alter_table": "ALTER TABLE audit.records ADD COLUMN note text",
    "disable_trigger": "ALTER TABLE audit.records DISABLE TRIGGER records_append_only",
    "disable_all_triggers": "ALTER TABLE audit.records DISABLE TRIGGER USER",
    "drop_trigger": "DROP TRIGGER records_append_only ON audit.records",
    "replace_trigger_function": (
        "CREATE OR REPLACE FUNCTION audit.refuse_record_change() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN RETURN NEW; END $$"
    ),
    "drop_table": "DROP TABLE audit.records",
    "take_ownership": f'ALTER TABLE audit.records OWNER TO "{ROLE_PREFIX}audit"',
    "create_table_in_schema": "CREATE TABLE audit.shadow (seq bigint)",
    "create_view_in_schema": "CREATE VIEW audit.records_view AS SELECT 1 AS one",
    "create_in_public": "CREATE TABLE public.shadow (seq bigint)",
    "bookkeeping": "DELETE FROM audit.schema_migrations",
    "replica_role": "SET session_replication_role = replica",  # would skip the triggers
    # the signed checkpoints: append-only for this role as well
    "delete_checkpoints": "DELETE FROM audit.checkpoints",
    "update_checkpoints": "UPDATE audit.checkpoints SET seq = 0",
    "truncate_checkpoints": "TRUNCATE audit.checkpoints",
    "disable_checkpoint_trigger": "ALTER TABLE audit.checkpoints DISABLE TRIGGER USER",
    # the chain's head: moved only by the owner's trigger on records, read by this role
    "update_head": "UPDATE audit.chain_head SET seq = 0",
    "delete_head": "DELETE FROM audit.chain_head",
    "truncate_head": "TRUNCATE audit.chain_head",
    "replace_head_function": (
        "CREATE OR REPLACE FUNCTION audit.advance_chain_head() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN RETURN NULL; END $$"
    ),
    "drop_head_trigger": "DROP TRIGGER records_advance_head ON audit.records",
}


@pytest.mark.parametrize("attack", sorted(AUDIT_ATTACKS))
async def test_the_audit_role_cannot_change_remove_or_unprotect_records(schemas: str, attack: str) -> None:
    conn = await as_role(schemas, "audit")
    try:
        message = await refused(conn, AUDIT_ATTACKS[attack])
        assert "append-only" not in message, "refused by its privileges, not only by the trigger"
        assert await conn.fetchval("SELECT count(*) FROM audit.records") >= 1
        assert await conn.fetchval("SELECT count(*) FROM audit.records WHERE actor_subject = 'mallory'") == 0
    finally:
        await conn.close()


async def test_the_audit_role_may_append_and_read_and_that_is_all(schemas: str) -> None:
    conn = await as_role(schemas, "audit")
    try:
        granted = await conn.fetch(
            "SELECT table_name, privilege_type FROM information_schema.role_table_grants"
            " WHERE grantee = current_user ORDER BY 1, 2"
        )
        assert [(r["table_name"], r["privilege_type"]) for r in granted] == [
            ("chain_head", "SELECT"),
            ("chain_lock", "UPDATE"),  # tables it only locks IN EXCLUSIVE MODE (0012), which takes
            ("checkpoint_lock", "UPDATE"),  # UPDATE; they hold no rows (a CHECK refuses any)
            ("checkpoints", "INSERT"),
            ("checkpoints", "SELECT"),
            ("identity_replay", "DELETE"),  # the replay memory's fallback (kit set replay): nonces,
            ("identity_replay", "INSERT"),  # never records
            ("identity_replay", "SELECT"),
            ("records", "INSERT"),
            ("records", "SELECT"),
        ]
        # its append moved the head all the same: the owner's trigger does that, not this role
        head = await conn.fetchrow("SELECT seq, hash FROM audit.chain_head")
        newest = await conn.fetchrow("SELECT seq, hash FROM audit.records ORDER BY seq DESC LIMIT 1")
        assert head is not None
        assert newest is not None
        assert tuple(head) == tuple(newest)
        owned = await conn.fetchval(
            "SELECT count(*) FROM pg_class"
            " WHERE relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)"
        )
        assert owned == 0
    finally:
        await conn.close()


async def test_the_audit_role_cannot_grant_itself_more(schemas: str) -> None:
    """Without grant options Postgres only warns and grants nothing: the privilege stays absent."""
    conn = await as_role(schemas, "audit")
    try:
        for privilege in ("UPDATE", "DELETE", "TRUNCATE", "TRIGGER"):
            with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
                await conn.execute(f'GRANT {privilege} ON audit.records TO "{ROLE_PREFIX}audit"')
            assert not await conn.fetchval(
                "SELECT has_table_privilege(current_user, 'audit.records', $1)", privilege
            ), privilege
    finally:
        await conn.close()


@pytest.fixture(scope="module")
async def second_login(schemas: str) -> str:
    """The audit role in the middle of a password rotation (docs/database-roles.md, "Rotating a
    runtime password"): its pods switched to the second login ``<role>_b``, the role itself still
    logs in (the old pods). Returns the second login's name; the role's own URL keeps working."""
    role = runtime_role("audit")
    second = RuntimeRole(
        role.name, "rotated-" + "x" * 24, login=role.second_login, other_password=role.password
    )
    await migrate_schema_as(schemas, "audit", SERVICES / "audit" / "audit", second)
    return role.second_login


async def as_login(database_url: str, login: str) -> asyncpg.Connection:
    """A connection as ``login`` (the shared server trusts loopback: no password is checked)."""
    return await asyncpg.connect(
        role_url(database_url, login, None), server_settings={"search_path": "audit"}
    )


@pytest.mark.parametrize("attack", sorted(AUDIT_ATTACKS))
async def test_the_audit_roles_second_login_is_refused_the_same(
    schemas: str, second_login: str, attack: str
) -> None:
    """During a rotation both logins are worth what the audit role is, and no more."""
    conn = await as_login(schemas, second_login)
    try:
        assert await conn.fetchval("SELECT current_user") == second_login
        message = await refused(
            conn, AUDIT_ATTACKS[attack].replace(f'"{ROLE_PREFIX}audit"', f'"{second_login}"')
        )
        assert "append-only" not in message, "refused by its privileges, not only by the trigger"
    finally:
        await conn.close()


async def test_the_audit_roles_second_login_holds_exactly_its_privileges(
    schemas: str, second_login: str
) -> None:
    conn = await as_login(schemas, second_login)
    try:
        differing = await conn.fetch(
            """SELECT c.relname, p.privilege FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
                      unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES',
                                   'TRIGGER']) AS p(privilege)
               WHERE n.nspname = ANY($3::text[]) AND c.relkind = 'r'
                 AND has_table_privilege($1, c.oid, p.privilege)
                     IS DISTINCT FROM has_table_privilege($2, c.oid, p.privilege)""",
            second_login,
            f"{ROLE_PREFIX}audit",
            list(SCHEMAS),
        )
        assert differing == []
        assert await conn.fetchval("SELECT has_table_privilege('audit.records', 'INSERT')")
        await refused(conn, "SELECT * FROM timesheets.entries")
        owned = await conn.fetchval(
            "SELECT count(*) FROM pg_class"
            " WHERE relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)"
        )
        assert owned == 0
    finally:
        await conn.close()
    old_pod = await as_role(schemas, "audit")  # the overlap: the role itself still logs in
    await old_pod.close()


CROSSINGS = [(service, other) for service in SCHEMAS for other in SCHEMAS if service != other]


@pytest.mark.parametrize(("service", "other"), CROSSINGS, ids=[f"{s}-into-{o}" for s, o in CROSSINGS])
async def test_a_service_role_cannot_read_another_services_schema(
    schemas: str, service: str, other: str
) -> None:
    table = {"identity": "users", "timesheets": "entries", "approvals": "decisions", "audit": "records"}[
        other
    ]
    conn = await as_role(schemas, service)
    try:
        await refused(conn, f"SELECT * FROM {other}.{table}")
        await refused(conn, f"CREATE TABLE {other}.planted (id int)")
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("service", "table"),
    [("identity", "users"), ("timesheets", "entries"), ("approvals", "decisions"), ("timesheets", "outbox")],
)
async def test_a_writer_role_uses_rows_but_never_the_tables_themselves(
    schemas: str, service: str, table: str
) -> None:
    conn = await as_role(schemas, service)
    try:
        await conn.execute(f"SELECT count(*) FROM {service}.{table}")  # its rows: yes
        for statement in (
            f"TRUNCATE {service}.{table}",
            f"ALTER TABLE {service}.{table} DISABLE TRIGGER USER",
            f"ALTER TABLE {service}.{table} ADD COLUMN planted text",
            f"DROP TABLE {service}.{table}",
            f"CREATE TABLE {service}.planted (id int)",
            f"DELETE FROM {service}.schema_migrations",
        ):
            await refused(conn, statement)
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("service", "table"),
    [("timesheets", "entries"), ("approvals", "decisions")],
    ids=["entries", "decisions"],
)
async def test_a_writer_role_cannot_erase_the_records_it_only_ever_marks(
    schemas: str, service: str, table: str
) -> None:
    """An entry is deleted by marking it (``deleted_at``), a decision is never deleted: neither
    role holds DELETE there, so a stolen connection string cannot erase what was recorded."""
    conn = await as_role(schemas, service)
    try:
        await refused(conn, f"DELETE FROM {service}.{table}")
        await conn.execute(f"SELECT count(*) FROM {service}.{table}")
    finally:
        await conn.close()


@pytest.mark.parametrize("service", ["timesheets", "approvals", "audit"])
async def test_a_receivers_role_records_and_purges_nonces_and_holds_nothing_more_on_them(
    schemas: str, service: str
) -> None:
    """The replay memory's fallback (svckit.replayfallback): each service that checks signed requests
    records nonces in its own schema and deletes expired ones; it cannot rewrite or drop the table,
    and the audit role's rights there are that table's only (its records: see above)."""
    conn = await as_role(schemas, service)
    try:
        granted = await conn.fetch(
            "SELECT privilege_type FROM information_schema.role_table_grants"
            " WHERE grantee = current_user AND table_schema = $1 AND table_name = 'identity_replay'"
            " ORDER BY 1",
            service,
        )
        assert [r["privilege_type"] for r in granted] == ["DELETE", "INSERT", "SELECT"]
        record = (
            f"INSERT INTO {service}.identity_replay (nonce, expires_at) VALUES ($1, now())"
            " ON CONFLICT (nonce) DO NOTHING RETURNING true"
        )
        nonce = f"roles-{service}-0123456789abcdef"
        assert await conn.fetchval(record, nonce) is True
        assert await conn.fetchval(record, nonce) is None  # a replay
        await conn.execute(f"DELETE FROM {service}.identity_replay WHERE expires_at <= now()")
        for statement in (
            f"UPDATE {service}.identity_replay SET expires_at = now() + interval '1 day'",
            f"TRUNCATE {service}.identity_replay",
            f"ALTER TABLE {service}.identity_replay ADD COLUMN planted text",
            f"DROP TABLE {service}.identity_replay",
        ):
            await refused(conn, statement)
    finally:
        await conn.close()


async def test_the_timesheets_role_still_purges_expired_idempotency_keys(schemas: str) -> None:
    conn = await as_role(schemas, "timesheets")
    try:
        await conn.execute(
            "DELETE FROM timesheets.idempotency_keys WHERE created_at < now() - interval '1 day'"
        )
    finally:
        await conn.close()


async def test_the_outbox_stays_writable_by_its_writer(schemas: str) -> None:
    """The relay marks attempts and deletes what the audit service acknowledged."""
    conn = await as_role(schemas, "approvals")
    try:
        async with conn.transaction():
            event = uuid.uuid4()
            await conn.execute(
                "INSERT INTO approvals.outbox (id, occurred_at, payload) VALUES ($1, now(), '{}')", event
            )
            await conn.execute("UPDATE approvals.outbox SET attempts = attempts + 1 WHERE id = $1", event)
            assert (
                await conn.fetchval("DELETE FROM approvals.outbox WHERE id = $1 RETURNING attempts", event)
                == 1
            )
    finally:
        await conn.close()


async def test_a_producers_delivery_receipt_is_out_of_the_audit_roles_reach(schemas: str) -> None:
    """The receipt the relay holds the audit trail to (svckit.receipts) lives in the producer's schema:
    the audit service's role can neither read nor change it, and the producer's own role may only move
    the one row (no second receipt planted, the row never removed)."""
    audit = await as_role(schemas, "audit")
    try:
        await refused(audit, "SELECT * FROM timesheets.outbox_receipt")
        await refused(audit, "UPDATE timesheets.outbox_receipt SET mismatch_at = NULL")
    finally:
        await audit.close()
    conn = await as_role(schemas, "timesheets")
    try:
        async with conn.transaction():
            await conn.execute("UPDATE timesheets.outbox_receipt SET seq = seq")
        await refused(conn, "DELETE FROM timesheets.outbox_receipt")
        await refused(conn, "INSERT INTO timesheets.outbox_receipt (singleton) VALUES (true)")
        await refused(conn, "TRUNCATE timesheets.outbox_receipt")
    finally:
        await conn.close()


async def test_the_platform_under_test_runs_as_its_runtime_roles(edge: Edge) -> None:
    """The suites start services as in production: their pools connect as the runtime roles."""
    owner = await asyncpg.connect(edge.database)
    try:
        rows = await owner.fetch(
            "SELECT DISTINCT application_name, usename FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name IN ('audit', 'timesheets')"
        )
    finally:
        await owner.close()
    seen = {r["application_name"]: r["usename"] for r in rows}
    assert seen == {"audit": f"{ROLE_PREFIX}audit", "timesheets": f"{ROLE_PREFIX}timesheets"}


async def test_another_services_role_cannot_hold_up_the_audit_chain(schemas: str) -> None:
    """Appending to the trail is serialised by a transaction-scoped advisory lock whose key is public
    (``crc32("audit-chain:<schema>")``, audit/store.py) and is passed to ``append_documents`` by the
    caller. Advisory locks belong to the database, not to a schema, and take no privilege: any role
    that may connect — the timesheets service's, stolen from its pod — can take that key and keep
    it. Every append then waits behind it: nothing reaches the trail (the outboxes grow, the
    gateway's denial queue overflows and drops records) for as long as the thief's session lives."""
    chain_lock = zlib.crc32(b"audit-chain:audit")
    thief = await as_role(schemas, "timesheets")
    audit = await as_role(schemas, "audit")
    try:
        await thief.execute("SELECT pg_advisory_lock($1)", chain_lock)
        async with audit.transaction():
            await audit.execute("SET LOCAL lock_timeout = '1s'")
            head = await audit.fetchrow("SELECT seq, hash FROM audit.chain_head")
            assert head is not None
            try:
                await audit.fetch(
                    "SELECT * FROM audit.append_documents($1, $2, $3, '{}'::text[], '{}'::text[])",
                    chain_lock,
                    head["seq"],
                    head["hash"],
                )
            except asyncpg.LockNotAvailableError:
                pytest.fail("the audit service's append waits on a lock the timesheets role holds")
        # nor can it take the lock the append does take (no privilege in the audit schema at all)
        for table in ("chain_lock", "checkpoint_lock"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                async with thief.transaction():
                    await thief.execute(f"LOCK TABLE audit.{table} IN EXCLUSIVE MODE")
    finally:
        await thief.close()
        await audit.close()


async def test_another_services_role_cannot_hold_up_the_migration_job(schemas: str) -> None:
    """The migration runner serialises runs with advisory locks, which any role that may connect can
    take. Only migrations, running as the owner, are meant to: a session of any other role holding
    one is ended by the next run, which then goes on (it says so in its log), instead of the
    pre-upgrade Job waiting behind it for ever."""
    import asyncio

    from svckit.migrations import migrate

    from testkit.fixtures import runtime_role

    thief = await as_role(schemas, "timesheets")
    try:
        await thief.execute("SELECT pg_advisory_lock($1)", zlib.crc32(b"svckit-migrate:audit"))
        migrations = SERVICES / "audit" / "audit" / "migrations"
        await asyncio.wait_for(migrate(schemas, "audit", migrations, role=runtime_role("audit")), timeout=20)
        assert not await _alive(thief)
    finally:
        await thief.close()


@pytest.mark.parametrize("transaction", [False, True])
async def test_a_runner_lock_held_by_another_role_is_taken_back(schemas: str, transaction: bool) -> None:
    """The same for the lock on the database's grants (transaction-scoped), through the kit's taker."""
    import asyncio

    from svckit import runnerlock

    key = zlib.crc32(f"svckit-test-{uuid.uuid4()}".encode())
    thief = await as_role(schemas, "approvals")
    owner = await asyncpg.connect(schemas)
    try:
        await thief.execute("SELECT pg_advisory_lock($1)", key)
        async with owner.transaction():
            await asyncio.wait_for(runnerlock.take(owner, key, "test", transaction=transaction), timeout=10)
            assert not await _alive(thief)
        if not transaction:
            await owner.execute("SELECT pg_advisory_unlock($1)", key)
    finally:
        await thief.close()
        await owner.close()


async def _alive(conn: asyncpg.Connection) -> bool:
    try:
        await conn.fetchval("SELECT 1")
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        return False
    return True


async def _read_the_trail(conn: asyncpg.Connection, audit: asyncpg.Connection) -> None:
    await conn.fetch("SELECT actor_subject FROM audit.records")


async def _change_users(conn: asyncpg.Connection, audit: asyncpg.Connection) -> None:
    async with conn.transaction():  # changes nothing for good: the privilege check is the point
        await conn.execute("UPDATE identity.users SET name = 'mallory'")
        raise _RolledBack


async def _end_the_audit_session(conn: asyncpg.Connection, audit: asyncpg.Connection) -> None:
    pid = audit.get_server_pid()
    assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)


async def _append_to_the_trail(conn: asyncpg.Connection, audit: asyncpg.Connection) -> None:
    async with conn.transaction():
        await conn.execute("LOCK TABLE audit.chain_lock IN EXCLUSIVE MODE")  # the audit role's UPDATE
        raise _RolledBack


class _RolledBack(Exception):
    """Raised inside an attack's transaction: it got that far, and leaves nothing behind."""


#: a role a platform team might grant the runtime role, and what the timesheets role could then do
FOREIGN_MEMBERSHIPS = {
    "pg_read_all_data": _read_the_trail,
    "pg_write_all_data": _change_users,
    "pg_signal_backend": _end_the_audit_session,
    "audit": _append_to_the_trail,  # another service's runtime role
}


@pytest.mark.parametrize("granted", sorted(FOREIGN_MEMBERSHIPS))
async def test_a_runtime_role_that_is_a_member_of_another_role_is_refused(schemas: str, granted: str) -> None:
    """The runtime role's own memberships: a platform team's ``GRANT pg_read_all_data TO
    <prefix>timesheets`` (or another predefined role, or another service's runtime role) hands it other
    schemas than its own. Shown as the timesheets role (refused before the grant, done after it);
    ``migrate`` then refuses the role, naming the membership and the ``REVOKE`` to run."""
    from svckit.migrations import MigrationError

    from testkit.fixtures import runtime_role

    role = runtime_role("timesheets").name
    group = ROLE_PREFIX + granted if granted in SCHEMAS else granted
    attack = FOREIGN_MEMBERSHIPS[granted]
    owner = await asyncpg.connect(schemas)
    try:
        for granted_now in (False, True):
            if granted_now:
                await owner.execute(f'GRANT "{group}" TO "{role}"')
            thief, audit = await as_role(schemas, "timesheets"), await as_role(schemas, "audit")
            try:
                if granted_now:
                    with contextlib.suppress(_RolledBack):
                        await attack(thief, audit)
                else:
                    with pytest.raises(asyncpg.InsufficientPrivilegeError), contextlib.suppress(_RolledBack):
                        await attack(thief, audit)
            finally:
                await thief.close()
                await audit.close()
        with pytest.raises(MigrationError) as caught:
            await migrate_schema_as(
                schemas, "timesheets", SERVICES / "timesheets" / "timesheets", runtime_role("timesheets")
            )
        assert f"runtime role {role} is a member of {group}" in str(caught.value)
        assert f"REVOKE {group} FROM {role}" in str(caught.value)
    finally:
        await owner.execute(f'REVOKE "{group}" FROM "{role}"')
        await owner.close()
    # revoked, the role is what it was: migrate accepts it again
    await migrate_schema_as(
        schemas, "timesheets", SERVICES / "timesheets" / "timesheets", runtime_role("timesheets")
    )
