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
with ``CREATEROLE``, ``BYPASSRLS`` or ``REPLICATION``, a member of the migration role, or one that
owns anything in the schema.

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


class RoleError(Exception):
    """The runtime role cannot be set up as declared; the message says what to change."""


@dataclass(frozen=True)
class RuntimeRole:
    """The login role a service runs as. ``password`` is set (or the role created) only when
    ``manage``; without it the role must exist already."""

    name: str
    password: str | None = None
    manage: bool = True

    def __post_init__(self) -> None:
        if not ROLE_NAME.fullmatch(self.name):
            raise RoleError(
                f"role name {self.name!r} must be 1-63 lower-case letters, digits or _ "
                "(not starting with a digit)"
            )
        if self.manage:
            if not self.password:
                raise RoleError(
                    f"a password is needed to create or update role {self.name} (DB_RUNTIME_PASSWORD), or "
                    "set DB_MANAGE_ROLES=false when the roles are created by the platform team"
                )
            if not self.password.isascii() or not self.password.isprintable():
                raise RoleError(f"the password of role {self.name} must be printable ASCII")


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
        await _refuse_dangerous(conn, schema, role.name)
        await _grant(conn, schema, role.name, privileges)


async def _create_or_update(conn: asyncpg.Connection, role: RuntimeRole) -> None:
    assert role.password is not None
    verifier = _literal(scram_verifier(role.password))
    exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role.name)
    if not exists:
        try:
            async with conn.transaction():  # a savepoint: another runner may create it first
                await conn.execute(
                    f"CREATE ROLE {_ident(role.name)} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"
                    f" NOREPLICATION NOBYPASSRLS INHERIT PASSWORD {verifier}"
                )
                return
        except asyncpg.DuplicateObjectError:
            pass
        except asyncpg.InsufficientPrivilegeError as exc:
            raise RoleError(
                f"cannot create role {role.name}: the migration role needs CREATEROLE ({exc}); or let the "
                "platform team create it and set DB_MANAGE_ROLES=false"
            ) from None
    try:
        await conn.execute(f"ALTER ROLE {_ident(role.name)} LOGIN PASSWORD {verifier}")
    except asyncpg.InsufficientPrivilegeError as exc:
        raise RoleError(
            f"cannot set the password of role {role.name}: {exc}; give the migration role CREATEROLE (and "
            "ADMIN on that role), or set DB_MANAGE_ROLES=false and manage the role yourself"
        ) from None


async def _refuse_dangerous(conn: asyncpg.Connection, schema: str, name: str) -> None:
    row = await conn.fetchrow(
        """SELECT rolsuper, rolcreaterole, rolbypassrls, rolreplication, rolcanlogin,
                  pg_has_role($1, current_user, 'MEMBER') AS member_of_owner,
                  $1 = current_user AS is_owner
           FROM pg_roles WHERE rolname = $1""",
        name,
    )
    if row is None:
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
    if not row["rolcanlogin"]:
        raise RoleError(f"runtime role {name} cannot log in (ALTER ROLE {name} LOGIN)")
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
