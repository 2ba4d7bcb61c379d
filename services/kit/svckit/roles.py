"""Least-privilege database roles: each service connects as a login role of its own.

Why: with one role for everything, whoever gets a service's connection string owns every schema —
they can rewrite the audit trail, re-hash it and re-enable its append-only trigger. So the
*migration role* (the owner ``DATABASE_URL`` given to ``python -m <service> migrate``: ``make dev``'s
and the Helm hook Job's) owns every schema and table, and each service runs as a *runtime role* that
owns nothing and holds exactly the privileges its schema declares:

* ``migrations/privileges.txt`` of the service, and ``privileges.txt`` of each kit set it uses (the
  outbox), one line per table: ``<table> <PRIVILEGE>[, <PRIVILEGE>…]``; ``*`` stands for every table
  no line names. Only ``SELECT``, ``INSERT``, ``UPDATE`` and ``DELETE`` exist here: never
  ``TRUNCATE``, ``REFERENCES`` or ``TRIGGER``, and ``schema_migrations`` is never granted.
* ``USAGE`` on its own schema only (``PUBLIC`` loses every right there), ``CONNECT`` on the database,
  ``USAGE`` on the sequences behind ``serial`` columns of tables it may insert into.
* Default privileges for tables the migration role creates later, so a new table follows ``*``
  until the next ``migrate`` applies the declaration again.

:func:`apply` converges: it revokes what the declaration does not grant, so a privilege removed
from ``privileges.txt`` is gone after the next ``migrate``. With ``manage`` it also creates the role
(``LOGIN``, no other attribute) or sets its password, sending a SCRAM-SHA-256 verifier computed here so
the password itself never reaches the server's statement log. Without ``manage`` (a managed database
whose platform team creates roles: ``docs/database-roles.md``) the role must exist and only grants
change. Either way it refuses a runtime role that could bypass the declaration: a superuser, a role
with ``CREATEROLE``, ``BYPASSRLS`` or ``REPLICATION``, a member of the migration role or of any other
role (``pg_read_all_data``, another service's runtime role, …), or one that owns anything in the schema.

Rotating the password while the pods roll (``docs/database-roles.md``, "Rotating a runtime
password"): Postgres keeps one password per role, so a new password on the role the pods use locks out
every pod still on the old one. The privileges therefore stay on the runtime role ``<role>``, and the
pods log in either as ``<role>`` itself or as ``<role>_b`` (:data:`SECOND_LOGIN`), a member that
inherits them and holds nothing else: ``login`` names the one the pods use, ``other_password`` keeps
the other one able to log in during the overlap; without it the other login is disabled (``NOLOGIN``,
no password). ``<role>`` stays a login role so that a deployment that never rotates is what it was;
once ``<role>_b`` is in use, ``<role>`` is a group role until the next rotation switches back.

Roles are global to a PostgreSQL cluster, unlike schemas: name them per deployment (``make dev``
and the chart use a prefix; tests a prefix per run).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from . import runnerlock

PRIVILEGES_FILE = "privileges.txt"
ALLOWED = ("SELECT", "INSERT", "UPDATE", "DELETE")  # in GRANT order
EVERY_TABLE = "*"
BOOKKEEPING = "schema_migrations"
ROLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
SCRAM_ITERATIONS = 4096
#: the suffix of the runtime role's second login (``<role>_b``), the other half of a rotation
SECOND_LOGIN = "_b"
NAME_MAX = 63


class RoleError(Exception):
    """The runtime role cannot be set up as declared; the message says what to change."""


@dataclass(frozen=True)
class RuntimeRole:
    """The runtime role a service runs as, and the login its pods use. ``password`` is the password
    of that login, set (the roles created) only when ``manage``; without it the roles must exist
    already.

    ``login``: the login the pods use, ``name`` (the default) or :attr:`second_login` (a member of
    ``name`` inheriting its privileges). ``other_password``: the password of the other one of the
    two, which keeps it able to log in while the pods switch; ``None`` disables it once it exists
    (``NOLOGIN``, no password). Only with ``manage``: otherwise the platform team sets both."""

    name: str
    password: str | None = None
    manage: bool = True
    login: str = ""
    other_password: str | None = None

    def __post_init__(self) -> None:
        if not ROLE_NAME.fullmatch(self.name):
            raise RoleError(
                f"role name {self.name!r} must be 1-63 lower-case letters, digits or _ "
                "(not starting with a digit)"
            )
        if self.login not in ("", self.name, self.second_login):
            raise RoleError(
                f"the login of role {self.name} (DB_RUNTIME_LOGIN) is {self.name} or {self.second_login}, "
                f"not {self.login!r}"
            )
        rotating = self.in_use != self.name or (self.manage and self.other_password)
        if rotating and not self.has_second_login:
            raise RoleError(
                f"role name {self.name} is too long for a second login ({self.second_login}: at most "
                f"{NAME_MAX} characters); use a shorter prefix to rotate its password"
            )
        if self.manage:
            if not self.password:
                raise RoleError(
                    f"a password is needed to create or update role {self.in_use} (DB_RUNTIME_PASSWORD), or "
                    "set DB_MANAGE_ROLES=false when the roles are created by the platform team"
                )
            for secret in (self.password, self.other_password):
                if secret is not None and (not secret.isascii() or not secret.isprintable()):
                    raise RoleError(f"the passwords of role {self.name} must be printable ASCII")
            if self.other_password == self.password:
                raise RoleError(
                    f"the two logins of role {self.name} need different passwords "
                    "(DB_RUNTIME_PASSWORD, DB_RUNTIME_OTHER_PASSWORD)"
                )

    @property
    def second_login(self) -> str:
        """``<name>_b``: the login a rotation alternates with ``name``."""
        return self.name + SECOND_LOGIN

    @property
    def has_second_login(self) -> bool:
        """False when ``<name>_b`` would be longer than Postgres' names (it would be truncated)."""
        return len(self.second_login) <= NAME_MAX

    @property
    def in_use(self) -> str:
        """The login the pods use: ``login``, by default ``name``."""
        return self.login or self.name

    @property
    def other(self) -> str:
        """The other login of the two: ``<name>_b`` while ``name`` is in use, and the reverse."""
        return self.second_login if self.in_use == self.name else self.name


@dataclass(frozen=True)
class Privileges:
    """Table → privileges of the runtime role; :data:`EVERY_TABLE` for the tables no entry names."""

    tables: dict[str, tuple[str, ...]]

    @property
    def default(self) -> tuple[str, ...]:
        return self.tables.get(EVERY_TABLE, ())

    def of(self, table: str) -> tuple[str, ...]:
        if table == BOOKKEEPING:
            return ()
        return self.tables.get(table, self.default)


def parse_privileges(text: str, source: str = PRIVILEGES_FILE) -> Privileges:
    """Read a ``privileges.txt`` (``#`` starts a comment)."""
    tables: dict[str, tuple[str, ...]] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source} line {number}"
        table, _, rest = line.partition(" ")
        if table != EVERY_TABLE and not ROLE_NAME.fullmatch(table):
            raise RoleError(f"{where}: {table!r} is not a table name or *")
        if table == BOOKKEEPING:
            raise RoleError(f"{where}: {BOOKKEEPING} belongs to the migration role alone")
        if table in tables:
            raise RoleError(f"{where}: {table} appears twice")
        words = [word.strip().upper() for word in rest.split(",") if word.strip()]
        if not words:
            raise RoleError(f"{where}: name at least one privilege ({', '.join(ALLOWED)})")
        refused = [word for word in words if word not in ALLOWED]
        if refused:
            raise RoleError(
                f"{where}: {', '.join(refused)} cannot be granted to a runtime role (only "
                f"{', '.join(ALLOWED)}; TRUNCATE, REFERENCES and TRIGGER would let it bypass row triggers "
                "or hold tables hostage)"
            )
        tables[table] = tuple(p for p in ALLOWED if p in words)
    return Privileges(tables)


def read_privileges(directories: Iterable[Path | None]) -> Privileges:
    """The declarations of several folders (kit sets, then the service's migrations) merged; naming
    one table in two of them, or ``*`` twice, is an error."""
    merged: dict[str, tuple[str, ...]] = {}
    for directory in directories:
        if directory is None:
            continue
        path = directory / PRIVILEGES_FILE
        if not path.exists():
            continue
        for table, privileges in parse_privileges(path.read_text(encoding="utf-8"), str(path)).tables.items():
            if table in merged:
                raise RoleError(f"{path}: {table} is already declared by another privileges.txt")
            merged[table] = privileges
    return Privileges(merged)


def scram_verifier(password: str, *, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802/7677, as ``\\password``
    in psql computes it): ``ALTER ROLE … PASSWORD '<verifier>'`` then carries no plaintext."""
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def role_url(url: str, role: str, password: str | None) -> str:
    """``url`` with its user and password replaced: the same server, database and options."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    auth = quote(role, safe="") + (":" + quote(password, safe="") if password else "")
    return urlunsplit((parts.scheme, f"{auth}@{host}", parts.path, parts.query, parts.fragment))


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


async def apply(conn: asyncpg.Connection, schema: str, role: RuntimeRole, privileges: Privileges) -> None:
    """Bring ``role`` to exactly ``privileges`` in ``schema`` (see the module docstring), in one
    transaction. The caller is the migration role: the owner of the schema and its tables."""
    async with conn.transaction():
        if role.manage:
            await _create_or_update(conn, role)
        await _refuse_dangerous(conn, schema, role)
        await _grant(conn, schema, role.name, privileges)
        if role.has_second_login:
            await _strip(conn, schema, role.second_login)


async def _exists(conn: asyncpg.Connection, name: str) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", name))


async def _create_or_update(conn: asyncpg.Connection, role: RuntimeRole) -> None:
    """The runtime role first (it holds the privileges), then its second login when a rotation uses
    it or it exists: each able to log in with its password, or ``NOLOGIN`` without one."""
    assert role.password is not None
    passwords = {role.in_use: role.password, role.other: role.other_password}
    await _set_login(conn, role.name, passwords.get(role.name))
    if role.has_second_login:
        second = role.second_login
        if passwords.get(second) is not None or await _exists(conn, second):
            await _set_login(conn, second, passwords.get(second), member_of=role.name)


async def _set_login(
    conn: asyncpg.Connection, name: str, password: str | None, member_of: str | None = None
) -> None:
    """Create ``name`` or update it: ``LOGIN`` with ``password`` (as a SCRAM verifier), or ``NOLOGIN``
    without a password when ``None`` — its open sessions go on, no new one is let in. ``member_of``:
    the runtime role whose privileges this login inherits."""
    login = f"LOGIN PASSWORD {_literal(scram_verifier(password))}" if password else "NOLOGIN PASSWORD NULL"
    if not await _exists(conn, name):
        member = f" IN ROLE {_ident(member_of)}" if member_of else ""
        try:
            async with conn.transaction():  # a savepoint: another runner may create it first
                await conn.execute(
                    f"CREATE ROLE {_ident(name)} {login} NOSUPERUSER NOCREATEDB NOCREATEROLE"
                    f" NOREPLICATION NOBYPASSRLS INHERIT{member}"
                )
                return
        except asyncpg.DuplicateObjectError:
            pass
        except asyncpg.InsufficientPrivilegeError as exc:
            raise RoleError(
                f"cannot create role {name}: the migration role needs CREATEROLE ({exc}); or let the "
                "platform team create it and set DB_MANAGE_ROLES=false"
            ) from None
    try:
        await conn.execute(f"ALTER ROLE {_ident(name)} {login}")
        if member_of is not None:
            await conn.execute(f"ALTER ROLE {_ident(name)} INHERIT")
            if await _grant_level_inheritance(conn):
                # from PostgreSQL 16 inheritance is an option of each grant (the role's INHERIT only
                # the default for new ones): set it on the grant, which creates or updates it
                await conn.execute(f"GRANT {_ident(member_of)} TO {_ident(name)} WITH INHERIT TRUE")
            elif not await conn.fetchval(
                """SELECT 1 FROM pg_auth_members m
                   WHERE m.roleid = (SELECT oid FROM pg_roles WHERE rolname = $1)
                     AND m.member = (SELECT oid FROM pg_roles WHERE rolname = $2)""",
                member_of,
                name,
            ):
                await conn.execute(f"GRANT {_ident(member_of)} TO {_ident(name)}")
    except asyncpg.InsufficientPrivilegeError as exc:
        raise RoleError(
            f"cannot set the password of role {name}: {exc}; give the migration role CREATEROLE (and "
            "ADMIN on that role), or set DB_MANAGE_ROLES=false and manage the role yourself"
        ) from None


async def _refuse_dangerous(conn: asyncpg.Connection, schema: str, role: RuntimeRole) -> None:
    """Refuse a runtime role, or a login of it, that could bypass the declared privileges. The login
    in use must exist and be able to log in; the runtime role is a member of no role, and the second
    login holds the runtime role's privileges by inheritance and nothing besides (no other role, no
    ``ADMIN`` on it)."""
    await _refuse_dangerous_role(conn, schema, role.name, required=True)
    await _refuse_memberships(conn, role.name)
    if role.has_second_login:
        second = role.second_login
        if await _refuse_dangerous_role(conn, schema, second, required=second == role.in_use):
            await _refuse_foreign_membership(conn, role.name, second)
    if not await conn.fetchval("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1", role.in_use):
        raise RoleError(f"runtime role {role.in_use} cannot log in (ALTER ROLE {role.in_use} LOGIN)")


async def _refuse_dangerous_role(conn: asyncpg.Connection, schema: str, name: str, *, required: bool) -> bool:
    """Check one role; ``False`` when it does not exist and need not."""
    row = await conn.fetchrow(
        """SELECT rolsuper, rolcreaterole, rolbypassrls, rolreplication, rolcanlogin,
                  pg_has_role($1, current_user, 'MEMBER') AS member_of_owner,
                  $1 = current_user AS is_owner
           FROM pg_roles WHERE rolname = $1""",
        name,
    )
    if row is None:
        if not required:
            return False
        raise RoleError(
            f"role {name} does not exist: create it (docs/database-roles.md) or set DB_MANAGE_ROLES=true"
        )
    if row["is_owner"]:
        raise RoleError(f"{name} is the migration role itself: the runtime role must be another one")
    attributes = {
        "rolsuper": "SUPERUSER",
        "rolcreaterole": "CREATEROLE",
        "rolbypassrls": "BYPASSRLS",
        "rolreplication": "REPLICATION",
    }
    flags = [word for column, word in attributes.items() if row[column]]
    if flags:
        named = ", ".join(flags)
        raise RoleError(f"runtime role {name} has {named}: it could bypass its privileges; remove that")
    if row["member_of_owner"]:
        raise RoleError(f"runtime role {name} is a member of the migration role {await _whoami(conn)}")
    owned = await conn.fetch(
        """SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = $1 AND c.relowner = (SELECT oid FROM pg_roles WHERE rolname = $2)
           UNION ALL
           SELECT nspname FROM pg_namespace WHERE nspname = $1
             AND nspowner = (SELECT oid FROM pg_roles WHERE rolname = $2)""",
        schema,
        name,
    )
    if owned:
        raise RoleError(
            f"runtime role {name} owns {', '.join(r['relname'] for r in owned)} in schema {schema}: only the "
            f"migration role may own them (ALTER … OWNER TO {await _whoami(conn)})"
        )
    return True


async def _memberships(conn: asyncpg.Connection, name: str) -> list[asyncpg.Record]:
    """The roles ``name`` is a direct member of (``rolname``, ``admin_option``), by name. Direct ones
    suffice: a role reached through another is reached through one of these."""
    return await conn.fetch(
        """SELECT r.rolname, m.admin_option FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid
           WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = $1) ORDER BY r.rolname""",
        name,
    )


def _revokes(groups: Iterable[str], member: str) -> str:
    """The statements that take ``member`` out of ``groups``, to paste into psql."""

    def name(role: str) -> str:
        return role if ROLE_NAME.fullmatch(role) else _ident(role)

    return "; ".join(f"REVOKE {name(group)} FROM {name(member)}" for group in groups)


async def _refuse_memberships(conn: asyncpg.Connection, role: str) -> None:
    """The runtime role is a member of no role at all. A membership hands it that role's rights on
    top of its declaration, whether it inherits them or takes them with ``SET ROLE``: a platform team's
    ``pg_read_all_data`` reads every schema (the audit trail, the identity provider's users),
    ``pg_write_all_data`` changes them, ``pg_signal_backend`` ends other services' sessions, and another
    service's runtime role is that service's schema. (The migration role was checked before: its
    membership anywhere in the chain is refused with its own message.)"""
    groups = [m["rolname"] for m in await _memberships(conn, role)]
    if groups:
        raise RoleError(
            f"runtime role {role} is a member of {', '.join(groups)}: it would hold that role's rights "
            f"beyond its declared privileges (another schema's data, other sessions); run "
            f"{_revokes(groups, role)}"
        )


async def _grant_level_inheritance(conn: asyncpg.Connection) -> bool:
    """PostgreSQL 16 and later keep ``INHERIT`` per membership grant (``GRANT … WITH INHERIT``)."""
    return int(await conn.fetchval("SHOW server_version_num")) >= 160000


async def _refuse_foreign_membership(conn: asyncpg.Connection, role: str, login: str) -> None:
    """``login`` (the second login of ``role``) is worth exactly what ``role`` is: a member of it that
    inherits its privileges, of no other role, without ``ADMIN`` (it could hand ``role`` on)."""
    if not await conn.fetchval("SELECT pg_has_role($1, $2, 'USAGE')", login, role):
        repair = (
            f"GRANT {role} TO {login} WITH INHERIT TRUE"
            if await _grant_level_inheritance(conn)
            else f"GRANT {role} TO {login}; ALTER ROLE {login} INHERIT"
        )
        raise RoleError(f"runtime login {login} does not inherit the privileges of {role}: {repair}")
    memberships = await _memberships(conn, login)
    others = sorted({m["rolname"] for m in memberships if m["rolname"] != role})
    if others:
        raise RoleError(
            f"runtime login {login} is also a member of {', '.join(others)}: it must hold the privileges "
            f"of {role} only ({_revokes(others, login)})"
        )
    if any(m["admin_option"] for m in memberships):
        raise RoleError(
            f"runtime login {login} holds {role} WITH ADMIN OPTION: it could grant {role} to other roles "
            f"(REVOKE ADMIN OPTION FOR {role} FROM {login})"
        )


async def _strip(conn: asyncpg.Connection, schema: str, login: str) -> None:
    """The second login holds nothing of its own in ``schema``: only what it inherits."""
    if not await _exists(conn, login):
        return
    s, r = _ident(schema), _ident(login)
    for statement in (
        f"REVOKE ALL ON SCHEMA {s} FROM {r}",
        f"REVOKE ALL ON ALL TABLES IN SCHEMA {s} FROM {r}",
        f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {s} FROM {r}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {s} REVOKE ALL ON TABLES FROM {r}",
    ):
        await conn.execute(statement)


async def _whoami(conn: asyncpg.Connection) -> str:
    return str(await conn.fetchval("SELECT current_user"))


async def _grant(conn: asyncpg.Connection, schema: str, name: str, privileges: Privileges) -> None:
    s, r = _ident(schema), _ident(name)
    database = _ident(str(await conn.fetchval("SELECT current_database()")))
    tables = [
        row["relname"]
        for row in await conn.fetch(
            """SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'f') ORDER BY c.relname""",
            schema,
        )
    ]
    unknown = sorted(set(privileges.tables) - {EVERY_TABLE} - set(tables))
    if unknown:
        raise RoleError(f"privileges.txt names {', '.join(unknown)}, which schema {schema} does not have")
    statements = [
        f"REVOKE ALL ON SCHEMA {s} FROM PUBLIC",
        f"REVOKE ALL ON SCHEMA {s} FROM {r}",
        f"GRANT USAGE ON SCHEMA {s} TO {r}",
        f"REVOKE ALL ON ALL TABLES IN SCHEMA {s} FROM PUBLIC",
        f"REVOKE ALL ON ALL TABLES IN SCHEMA {s} FROM {r}",
        f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {s} FROM {r}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {s} REVOKE ALL ON TABLES FROM {r}",
    ]
    inserts: list[str] = []
    for table in tables:
        granted = privileges.of(table)
        if granted:
            statements.append(f"GRANT {', '.join(granted)} ON {s}.{_ident(table)} TO {r}")
        if "INSERT" in granted:
            inserts.append(table)
    # serial columns draw from a sequence the inserting role must be allowed to use (identity
    # columns need nothing: Postgres draws their values itself)
    for row in await conn.fetch(
        """SELECT seq.relname FROM pg_depend d
           JOIN pg_class seq ON seq.oid = d.objid AND seq.relkind = 'S'
           JOIN pg_class tab ON tab.oid = d.refobjid
           JOIN pg_namespace n ON n.oid = seq.relnamespace
           WHERE d.deptype = 'a' AND n.nspname = $1 AND tab.relname = ANY($2::text[])""",
        schema,
        inserts,
    ):
        statements.append(f"GRANT USAGE ON SEQUENCE {s}.{_ident(row['relname'])} TO {r}")
    if privileges.default:
        statements.append(
            f"ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT {', '.join(privileges.default)} ON TABLES TO {r}"
        )
    for statement in statements:
        await conn.execute(statement)
    await _grant_connect(conn, database, name)


async def _grant_connect(conn: asyncpg.Connection, database: str, name: str) -> None:
    """``CONNECT`` on the database, granted explicitly (so revoking it from ``PUBLIC`` later changes
    nothing). A migration role that does not own the database may be unable to: then the role must
    have it already, granted by the platform team.

    Every service's role is granted on the same database, whose privileges are one catalog row:
    two migrations granting at once (each service's, in parallel) fail with "tuple concurrently
    updated". A lock for the database's grants, held to the end of this transaction, puts them one
    after the other."""
    what = f"svckit-grant-connect:{database}"
    await runnerlock.take(conn, zlib.crc32(what.encode()), what, transaction=True)
    try:
        async with conn.transaction():
            await conn.execute(f"GRANT CONNECT ON DATABASE {database} TO {_ident(name)}")
    except asyncpg.InsufficientPrivilegeError:
        pass
    if not await conn.fetchval("SELECT has_database_privilege($1, current_database(), 'CONNECT')", name):
        raise RoleError(
            f"role {name} may not connect to database {database} and the migration role cannot grant it: "
            f"GRANT CONNECT ON DATABASE {database} TO {name} as the database's owner"
        )
