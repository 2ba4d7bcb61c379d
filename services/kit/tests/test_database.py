"""The pool survives Postgres being late or going away; migrations are strict and idempotent."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from svckit.app import create_service_app
from svckit.db import Database
from svckit.migrations import MigrationError, migrate
from svckit.settings import ServiceSettings, load_settings

from testkit.fixtures import TcpProxy, serve_app


async def wait_for_status(url: str, status: int, timeout: float = 20.0) -> dict[str, object]:
    deadline = asyncio.get_running_loop().time() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(url) as response:
                body = json.loads(await response.read())
                if response.status == status:
                    return body  # type: ignore[no-any-return]
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{url} never answered {status}; last: {body}")
            await asyncio.sleep(0.2)


async def test_readiness_follows_postgres(database_url: str, identity_keys: str) -> None:
    proxy = TcpProxy.for_postgres(database_url)
    database = Database(proxy.url_for(database_url), schema="public", max_backoff=0.5)
    settings = load_settings(ServiceSettings, env={"IDENTITY_KEYS": identity_keys})
    app = create_service_app(settings, [], database=database)
    async with serve_app(app) as base:
        # Started before Postgres is reachable: not ready, but alive.
        body = await wait_for_status(base + "/readyz", 503)
        assert body["failed"] == ["postgres"]
        await wait_for_status(base + "/healthz", 200)
        # Postgres arrives: ready by itself.
        await proxy.start()
        await wait_for_status(base + "/readyz", 200)
        # Postgres goes away: not ready again, no crash.
        await proxy.cut()
        body = await wait_for_status(base + "/readyz", 503)
        assert "postgres" in body["checks"]  # type: ignore[operator]
        await wait_for_status(base + "/healthz", 200)
        # And back.
        await proxy.start()
        await wait_for_status(base + "/readyz", 200)
    await proxy.cut()


def write(directory: Path, name: str, sql: str) -> None:
    (directory / name).write_text(sql)


async def test_migrations_apply_once_and_refuse_edits(database_url: str, tmp_path: Path) -> None:
    write(tmp_path, "0001_things.sql", "CREATE TABLE things (id int PRIMARY KEY);")
    write(tmp_path, "0002_more.sql", "ALTER TABLE things ADD COLUMN name text;")
    assert await migrate(database_url, "kit_mig", tmp_path) == [1, 2]
    assert await migrate(database_url, "kit_mig", tmp_path) == []

    write(tmp_path, "0002_more.sql", "ALTER TABLE things ADD COLUMN label text;")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await migrate(database_url, "kit_mig", tmp_path)


async def test_failed_migration_leaves_nothing(database_url: str, tmp_path: Path) -> None:
    write(tmp_path, "0001_ok.sql", "CREATE TABLE ok (id int);")
    write(tmp_path, "0002_broken.sql", "CREATE TABLE half (id int); SELECT * FROM no_such_table;")
    with pytest.raises(asyncpg.UndefinedTableError):
        await migrate(database_url, "kit_fail", tmp_path)
    conn = await asyncpg.connect(database_url)
    try:
        versions = await conn.fetch("SELECT version FROM kit_fail.schema_migrations")
        half = await conn.fetchval("SELECT to_regclass('kit_fail.half')")
    finally:
        await conn.close()
    assert [row["version"] for row in versions] == [1]
    assert half is None


async def test_concurrent_runners_serialise(database_url: str, tmp_path: Path) -> None:
    write(tmp_path, "0001_t.sql", "CREATE TABLE t (id int); SELECT pg_sleep(0.3);")
    results = await asyncio.gather(*(migrate(database_url, "kit_conc", tmp_path) for _ in range(3)))
    assert sorted(len(result) for result in results) == [0, 0, 1]


def test_bad_file_name_refused(tmp_path: Path) -> None:
    write(tmp_path, "1_nope.sql", "SELECT 1;")
    from svckit.migrations import discover

    with pytest.raises(MigrationError, match=r"NNNN_name\.sql"):
        discover(tmp_path)
