"""Versioned SQL migrations per schema: the service's own files, and migration sets the kit provides.

A service's ``migrations`` folder holds ``NNNN_description.sql`` files and, optionally, ``kit.txt``
naming kit migration sets (one per line, e.g. ``outbox``) to apply into the same schema first. A kit
set is a folder of ``NNNN_*.sql`` under ``svckit/schema/<name>/``: one definition of a table several
services need (the outbox), versioned on its own track, so a change to it is one new kit file that
every writer's next ``migrate`` applies.

Each file runs in its own transaction together with the row that records it, so a failed file leaves
nothing behind. An advisory lock serialises concurrent runners (many replicas, a Helm hook Job); a
session of another role holding it is ended (:mod:`svckit.runnerlock`). A
recorded file whose checksum changed, or that disappeared, stops the run: history is not rewritten
silently. The one sanctioned exception is *adoption*: a kit set may declare that it replaces a file
services used to carry themselves (same name, one of the listed checksums). A database that applied
that file records the kit migration instead, keeping the original ``applied_at``, and nothing is run
again. ``services/kit/tests/test_kit_migrations.py`` migrates a database built by the previous runner
from the previous files to today's layout.

No migration holds up traffic for long: its ``ALTER TABLE`` needs an ACCESS EXCLUSIVE lock, and while
it waits for one (behind a long read transaction, say) every later statement on the table queues
behind it — for as long as that transaction lasts, the whole service stalled (the lock-queue outage).
So the run's session waits at most ``lock_timeout`` seconds for any lock; a migration that did not
get its locks in time is rolled back (nothing of it applied), the queue behind it drains, and it is
tried again after a capped exponential backoff with jitter, ``lock_attempts`` times in all; then the
run stops with :class:`MigrationError` naming the migration (``migrate`` exits 1, the release's
earlier migrations stay applied, later ones are not tried). The services' own lock bound
(``DB_LOCK_TIMEOUT_SECONDS``) is above this one, so a request queued behind a migration waits for it
and is not refused.

After the files, ``role`` (the service's runtime role, ``DB_RUNTIME_ROLE``) is brought to what the
``privileges.txt`` of the folder and of its kit sets declare, under the same lock (:mod:`svckit.roles`):
the connection is the migration role, which owns everything it created.

Bookkeeping: ``<schema>.schema_migrations (source, version, name, checksum, applied_at)`` with
``source`` ``service`` for the schema's own files and ``kit:<set>`` for kit sets. A table from before
kit sets (no ``source`` column) is upgraded in place on the first run.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import re
import zlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from ssl import SSLContext

import asyncpg

from . import runnerlock
from .db import LOCK_ERRORS, milliseconds
from .dbtls import SslMode
from .roles import RoleError, RuntimeRole, apply, read_privileges

log = logging.getLogger("svckit.migrations")

FILENAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
KIT_MANIFEST = "kit.txt"
KIT_ROOT = Path(__file__).parent / "schema"
OWN = "service"
#: defaults of DB_MIGRATION_LOCK_TIMEOUT_SECONDS and DB_MIGRATION_LOCK_ATTEMPTS (svckit.settings).
#: The bound is above Postgres's ``deadlock_timeout`` (1 s by default): only a lock waiter past it makes
#: the server cancel an autovacuum worker holding the table (a plain one, not a wraparound vacuum), so
#: a shorter bound gave up behind every vacuum of a big table, each attempt again.
LOCK_TIMEOUT_SECONDS = 1.5
LOCK_ATTEMPTS = 20
#: the pause after a migration's first lock timeout, doubled after each further one up to the cap
#: (each drawn between half and all of it: replicas of a Job do not retry in step)
LOCK_BACKOFF_SECONDS = 0.5
LOCK_BACKOFF_CAP_SECONDS = 5.0


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


@dataclass(frozen=True)
class Adoption:
    """Kit migration ``version`` replaces a service file named ``NNNN_<name>.sql`` with one of
    ``checksums`` (the exact files services carried before the kit owned the definition)."""

    version: int
    name: str
    checksums: frozenset[str]


@dataclass(frozen=True)
class KitSet:
    """A migration set the kit provides, applied into each schema that lists it in ``kit.txt``."""

    name: str
    adopts: tuple[Adoption, ...] = field(default=())

    @property
    def source(self) -> str:
        return f"kit:{self.name}"

    @property
    def directory(self) -> Path:
        return KIT_ROOT / self.name


KIT_SETS: dict[str, KitSet] = {
    # svckit.outbox: until the kit owned it, timesheets and approvals each carried 0003_outbox.sql.
    "outbox": KitSet(
        "outbox",
        adopts=(
            Adoption(
                1,
                "outbox",
                frozenset({"b2accb24aedd2326f9a94e5e8c1cc975916f52a841b8c8cccdb4f0508159e0c8"}),
            ),
        ),
    ),
    # svckit.replay: the replay memory's fallback while Redis is unavailable (every signed receiver)
    "replay": KitSet("replay"),
}


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


def kit_sets_of(directory: Path | None, extra: Iterable[str] = ()) -> list[KitSet]:
    """The kit sets a migrations folder names in ``kit.txt`` (``#`` starts a comment), plus ``extra``."""
    names: list[str] = []
    manifest = directory / KIT_MANIFEST if directory is not None else None
    if manifest is not None and manifest.exists():
        for line in manifest.read_text(encoding="utf-8").splitlines():
            name = line.split("#", 1)[0].strip()
            if name:
                names.append(name)
    names.extend(extra)
    unknown = [name for name in names if name not in KIT_SETS]
    if unknown:
        raise MigrationError(f"unknown kit migration set(s) {unknown}; known: {sorted(KIT_SETS)}")
    return [KIT_SETS[name] for name in dict.fromkeys(names)]


def _quote_ident(name: str) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise MigrationError(f"schema name {name!r} is not a plain lower-case identifier")
    return f'"{name}"'


async def _bookkeeping(conn: asyncpg.Connection, quoted: str) -> None:
    """Create ``schema_migrations``, or give one from before kit sets its ``source`` column."""
    await conn.execute(
        f"""CREATE TABLE IF NOT EXISTS {quoted}.schema_migrations (
            source text NOT NULL DEFAULT '{OWN}',
            version integer NOT NULL,
            name text NOT NULL,
            checksum text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (source, version))"""
    )
    has_source = await conn.fetchval(
        """SELECT EXISTS (SELECT 1 FROM pg_attribute
                          WHERE attrelid = $1::regclass AND attname = 'source' AND NOT attisdropped)""",
        f"{quoted}.schema_migrations",
    )
    if has_source:
        return
    async with conn.transaction():
        primary_key = await conn.fetchval(
            "SELECT conname FROM pg_constraint WHERE conrelid = $1::regclass AND contype = 'p'",
            f"{quoted}.schema_migrations",
        )
        await conn.execute(
            f"ALTER TABLE {quoted}.schema_migrations ADD COLUMN source text NOT NULL DEFAULT '{OWN}'"
        )
        if primary_key:
            await conn.execute(f'ALTER TABLE {quoted}.schema_migrations DROP CONSTRAINT "{primary_key}"')
        await conn.execute(f"ALTER TABLE {quoted}.schema_migrations ADD PRIMARY KEY (source, version)")
    log.info("migration bookkeeping upgraded (kit migration sets)", extra={"table": "schema_migrations"})


async def _adopt(
    conn: asyncpg.Connection, schema: str, quoted: str, own: Sequence[Migration], kits: Sequence[KitSet]
) -> None:
    """Move records of service files a kit set now owns over to that set (see the module docstring)."""
    files = {m.version for m in own}
    rows = await conn.fetch(
        f"SELECT version, name, checksum FROM {quoted}.schema_migrations WHERE source = $1", OWN
    )
    for row in rows:
        if row["version"] in files:
            continue
        for kit in kits:
            adoption = next(
                (a for a in kit.adopts if a.name == row["name"] and row["checksum"] in a.checksums), None
            )
            if adoption is None:
                continue
            target = {m.version: m for m in discover(kit.directory)}[adoption.version]
            async with conn.transaction():
                await conn.execute(
                    f"""UPDATE {quoted}.schema_migrations
                        SET source = $1, version = $2, name = $3, checksum = $4
                        WHERE source = $5 AND version = $6""",
                    kit.source,
                    target.version,
                    target.name,
                    target.checksum,
                    OWN,
                    row["version"],
                )
            log.info(
                "migration adopted by a kit set",
                extra={
                    "schema": schema,
                    "version": row["version"],
                    "migration": row["name"],
                    "kit": kit.name,
                },
            )
            break


def _check_history(
    schema: str, source: str, migrations: Sequence[Migration], applied: dict[int, asyncpg.Record]
) -> None:
    by_version = {m.version: m for m in migrations}
    where = "" if source == OWN else f" ({source})"
    for version, row in sorted(applied.items()):
        current = by_version.get(version)
        if current is None:
            raise MigrationError(
                f"{schema}: applied migration {version:04d}_{row['name']}{where} has no file any more"
            )
        if current.checksum != row["checksum"]:
            raise MigrationError(
                f"{schema}: migration {version:04d}_{current.name}.sql{where} changed after it was "
                "applied; add a new migration instead of editing an applied one"
            )


async def _bounded(what: str, step: Callable[[], Awaitable[None]], timeout: float, attempts: int) -> None:
    """Run ``step`` (one transaction, so a refused attempt leaves nothing behind) until it gets its
    locks within the session's ``lock_timeout``; between attempts the queue behind it drains."""
    for attempt in range(1, attempts + 1):
        try:
            await step()
            return
        except LOCK_ERRORS:
            if attempt == attempts:
                raise MigrationError(
                    f"{what} could not take its locks: {attempts} attempts each waited {timeout:g} s "
                    "(DB_MIGRATION_LOCK_TIMEOUT_SECONDS) behind another session holding the table (a "
                    "long transaction, a session idle in transaction, an operator's lock); nothing of "
                    "it was applied. Find the session (docs/runbook.md, 'A migration cannot take its "
                    "locks') and run migrate again"
                ) from None
        delay = min(LOCK_BACKOFF_CAP_SECONDS, LOCK_BACKOFF_SECONDS * 2 ** (attempt - 1))
        delay *= random.uniform(0.5, 1.0)
        log.warning(
            "migration waited too long for a lock, rolled back; trying again",
            extra={"step": what, "attempt": attempt, "of": attempts, "retry_in": round(delay, 2)},
        )
        await asyncio.sleep(delay)


async def migrate(
    dsn: str,
    schema: str,
    directory: Path | None,
    *,
    kit: Iterable[str] = (),
    ssl: SSLContext | SslMode | None = None,
    role: RuntimeRole | None = None,
    lock_timeout: float = LOCK_TIMEOUT_SECONDS,
    lock_attempts: int = LOCK_ATTEMPTS,
) -> list[int]:
    """Apply pending migrations: the kit sets first (those ``directory/kit.txt`` names, then
    ``kit``), then the folder's own files. Returns the versions of the folder's own files applied by
    this run (kit migrations applied are logged). ``ssl``: the kit's verifying TLS context
    (``DatabaseSettings.database_tls``), else the URL's own sslmode applies. ``role``: the service's
    runtime role, brought to what the ``privileges.txt`` files declare afterwards (:mod:`svckit.roles`).
    ``lock_timeout``, ``lock_attempts``: how long each step waits for a lock, how often it is tried
    (the module docstring)."""
    own = discover(directory) if directory is not None else []
    kits = kit_sets_of(directory, kit)
    tracks: list[tuple[str, list[Migration]]] = [(k.source, discover(k.directory)) for k in kits]
    tracks.append((OWN, own))
    quoted = _quote_ident(schema)
    conn = await asyncpg.connect(dsn, ssl=ssl)
    try:
        lock_key = zlib.crc32(f"svckit-migrate:{schema}".encode())
        await runnerlock.take(conn, lock_key, f"svckit-migrate:{schema}", transaction=False)
        try:
            # for every statement from here on (the runner lock above is taken without waiting)
            await conn.execute(f"SET lock_timeout = '{milliseconds(lock_timeout)}'")

            async def prepare() -> None:
                async with conn.transaction():
                    await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
                    await _bookkeeping(conn, quoted)
                await _adopt(conn, schema, quoted, own, kits)

            await _bounded(f"{schema}: the migration bookkeeping", prepare, lock_timeout, lock_attempts)
            rows = await conn.fetch(f"SELECT source, version, name, checksum FROM {quoted}.schema_migrations")
            applied: dict[str, dict[int, asyncpg.Record]] = {}
            for row in rows:
                applied.setdefault(row["source"], {})[row["version"]] = row
            known = {source for source, _ in tracks}
            for source, migrations in tracks:
                _check_history(schema, source, migrations, applied.get(source, {}))
            for source in sorted(set(applied) - known):
                raise MigrationError(
                    f"{schema}: migrations of {source} were applied, but this folder no longer names it"
                )
            done: list[int] = []
            for source, migrations in tracks:
                for migration in migrations:
                    if migration.version in applied.get(source, {}):
                        continue

                    async def apply_one(source: str = source, migration: Migration = migration) -> None:
                        async with conn.transaction():
                            await conn.execute(f"SET LOCAL search_path TO {quoted}, public")
                            await conn.execute(migration.sql)
                            await conn.execute(
                                f"INSERT INTO {quoted}.schema_migrations (source, version, name, checksum) "
                                "VALUES ($1, $2, $3, $4)",
                                source,
                                migration.version,
                                migration.name,
                                migration.checksum,
                            )

                    where = "" if source == OWN else f" ({source})"
                    await _bounded(
                        f"{schema}: migration {migration.version:04d}_{migration.name}.sql{where}",
                        apply_one,
                        lock_timeout,
                        lock_attempts,
                    )
                    log.info(
                        "migration applied",
                        extra={
                            "schema": schema,
                            "source": source,
                            "version": migration.version,
                            "migration": migration.name,
                        },
                    )
                    if source == OWN:
                        done.append(migration.version)
            if role is not None:
                try:
                    privileges = read_privileges([*(k.directory for k in kits), directory])

                    async def grant() -> None:
                        assert role is not None
                        await apply(conn, schema, role, privileges)

                    await _bounded(
                        f"{schema}: the runtime role's privileges", grant, lock_timeout, lock_attempts
                    )
                except RoleError as exc:
                    raise MigrationError(f"{schema}: {exc}") from None
                log.info(
                    "runtime role ready",
                    extra={"schema": schema, "role": role.name, "managed": role.manage},
                )
            return done
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", lock_key)
    finally:
        await conn.close()
