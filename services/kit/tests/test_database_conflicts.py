"""A transaction Postgres rolls back for a conflict (SQLSTATE 40001 serialization_failure, 40P01
deadlock_detected) is the server's definite answer on a sound session, and the remedy is to run it
again: the kit does (a few times), and only then answers 503 ``database_conflict``.

Provoked for real on the shared server: two sessions taking row locks in crossed orders (a deadlock
the server breaks by rolling one back) and two serializable transactions in write skew (the second to
commit refused at ``COMMIT``). The services' own routes do not produce them (their locks are taken in
one order: ``timesheets/tests/test_day_cap.py::test_concurrent_uploads_cannot_both_pass``); these are
the kit's guarantees for a route that would. Before: the kit took them for a connection lost around
``COMMIT`` — "resolving the outcome", a second's wait for the sound pooled session to end, then that
session terminated, an ambiguous commit counted, and a 503 with no reason."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from svckit.app import create_service_app
from svckit.db import Database, ambiguous_commits, transaction_conflicts, transaction_retries
from svckit.settings import ServiceSettings, load_settings

from testkit.fixtures import receiver_env, serve_app


def _ambiguous() -> float:
    return float(
        sum(ambiguous_commits.labels(o)._value.get() for o in ("committed", "not_committed", "unknown"))
    )


def _counts(reason: str) -> tuple[float, float]:
    return transaction_conflicts.labels(reason)._value.get(), transaction_retries.labels(reason)._value.get()


async def _no_check(conn: Any) -> bool:
    raise AssertionError("a transaction the server rolled back has no outcome to resolve")


async def _no_reread(conn: Any) -> asyncpg.Record | None:
    raise AssertionError("a statement the server rolled back has nothing to read again")


async def _wait_for_lock_wait(admin: asyncpg.Connection, pid: int) -> None:
    """Until session ``pid`` waits for a row lock (polled, not slept)."""
    for _ in range(400):
        if await admin.fetchval("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"session {pid} never waited for a lock")


@pytest.fixture
async def rig(database_url: str) -> AsyncIterator[tuple[asyncpg.Connection, Database, str, int]]:
    """A table of counters ``a`` and ``b``, a table of two on-call flags, and a Database of one
    pooled connection (its session's pid: the same one must serve every statement)."""
    table = f"conflict_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(database_url)
    await admin.execute(
        f"""CREATE TABLE {table} (id text PRIMARY KEY, n int NOT NULL);
        INSERT INTO {table} VALUES ('a', 0), ('b', 0);
        CREATE FUNCTION {table}_two(first text, second text) RETURNS bigint LANGUAGE plpgsql AS $$
        BEGIN
          UPDATE {table} SET n = n + 1 WHERE id = first;
          UPDATE {table} SET n = n + 1 WHERE id = second;
          RETURN (SELECT sum(n) FROM {table});
        END $$;
        CREATE TABLE {table}_oncall (id text PRIMARY KEY, on_call boolean NOT NULL);
        INSERT INTO {table}_oncall VALUES ('x', true), ('y', true);
        CREATE TABLE {table}_always (id uuid PRIMARY KEY);
        CREATE FUNCTION {table}_conflict() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          RAISE EXCEPTION 'could not serialize access due to concurrent update'
            USING ERRCODE = 'serialization_failure';
        END $$;
        CREATE TRIGGER always BEFORE INSERT ON {table}_always
          FOR EACH ROW EXECUTE FUNCTION {table}_conflict();"""
    )
    database = Database(database_url, schema="public", min_size=1, max_size=1, outcome_check_seconds=5)
    await database.wait_connected(10)
    async with database.connection() as conn:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
    try:
        yield admin, database, table, pid
    finally:
        await database.close()
        await admin.execute(
            f"DROP TABLE {table}, {table}_oncall, {table}_always; "
            f"DROP FUNCTION {table}_two(text, text), {table}_conflict()"
        )
        await admin.close()


async def _pid(database: Database) -> int:
    async with database.connection() as conn:
        return int(await conn.fetchval("SELECT pg_backend_pid()"))


async def test_a_deadlocked_write_once_is_run_again_on_its_sound_session(
    rig: tuple[asyncpg.Connection, Database, str, int], database_url: str
) -> None:
    """Crossed row locks: the kit's statement takes ``a`` then waits for ``b``, which another session
    holds and which then asks for ``a``. The server breaks the deadlock by rolling the kit's
    statement back (40P01): the kit runs it again once the other session is done — no outcome to
    resolve, its session pooled again."""
    admin, database, table, pid = rig
    other = await asyncpg.connect(database_url)
    try:
        # the other session waits longer before looking for a deadlock: the kit's is the one rolled back
        await other.execute("SET deadlock_timeout = '20s'")
        conflicts, retries = _counts("deadlock")
        ambiguous = _ambiguous()
        xact = other.transaction()
        await xact.start()
        await other.execute(f"UPDATE {table} SET n = n + 10 WHERE id = 'b'")
        write = asyncio.ensure_future(
            database.write_once(
                f"SELECT {table}_two('a', 'b') AS total", committed=_no_check, reread=_no_reread
            )
        )
        await _wait_for_lock_wait(admin, pid)
        # crossed: granted once the server rolled the kit's statement back
        await other.execute(f"UPDATE {table} SET n = n + 10 WHERE id = 'a'")
        await xact.commit()
        committed_at = asyncio.get_running_loop().time()
        row = await asyncio.wait_for(write, 10)
        assert asyncio.get_running_loop().time() - committed_at < 0.5  # no outcome resolution (>= 1 s)
    finally:
        await other.close()
    assert row is not None
    assert row["total"] == 22  # run again after the other's commit: 10 + 1 each
    # Once, or twice where the kit's try again (20 ms after the rollback) took ``a`` before the other
    # session, woken by that rollback, had locked it (a loaded host: one run of three workers): the
    # same crossing again, broken the same way. Each one counted and run again, none left over.
    now_conflicts, now_retries = _counts("deadlock")
    assert now_conflicts - conflicts in (1, 2)
    assert now_retries - retries == now_conflicts - conflicts
    assert _ambiguous() == ambiguous
    assert await _pid(database) == pid  # the sound session, pooled again (not terminated)


async def _write_skew(
    admin: asyncpg.Connection, database_url: str, table: str, conn: Any, first: bool
) -> int:
    """The kit's side of a write skew (each of two serializable transactions reads both on-call flags,
    then clears a different one); on the ``first`` run the other transaction does the same and
    commits before the kit's commits. The count of flags the kit's transaction saw set."""
    seen = int(await conn.fetchval(f"SELECT count(*) FROM {table}_oncall WHERE on_call"))
    if first:
        other = await asyncpg.connect(database_url)
        try:
            async with other.transaction(isolation="serializable"):
                await other.fetchval(f"SELECT count(*) FROM {table}_oncall WHERE on_call")
                await conn.execute(f"UPDATE {table}_oncall SET on_call = false WHERE id = 'x'")
                await other.execute(f"UPDATE {table}_oncall SET on_call = false WHERE id = 'y'")
        finally:
            await other.close()
    else:
        await conn.execute(f"UPDATE {table}_oncall SET on_call = false WHERE id = 'x'")
    return seen


async def test_a_serialization_failure_at_commit_is_refused_at_once_or_run_again(
    rig: tuple[asyncpg.Connection, Database, str, int], database_url: str
) -> None:
    """Write skew between two serializable transactions: the kit's commits second and Postgres refuses
    its ``COMMIT`` (40001). A plain ``transaction()`` raises it at once, nothing stored and nothing to
    resolve; :meth:`Database.run_transaction` runs the block again on fresh data and commits."""
    admin, database, table, pid = rig
    conflicts, retries = _counts("serialization")
    ambiguous = _ambiguous()
    started = asyncio.get_running_loop().time()
    with pytest.raises(asyncpg.exceptions.SerializationError):
        async with database.transaction("serializable", committed=_no_check) as conn:
            await _write_skew(admin, database_url, table, conn, first=True)
    assert asyncio.get_running_loop().time() - started < 0.8  # no outcome resolution (>= 1 s)
    assert await admin.fetchval(f"SELECT on_call FROM {table}_oncall WHERE id = 'x'")  # not stored
    assert _counts("serialization") == (conflicts + 1, retries)
    assert _ambiguous() == ambiguous
    assert await _pid(database) == pid

    await admin.execute(f"UPDATE {table}_oncall SET on_call = true")
    runs: list[int] = []

    async def body(conn: Any) -> int:
        runs.append(await _write_skew(admin, database_url, table, conn, first=not runs))
        return len(runs)

    assert await database.run_transaction(body, isolation="serializable", committed=_no_check) == 2
    assert runs == [2, 1]  # run again, and saw the other's commit
    assert _counts("serialization") == (conflicts + 2, retries + 1)
    assert _ambiguous() == ambiguous
    assert await _pid(database) == pid
    flags = await admin.fetch(f"SELECT id, on_call FROM {table}_oncall ORDER BY id")
    assert [tuple(f) for f in flags] == [("x", False), ("y", False)]


async def test_conflicts_that_outlast_the_retries_are_a_503_that_says_so(
    rig: tuple[asyncpg.Connection, Database, str, int], identity_keys: dict[str, str]
) -> None:
    """A conflict every time (a trigger raising 40001 as a real conflict would): tried a few times,
    then 503 ``database_conflict`` with ``Retry-After`` — through ``write_once`` and
    ``run_transaction`` alike — counted, nothing stored, never an outcome to resolve."""
    admin, database, table, pid = rig

    async def insert(conn: Any) -> None:
        await conn.execute(f"INSERT INTO {table}_always (id) VALUES ($1)", uuid.uuid4())

    async def create(request: Request) -> Response:
        if request.query_params.get("via") == "write_once":
            await database.write_once(
                f"INSERT INTO {table}_always (id) VALUES ($1) RETURNING id",
                uuid.uuid4(),
                committed=_no_check,
                reread=_no_reread,
            )
        else:
            await database.run_transaction(insert, committed=_no_check)
        return JSONResponse({}, status_code=201)

    conflicts, retries = _counts("serialization")
    ambiguous = _ambiguous()
    settings = load_settings(ServiceSettings, env=receiver_env(identity_keys))
    app = create_service_app(settings, [Route("/rows", create, methods=["POST"])], require_identity=False)
    async with serve_app(app) as base, aiohttp.ClientSession() as session:
        for via in ("write_once", "transaction"):
            started = asyncio.get_running_loop().time()
            async with session.post(f"{base}/rows?via={via}") as response:
                body = await response.json(content_type=None)
                assert response.status == 503, (via, body)
                assert response.headers["content-type"] == "application/problem+json"
                assert response.headers["retry-after"]
                assert body.get("reason") == "database_conflict", (via, body)
                assert "outcome" not in body
            assert asyncio.get_running_loop().time() - started < 0.8, via
    attempts = 3
    assert _counts("serialization") == (conflicts + 2 * attempts, retries + 2 * (attempts - 1))
    assert _ambiguous() == ambiguous
    assert await admin.fetchval(f"SELECT count(*) FROM {table}_always") == 0
    assert await _pid(database) == pid
