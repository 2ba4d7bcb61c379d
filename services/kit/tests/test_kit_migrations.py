"""Kit migration sets: the outbox table comes from one kit migration, and databases deployed before
that keep migrating cleanly.

``legacy/`` freezes what deployments ran before the kit owned the outbox: the previous runner
(``runner_v1.py``) and the services' previous migration files (each with its own ``0003_outbox.sql``).
A database built from those, holding data, is migrated with today's runner and today's folders and
must end up exactly like a fresh one: same tables, columns, indexes and constraints, its rows
untouched, and a second run with nothing to do.
"""

from __future__ import annotations

import importlib.util
import secrets
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import asyncpg
import pytest
from svckit import migrations
from svckit.migrations import Adoption, KitSet, MigrationError, migrate

from testkit.fixtures import create_database, drop_database

HERE = Path(__file__).parent
SERVICES = HERE.parents[1]
LEGACY = HERE / "legacy"
WRITERS = ("timesheets", "approvals")


def folder(service: str) -> Path:
    return SERVICES / service / service / "migrations"


def legacy_runner() -> ModuleType:
    name = "legacy_migrations_runner_v1"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, LEGACY / "runner_v1.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is made
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture
async def new_database(test_run_id: str) -> AsyncIterator[Any]:
    made: list[str] = []

    async def new(label: str) -> str:
        name = f"tsp_test_{test_run_id}_km_{label}_{secrets.token_hex(2)}"
        made.append(name)
        return await create_database(name)

    yield new
    for name in made:
        await drop_database(name)


async def catalog(url: str, schema: str) -> dict[str, list[tuple[Any, ...]]]:
    """What a schema holds, comparable across databases: columns, indexes, constraints, functions."""
    conn = await asyncpg.connect(url)
    try:
        columns = await conn.fetch(
            """SELECT table_name, column_name, data_type, is_nullable, column_default, is_identity
               FROM information_schema.columns
               WHERE table_schema = $1 AND table_name <> 'schema_migrations'
               ORDER BY table_name, column_name""",
            schema,
        )
        indexes = await conn.fetch(
            """SELECT tablename, indexname, indexdef FROM pg_indexes
               WHERE schemaname = $1 AND tablename <> 'schema_migrations' ORDER BY indexname""",
            schema,
        )
        constraints = await conn.fetch(
            """SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid)
               FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
               WHERE n.nspname = $1 AND c.conname NOT LIKE 'schema_migrations%' ORDER BY c.conname""",
            schema,
        )
        functions = await conn.fetch(
            """SELECT p.proname, pg_get_functiondef(p.oid) FROM pg_proc p
               JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = $1 ORDER BY p.proname""",
            schema,
        )
        triggers = await conn.fetch(
            """SELECT tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t
               JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = $1 AND NOT t.tgisinternal ORDER BY tgname""",
            schema,
        )
    finally:
        await conn.close()
    return {
        "columns": [tuple(r) for r in columns],
        "indexes": [tuple(r) for r in indexes],
        "constraints": [tuple(r) for r in constraints],
        "functions": [tuple(r) for r in functions],
        "triggers": [tuple(r) for r in triggers],
    }


async def history(url: str, schema: str) -> list[tuple[str, int, str]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(f"SELECT source, version, name FROM {schema}.schema_migrations ORDER BY 1, 2")
    finally:
        await conn.close()
    return [(r["source"], r["version"], r["name"]) for r in rows]


async def test_the_writers_get_the_outbox_from_the_kit(new_database: Any) -> None:
    url = await new_database("fresh")
    for service in (*WRITERS, "identity"):  # the provider writes its denials to the trail too
        assert "outbox" in (folder(service) / "kit.txt").read_text().split("\n")
        assert not list(folder(service).glob("*outbox*.sql")), "the outbox DDL lives in the kit only"
        await migrate(url, service, folder(service))
        assert (service and "kit:outbox", 1, "outbox") in await history(url, service)
        assert "outbox" in {c[0] for c in (await catalog(url, service))["columns"]}


async def test_a_database_deployed_before_kit_sets_migrates_to_the_same_layout(new_database: Any) -> None:
    legacy, fresh = await new_database("legacy"), await new_database("fresh")
    runner = legacy_runner()
    entry_id, event_id = uuid.uuid4(), uuid.uuid4()
    for service in WRITERS:
        assert await runner.migrate(legacy, service, LEGACY / service) == [1, 2, 3]
    conn = await asyncpg.connect(legacy)
    try:  # data written before the upgrade, including an event still waiting in the outbox
        await conn.execute(
            """INSERT INTO timesheets.entries (id, owner_issuer, owner_subject, date, project, hours, source)
               VALUES ($1, 'i', 's', '2026-01-02', 'p', 7.5, 'api')""",
            entry_id,
        )
        await conn.execute(
            "INSERT INTO approvals.outbox (id, occurred_at, payload) VALUES ($1, now(), '{}')", event_id
        )
        applied_before = await conn.fetchval(
            "SELECT applied_at FROM timesheets.schema_migrations WHERE version = 3"
        )
    finally:
        await conn.close()

    for service in WRITERS:
        # of its own, only what was added after the legacy layout (its versions 1 to 3)
        added = [m.version for m in migrations.discover(folder(service)) if m.version > 3]
        assert await migrate(legacy, service, folder(service)) == added
        assert await migrate(legacy, service, folder(service)) == []  # and again: nothing
        await migrate(fresh, service, folder(service))
        assert await catalog(legacy, service) == await catalog(fresh, service)
        assert await history(legacy, service) == await history(fresh, service)

    conn = await asyncpg.connect(legacy)
    try:
        assert await conn.fetchval("SELECT count(*) FROM timesheets.entries WHERE id = $1", entry_id) == 1
        assert await conn.fetchval("SELECT count(*) FROM approvals.outbox WHERE id = $1", event_id) == 1
        adopted = await conn.fetchrow(
            "SELECT checksum, applied_at FROM timesheets.schema_migrations WHERE source = 'kit:outbox'"
        )
        assert adopted is not None
        assert adopted["applied_at"] == applied_before  # when it really happened, kept
        kit_file = migrations.discover(migrations.KIT_SETS["outbox"].directory)[0]
        assert adopted["checksum"] == kit_file.checksum
        # The outbox still works as the relay uses it (identity column, defaults).
        await conn.execute(
            "INSERT INTO timesheets.outbox (id, occurred_at, payload) VALUES ($1, now(), '{}')", uuid.uuid4()
        )
    finally:
        await conn.close()


@pytest.fixture
def scratch_kit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A kit set ``scratch`` in a temporary folder that adopts a service file ``0002_thing.sql``."""
    root = tmp_path / "kit"
    (root / "scratch").mkdir(parents=True)
    (root / "scratch" / "0001_thing.sql").write_text("CREATE TABLE thing (id int);\n")
    legacy = "CREATE TABLE thing (id int); -- service copy\n"
    kit = KitSet(
        "scratch",
        adopts=(Adoption(1, "thing", frozenset({migrations.Migration(2, "thing", legacy).checksum})),),
    )
    monkeypatch.setattr(migrations, "KIT_ROOT", root)
    monkeypatch.setitem(migrations.KIT_SETS, "scratch", kit)
    return root


async def service_folder(tmp_path: Path, files: dict[str, str], kit: str | None) -> Path:
    directory = tmp_path / f"svc_{secrets.token_hex(2)}"
    directory.mkdir()
    for name, sql in files.items():
        (directory / name).write_text(sql)
    if kit is not None:
        (directory / "kit.txt").write_text(f"{kit}\n")
    return directory


async def test_adoption_needs_the_exact_file_it_replaces(
    new_database: Any, scratch_kit: Path, tmp_path: Path
) -> None:
    url = await new_database("adopt")
    old = await service_folder(
        tmp_path,
        {
            "0001_a.sql": "CREATE TABLE a (id int);",
            "0002_thing.sql": "CREATE TABLE thing (id int); -- edited\n",
        },
        None,
    )
    assert await legacy_runner().migrate(url, "adopt", old) == [1, 2]
    new = await service_folder(tmp_path, {"0001_a.sql": "CREATE TABLE a (id int);"}, "scratch")
    # The service carried a different file under the same name: not the kit's to take over.
    with pytest.raises(MigrationError, match="0002_thing has no file any more"):
        await migrate(url, "adopt", new)


async def test_a_kit_file_edited_after_it_was_applied_is_refused(
    new_database: Any, scratch_kit: Path, tmp_path: Path
) -> None:
    url = await new_database("edited")
    new = await service_folder(tmp_path, {"0001_a.sql": "CREATE TABLE a (id int);"}, "scratch")
    assert await migrate(url, "edited", new) == [1]
    (scratch_kit / "scratch" / "0001_thing.sql").write_text("CREATE TABLE thing (id bigint);\n")
    with pytest.raises(MigrationError, match=r"0001_thing.sql \(kit:scratch\) changed"):
        await migrate(url, "edited", new)


async def test_a_folder_that_stops_naming_an_applied_kit_set_is_refused(
    new_database: Any, scratch_kit: Path, tmp_path: Path
) -> None:
    url = await new_database("dropped")
    with_kit = await service_folder(tmp_path, {"0001_a.sql": "CREATE TABLE a (id int);"}, "scratch")
    await migrate(url, "dropped", with_kit)
    without = await service_folder(tmp_path, {"0001_a.sql": "CREATE TABLE a (id int);"}, None)
    with pytest.raises(MigrationError, match="kit:scratch were applied"):
        await migrate(url, "dropped", without)


@pytest.mark.unit
def test_unknown_kit_sets_are_named(tmp_path: Path) -> None:
    (tmp_path / "kit.txt").write_text("# comment\noutbox\nnope  # typo\n")
    with pytest.raises(MigrationError, match=r"\['nope'\]"):
        migrations.kit_sets_of(tmp_path)
