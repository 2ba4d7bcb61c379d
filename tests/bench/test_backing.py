"""``make bench`` on a machine without ``DATABASE_URL``: the benchmarks start an embedded Postgres,
drop their database while it still runs, and leave the environment as they found it (a URL left
pointing at the stopped server broke the next benchmark of the same run)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import asyncpg
import pytest

from bench._backing import MAX_CONNECTIONS, embedded_postgres, fresh_database, servers
from bench._measure import cpu_seconds


async def databases(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        return {row["datname"] for row in await conn.fetch("SELECT datname FROM pg_database")}
    finally:
        await conn.close()


async def busy_connection(url: str) -> None:
    """A connection that spends CPU in its backend, then closes (the backend process ends)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.fetchval("SELECT count(*) FROM generate_series(1, 3000000)")
    finally:
        await conn.close()


async def max_connections(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SHOW max_connections"))
    finally:
        await conn.close()


def test_embedded_postgres_lifecycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL")
    name = "tsp_bench_backing_test"
    with servers(state=tmp_path) as backing:
        assert backing.embedded
        assert os.environ["DATABASE_URL"] == backing.database_url
        # an A/B run of the approvals benchmark ran out of the default 100 connections
        assert asyncio.run(max_connections(backing.database_url)) == MAX_CONNECTIONS > 100
        with fresh_database(name) as url:
            assert name in asyncio.run(databases(url))
        assert name not in asyncio.run(databases(backing.database_url))
    assert "DATABASE_URL" not in os.environ
    # twice in one process, as `python -m bench` runs api then audit
    with servers(state=tmp_path) as again, fresh_database(name):
        assert again.embedded
        assert asyncio.run(max_connections(again.database_url)) == MAX_CONNECTIONS
    assert "DATABASE_URL" not in os.environ


def test_given_server_is_used_and_kept(database_url: str) -> None:
    before = os.environ["DATABASE_URL"]
    with servers() as backing:
        assert not backing.embedded
        assert backing.database_url == before
    assert os.environ["DATABASE_URL"] == before


def test_embedded_postgres_cpu_counts_ended_backends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The benchmarks put the embedded Postgres's CPU beside each case's; pgbench's backends are
    opened and closed within its run, so only the CPU of ended children shows them."""
    monkeypatch.delenv("DATABASE_URL")
    with servers(state=tmp_path) as backing:
        postgres = embedded_postgres(tmp_path)
        assert postgres is not None
        before = cpu_seconds(postgres)
        asyncio.run(busy_connection(backing.database_url))
        time.sleep(0.5)  # the postmaster reaps the ended backend (its CPU moves to the parent's)
        assert cpu_seconds(postgres) - before > 0.1
    assert embedded_postgres(tmp_path) is None
