"""FROZEN COPY of svckit/migrations.py before kit migration sets (commit c79eb8f); do not edit.

It builds databases the way deployments before kit sets did, for test_kit_migrations.py.

Versioned SQL migrations per schema.

Files are ``NNNN_description.sql`` in a service's ``migrations`` folder. Each file runs in its own
transaction together with the row that records it, so a failed file leaves nothing behind. An
advisory lock serialises concurrent runners (many replicas, a Helm hook Job). A recorded file whose
checksum changed, or that disappeared, stops the run: history is not rewritten silently.
"""

from __future__ import annotations

import hashlib
import logging
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import asyncpg

log = logging.getLogger("svckit.migrations")

FILENAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(Exception):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(directory: Path) -> list[Migration]:
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = FILENAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files must be named NNNN_name.sql")
        migrations.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"{directory}: two migration files share a version number")
    return migrations


def _quote_ident(name: str) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise MigrationError(f"schema name {name!r} is not a plain lower-case identifier")
    return f'"{name}"'


async def migrate(dsn: str, schema: str, directory: Path) -> list[int]:
    """Apply pending migrations; return the versions applied by this run."""
    migrations = discover(directory)
    quoted = _quote_ident(schema)
    conn = await asyncpg.connect(dsn)
    try:
        lock_key = zlib.crc32(f"svckit-migrate:{schema}".encode())
        await conn.execute("SELECT pg_advisory_lock($1)", lock_key)
        try:
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
            await conn.execute(
                f"""CREATE TABLE IF NOT EXISTS {quoted}.schema_migrations (
                    version integer PRIMARY KEY,
                    name text NOT NULL,
                    checksum text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            rows = await conn.fetch(f"SELECT version, name, checksum FROM {quoted}.schema_migrations")
            applied = {row["version"]: row for row in rows}
            by_version = {m.version: m for m in migrations}
            for version, row in sorted(applied.items()):
                current = by_version.get(version)
                if current is None:
                    raise MigrationError(
                        f"{schema}: applied migration {version:04d}_{row['name']} has no file any more"
                    )
                if current.checksum != row["checksum"]:
                    raise MigrationError(
                        f"{schema}: migration {version:04d}_{current.name}.sql changed after it was "
                        "applied; add a new migration instead of editing an applied one"
                    )
            done = []
            for migration in migrations:
                if migration.version in applied:
                    continue
                async with conn.transaction():
                    await conn.execute(f"SET LOCAL search_path TO {quoted}, public")
                    await conn.execute(migration.sql)
                    await conn.execute(
                        f"INSERT INTO {quoted}.schema_migrations (version, name, checksum) "
                        "VALUES ($1, $2, $3)",
                        migration.version,
                        migration.name,
                        migration.checksum,
                    )
                log.info(
                    "migration applied",
                    extra={
                        "schema": schema,
                        "version": migration.version,
                        "migration": migration.name,
                    },
                )
                done.append(migration.version)
            return done
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", lock_key)
    finally:
        await conn.close()
