"""The pool survives Postgres being late or going away; migrations are strict and idempotent."""

from __future__ import annotations

import asyncio
import gc
import io
import json
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from svckit.app import create_service_app
from svckit.db import (
    UNAVAILABLE_ERRORS,
    Database,
    NotCommitted,
    OutcomeUnknown,
    ambiguous_commits,
    disk_full_refusals,
)
from svckit.health import CHECK_TIMEOUT_SECONDS, run_checks
from svckit.logs import JsonFormatter
from svckit.migrations import MigrationError, migrate
from svckit.settings import ServiceSettings, load_settings

from testkit.fixtures import TcpProxy, loop_failures, receiver_env, serve_app


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


async def test_readiness_follows_postgres(database_url: str, identity_keys: dict[str, str]) -> None:
    proxy = TcpProxy.for_postgres(database_url)
    database = Database(proxy.url_for(database_url), schema="public", max_backoff=0.5)
    settings = load_settings(ServiceSettings, env=receiver_env(identity_keys))
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


# ---- a write's answer never contradicts its outcome ----------------------------------------------


@pytest.fixture
async def commit_rig(database_url: str) -> AsyncIterator[tuple[TcpProxy, Database, str]]:
    """A table, and a Database whose every connection runs through a proxy that can cut COMMIT."""
    table = f"commit_cut_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(database_url)
    await admin.execute(f"CREATE TABLE {table} (id uuid PRIMARY KEY)")
    proxy = TcpProxy.for_postgres(database_url)
    await proxy.start()
    database = Database(proxy.url_for(database_url), schema="public", outcome_check_seconds=5)
    await database.wait_connected(10)
    try:
        yield proxy, database, table
    finally:
        await database.close()
        await proxy.cut()
        await admin.execute(f"DROP TABLE {table}")
        await admin.close()


async def _insert(database: Database, table: str, row_id: uuid.UUID, *, check: bool = True) -> None:
    async def committed(conn: Any) -> bool:
        return bool(await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table} WHERE id = $1)", row_id))

    async with database.transaction(committed=committed if check else None) as conn:
        await conn.execute(f"INSERT INTO {table} (id) VALUES ($1)", row_id)


async def _stored(database: Database, table: str, row_id: uuid.UUID) -> bool:
    async with database.connection() as conn:
        return bool(await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table} WHERE id = $1)", row_id))


async def test_commit_lost_after_the_server_committed_is_a_success(
    commit_rig: tuple[TcpProxy, Database, str],
) -> None:
    proxy, database, table = commit_rig
    row_id = uuid.uuid4()
    done = proxy.cut_at_commit("after")
    await _insert(database, table, row_id)  # returns normally: the check found the row
    assert done.is_set()
    assert await _stored(database, table, row_id)


async def test_commit_cut_before_the_server_saw_it_is_not_committed(
    commit_rig: tuple[TcpProxy, Database, str],
) -> None:
    proxy, database, table = commit_rig
    row_id = uuid.uuid4()
    done = proxy.cut_at_commit("before")
    with pytest.raises(NotCommitted):
        await _insert(database, table, row_id)
    assert done.is_set()
    assert not await _stored(database, table, row_id)


async def test_commit_lost_without_a_check_is_an_unknown_outcome(
    commit_rig: tuple[TcpProxy, Database, str],
) -> None:
    proxy, database, table = commit_rig
    proxy.cut_at_commit("after")
    with pytest.raises(OutcomeUnknown):
        await _insert(database, table, uuid.uuid4(), check=False)


async def test_commit_lost_while_postgres_stays_away_is_an_unknown_outcome(
    commit_rig: tuple[TcpProxy, Database, str],
) -> None:
    proxy, database, table = commit_rig
    database.outcome_check_seconds = 1.0
    done = proxy.cut_at_commit("after")
    task = asyncio.ensure_future(_insert(database, table, uuid.uuid4()))
    await done.wait()
    await proxy.cut()  # and nothing answers any more: the check cannot run
    with pytest.raises(OutcomeUnknown):
        await task
    await proxy.start()


async def test_http_answers_follow_the_outcome(
    commit_rig: tuple[TcpProxy, Database, str], identity_keys: dict[str, str]
) -> None:
    """Through the kit's app: 201 when the lost COMMIT had committed, 503 (not stored) when not, 503
    with ``outcome: unknown`` when it cannot be known — never a 500, never an answer that lies."""
    proxy, database, table = commit_rig
    ids: list[uuid.UUID] = []

    async def create(request: Request) -> Response:
        row_id = uuid.uuid4()
        ids.append(row_id)
        await _insert(database, table, row_id, check=request.query_params.get("check") != "no")
        return JSONResponse({"id": str(row_id)}, status_code=201)

    settings = load_settings(ServiceSettings, env=receiver_env(identity_keys))
    app = create_service_app(settings, [Route("/rows", create, methods=["POST"])], require_identity=False)
    async with serve_app(app) as base, aiohttp.ClientSession() as session:
        for when, check, status, outcome, stored in (
            ("after", "yes", 201, None, True),
            ("before", "yes", 503, "not_stored", False),
            ("after", "no", 503, "unknown", True),
        ):
            proxy.cut_at_commit(when)  # type: ignore[arg-type]
            async with session.post(f"{base}/rows?check={check}") as response:
                body = await response.json(content_type=None)
                assert response.status == status, body
                if status == 503:
                    assert response.headers["content-type"] == "application/problem+json"
                    assert response.headers["retry-after"]
                    assert body["outcome"] == outcome
            assert await _stored(database, table, ids[-1]) is stored


async def test_a_released_connection_carries_nothing_into_the_next_request(database_url: str) -> None:
    """The pool sends no reset query on release (``svckit.db._keep_session``): what a request leaves
    behind must already be gone — its transaction, its transaction-scoped lock, its ``SET LOCAL``."""
    database = Database(database_url, min_size=1, max_size=1)
    await database.wait_connected(10)
    try:

        async def failing_request() -> None:
            async with database.transaction() as conn:
                await conn.execute("SELECT pg_advisory_xact_lock(4242)")
                await conn.execute("SET LOCAL statement_timeout = 1234")
                raise RuntimeError("the handler failed")

        with pytest.raises(RuntimeError):
            await failing_request()
        async with database.connection() as conn:  # the same (only) connection
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SHOW statement_timeout") != "1234ms"
            locks = await conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
            )
            assert locks == 0
    finally:
        await database.close()


async def test_a_pooled_connection_is_waited_for_within_the_connect_timeout_and_always_returned(
    database_url: str,
) -> None:
    """``connection()`` bounds the wait for a free connection by ``connect_timeout`` (TimeoutError, as
    asyncpg's own acquire timeout raised) and gives the connection back however the block ends: after
    a failure in the block, or a caller cancelled while waiting, the pool still serves."""
    database = Database(database_url, min_size=1, max_size=1, connect_timeout=0.3)
    await database.wait_connected(10)
    try:
        async with database.connection() as conn:
            assert await conn.fetchval("SELECT 1") == 1
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(TimeoutError):
                async with database.connection():
                    pass  # never reached: the only connection is in use
            assert 0.25 <= loop.time() - started < 2.0
            waiting = asyncio.create_task(database.connection().__aenter__())
            await asyncio.sleep(0.05)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting

        async def failing_block() -> None:
            async with database.connection() as conn:
                await conn.fetchval("SELECT 1")
                raise ZeroDivisionError

        with pytest.raises(ZeroDivisionError):
            await failing_block()
        for _ in range(3):
            async with database.connection() as conn:
                assert await conn.fetchval("SELECT 2") == 2
        assert database.pool.get_idle_size() == 1
    finally:
        await database.close()


async def test_an_acquire_with_an_idle_connection_never_waits(database_url: str) -> None:
    """``connection()`` arms no timer when the pool says a connection is idle (``get_idle_size``), on
    the grounds that asyncpg then hands one over without waiting. Held here against asyncpg itself,
    in the states a pool goes through: fresh, after uses, after a failed block, after an abandoned
    session (its slot empty, another connection idle), with every other connection taken. The
    acquire is stepped by hand: finishing on its first step means it never suspended."""
    database = Database(database_url, min_size=2, max_size=3, statement_timeout=0.3)
    await database.wait_connected(10)
    pool = database.pool

    async def held_without_waiting() -> Any:
        assert pool.get_idle_size() > 0
        step = pool.acquire().__await__()
        with pytest.raises(StopIteration) as done:
            step.send(None)
        return done.value.value

    try:
        await pool.release(await held_without_waiting())
        async with database.connection(), database.connection():
            pass
        with pytest.raises(ZeroDivisionError):
            async with database.connection():
                raise ZeroDivisionError
        with pytest.raises(TimeoutError):
            async with database.connection() as conn:
                await conn.fetchval("SELECT pg_sleep(5)")
        await pool.release(await held_without_waiting())
        async with database.connection(), database.connection(), database.connection():
            assert pool.get_idle_size() == 0  # (and the next acquire would wait, within the bound)
        async with database.connection(), database.connection():  # the last idle one
            await pool.release(await held_without_waiting())
        assert pool.get_idle_size() == 3
    finally:
        await database.close()


async def test_a_statement_past_the_statement_bound_abandons_its_session_and_nothing_else_does(
    database_url: str,
) -> None:
    """A statement without an answer within ``statement_timeout`` (a hung server's, here one that is
    merely slow) raises ``TimeoutError`` and its session is dropped, not pooled again: in
    ``connection()`` and in ``transaction()`` (no ``ROLLBACK`` waited for: the server rolls back when
    it sees the session gone). A block that fails otherwise gives its connection back as it is (the
    same session serves the next block)."""
    database = Database(database_url, min_size=1, max_size=1, statement_timeout=0.3)
    await database.wait_connected(10)

    async def session() -> int:
        async with database.connection() as conn:
            return int(await conn.fetchval("SELECT pg_backend_pid()"))

    async def block(manager: Any, *statements: str, fail: bool = False) -> None:
        async with manager as conn:
            for statement in statements:
                await conn.execute(statement)
            if fail:
                raise ZeroDivisionError

    try:
        first = await session()
        with pytest.raises(ZeroDivisionError):
            await block(database.connection(), "SELECT 1", fail=True)
        with pytest.raises(ZeroDivisionError):
            await block(database.transaction(), "SELECT 1", fail=True)
        assert await session() == first

        started = asyncio.get_running_loop().time()
        with pytest.raises(TimeoutError):
            await block(database.connection(), "SELECT pg_sleep(5)")
        assert asyncio.get_running_loop().time() - started < 2.0
        second = await session()
        assert second != first

        # (asyncpg's transaction then fails to end on the closed connection: InterfaceError from the
        # TimeoutError, both a 503 of UNAVAILABLE_ERRORS)
        with pytest.raises(UNAVAILABLE_ERRORS) as raised:
            await block(database.transaction(), "SELECT pg_sleep(5)")
        assert isinstance(raised.value, TimeoutError) or isinstance(raised.value.__context__, TimeoutError)
        assert await session() not in (first, second)
    finally:
        await database.close()


async def test_a_statement_cancelled_on_a_hung_server_ends_at_once_and_leaves_no_failure_behind(
    database_url: str,
) -> None:
    """A block cancelled while its statement runs (a request whose deadline passed, a task stopped)
    on a server that hangs: asyncpg asks the server to cancel the statement, and a release would
    wait for the server to confirm it, which a hung one never does. The cancellation must end the
    block at once, as a cancellation, and the session must not be pooled again; and the release's
    own failure (it runs shielded, so a second cancel leaves it to finish alone) must not end up as
    an unretrieved task exception in the log. Both for ``connection()`` and ``transaction()``."""
    proxy = TcpProxy.for_postgres(database_url)
    await proxy.start()
    database = Database(
        proxy.url_for(database_url),
        schema="public",
        min_size=1,
        max_size=2,
        statement_timeout=30,
        connect_timeout=0.5,
    )
    loop = asyncio.get_running_loop()
    try:
        await database.wait_connected(10)
        for manager, cancels in [(m, n) for m in (database.connection, database.transaction) for n in (1, 2)]:
            proxy.resume()
            started = asyncio.Event()

            async def statement(manager: Any = manager, started: asyncio.Event = started) -> None:
                async with manager() as conn:
                    started.set()
                    await conn.fetchval("SELECT pg_sleep(20)")

            task = asyncio.create_task(statement())
            await started.wait()
            await asyncio.sleep(0.1)  # the statement is on the server
            connected = database.pool.get_size()
            proxy.hang()
            task.cancel()
            if cancels == 2:
                await asyncio.sleep(0.05)
                task.cancel()  # a second cancel, while the block's exit may still be releasing
            before = loop.time()
            with loop_failures() as unretrieved:
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert loop.time() - before < 0.3
                assert database.pool.get_size() == connected - 1  # closed, not pooled again
                await asyncio.sleep(1.0)  # past connect_timeout: a release still waiting fails now
                gc.collect()
            assert [context.get("message") for context in unretrieved] == [], (manager, cancels)
    finally:
        proxy.resume()
        await proxy.cut()
        await database.close()


async def test_the_readiness_probe_on_a_hung_server_leaves_no_failure_behind(database_url: str) -> None:
    """``/readyz``'s Postgres check against a server that hangs: not ready within the check's bound,
    and the probe's session is abandoned, not released through asyncpg's wait for the server to
    confirm the probe's cancellation (shielded, and failing later in a task nobody awaits: "Task
    exception was never retrieved", the fault matrix's "postgres hung" case)."""
    proxy = TcpProxy.for_postgres(database_url)
    await proxy.start()
    database = Database(proxy.url_for(database_url), schema="public", min_size=1, max_size=2)
    loop = asyncio.get_running_loop()
    try:
        await database.wait_connected(10)
        assert await run_checks({"postgres": database.check}) == {"postgres": "ok"}
        proxy.hang()
        before = loop.time()
        with loop_failures() as unretrieved:
            assert await run_checks({"postgres": database.check}) != {"postgres": "ok"}
            assert loop.time() - before < CHECK_TIMEOUT_SECONDS + 0.5
            await asyncio.sleep(database.connect_timeout + 1.0)  # a release still waiting fails now
            gc.collect()
        assert [context.get("message") for context in unretrieved] == []
        proxy.resume()
        assert await run_checks({"postgres": database.check}) == {"postgres": "ok"}  # a new session
    finally:
        proxy.resume()
        await proxy.cut()
        await database.close()


async def test_a_write_refused_by_a_read_only_server_is_a_503_at_once_on_a_fresh_connection(
    database_url: str, identity_keys: dict[str, str]
) -> None:
    """A primary demoted by a failover (or a standby the DSN reaches for a moment) refuses writes with
    SQLSTATE 25006: the kit answered 500. Now 503 with ``Retry-After`` like any outage, at once (a
    definite refusal: no outcome to resolve, no ambiguous commit counted), and the session is not
    pooled again, so the next request opens a connection to wherever the name points now."""
    table = f"read_only_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(database_url)
    await admin.execute(f"CREATE TABLE {table} (id uuid PRIMARY KEY)")
    # every session of this pool as a read-only server's (asyncpg passes the parameter to the server)
    read_only = database_url + ("&" if "?" in database_url else "?") + "default_transaction_read_only=on"
    database = Database(read_only, schema="public", min_size=1, max_size=1, outcome_check_seconds=5)
    await database.wait_connected(10)

    async def committed(conn: Any) -> bool:
        raise AssertionError("a refused write has no outcome to resolve")

    async def reread(conn: Any) -> asyncpg.Record | None:
        raise AssertionError("a refused write has nothing to read again")

    async def create(request: Request) -> Response:
        async with database.transaction() as conn:
            await conn.execute(f"INSERT INTO {table} (id) VALUES ($1)", uuid.uuid4())
        return JSONResponse({}, status_code=201)

    try:
        async with database.connection() as conn:
            first = await conn.fetchval("SELECT pg_backend_pid()")
        unknown_before = ambiguous_commits.labels("unknown")._value.get()
        started = asyncio.get_running_loop().time()
        with pytest.raises(asyncpg.exceptions.ReadOnlySQLTransactionError):
            await database.write_once(
                f"INSERT INTO {table} (id) VALUES ($1) RETURNING id",
                uuid.uuid4(),
                committed=committed,
                reread=reread,
            )
        assert asyncio.get_running_loop().time() - started < 0.5
        assert ambiguous_commits.labels("unknown")._value.get() == unknown_before
        async with database.connection() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") != first  # not pooled again

        settings = load_settings(ServiceSettings, env=receiver_env(identity_keys))
        app = create_service_app(settings, [Route("/rows", create, methods=["POST"])], require_identity=False)
        async with (
            serve_app(app) as base,
            aiohttp.ClientSession() as session,
            session.post(f"{base}/rows") as response,
        ):
            body = await response.json(content_type=None)
            assert response.status == 503, body
            assert response.headers["content-type"] == "application/problem+json"
            assert response.headers["retry-after"]
    finally:
        await database.close()
        await admin.execute(f"DROP TABLE {table}")
        await admin.close()


async def test_a_statement_refused_for_want_of_disk_space_is_a_503_that_says_so_at_once(
    database_url: str, identity_keys: dict[str, str]
) -> None:
    """SQLSTATE 53100 (disk full: the volume of the tables full) from a real server — raised here by
    triggers, one on the statement and one at ``COMMIT`` (a deferred constraint trigger), as Postgres
    raises it when a relation cannot be extended (tests/faults/test_disk_full.py fills a real
    volume). The kit took it for a broken connection: ``write_once`` and a refused ``COMMIT`` resolved
    an outcome (a second's wait, the sound pooled session terminated) and answered 503 "went away"
    without a reason. Now: raised at once, counted, the session pooled again, and answered 503
    ``database_disk_full`` with ``Retry-After``."""
    table = f"disk_full_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(database_url)
    await admin.execute(
        f"""CREATE TABLE {table} (id uuid PRIMARY KEY, at_commit boolean NOT NULL DEFAULT false);
        CREATE FUNCTION {table}_full() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          RAISE EXCEPTION 'could not extend file "base/5/16385": No space left on device'
            USING ERRCODE = 'disk_full', HINT = 'Check free disk space.';
        END $$;
        CREATE TRIGGER now_full BEFORE INSERT ON {table}
          FOR EACH ROW WHEN (NOT NEW.at_commit) EXECUTE FUNCTION {table}_full();
        CREATE CONSTRAINT TRIGGER full_at_commit AFTER INSERT ON {table} DEFERRABLE INITIALLY DEFERRED
          FOR EACH ROW WHEN (NEW.at_commit) EXECUTE FUNCTION {table}_full();"""
    )
    database = Database(database_url, schema="public", min_size=1, max_size=1, outcome_check_seconds=5)
    await database.wait_connected(10)

    async def committed(conn: Any) -> bool:
        raise AssertionError("a refused write has no outcome to resolve")

    async def reread(conn: Any) -> asyncpg.Record | None:
        raise AssertionError("a refused write has nothing to read again")

    async def create(request: Request) -> Response:
        at_commit = request.query_params.get("at") == "commit"
        async with database.transaction(committed=committed) as conn:
            await conn.execute(
                f"INSERT INTO {table} (id, at_commit) VALUES ($1, $2)", uuid.uuid4(), at_commit
            )
        return JSONResponse({}, status_code=201)

    try:
        async with database.connection() as conn:
            first = await conn.fetchval("SELECT pg_backend_pid()")
        refused_before = disk_full_refusals._value.get()
        ambiguous_before = sum(
            ambiguous_commits.labels(o)._value.get() for o in ("committed", "not_committed", "unknown")
        )
        started = asyncio.get_running_loop().time()
        with pytest.raises(asyncpg.exceptions.DiskFullError):
            await database.write_once(
                f"INSERT INTO {table} (id) VALUES ($1) RETURNING id",
                uuid.uuid4(),
                committed=committed,
                reread=reread,
            )
        assert asyncio.get_running_loop().time() - started < 0.5
        assert disk_full_refusals._value.get() == refused_before + 1
        async with database.connection() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") == first  # a sound session, pooled again

        settings = load_settings(ServiceSettings, env=receiver_env(identity_keys))
        app = create_service_app(settings, [Route("/rows", create, methods=["POST"])], require_identity=False)
        async with serve_app(app) as base, aiohttp.ClientSession() as session:
            for at in ("statement", "commit"):
                async with session.post(f"{base}/rows?at={at}") as response:
                    body = await response.json(content_type=None)
                    assert response.status == 503, (at, body)
                    assert response.headers["content-type"] == "application/problem+json"
                    assert response.headers["retry-after"]
                    assert body.get("reason") == "database_disk_full", (at, body)
        assert disk_full_refusals._value.get() == refused_before + 3
        ambiguous_after = sum(
            ambiguous_commits.labels(o)._value.get() for o in ("committed", "not_committed", "unknown")
        )
        assert ambiguous_after == ambiguous_before
        async with database.connection() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") == first
        assert await admin.fetchval(f"SELECT count(*) FROM {table}") == 0  # nothing half-written
    finally:
        await database.close()
        await admin.execute(f"DROP TABLE {table}; DROP FUNCTION {table}_full()")
        await admin.close()


def test_the_pools_reconnect_warnings_during_an_outage_carry_no_traceback() -> None:
    """asyncpg's pool warns with a whole traceback each time it cannot reopen its floor of connections
    (every 1-60 s per service while Postgres is away; tests/faults/test_fault_matrix.py found them):
    an outage's error is named on one line, anything else (a login refused) keeps its traceback."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("test"))
    pool_log = logging.getLogger("asyncpg.pool")
    pool_log.addHandler(handler)
    try:
        for error in (
            ConnectionRefusedError(111, "Connection refused"),
            asyncpg.exceptions.InvalidPasswordError("password authentication failed for user x"),
        ):
            try:
                raise error
            except Exception:
                pool_log.warning("Failed to restore the pool connection floor; retrying", exc_info=True)
    finally:
        pool_log.removeHandler(handler)
    outage, refused = (json.loads(line) for line in stream.getvalue().splitlines())
    assert "exc" not in outage
    assert outage["error"] == "ConnectionRefusedError: [Errno 111] Connection refused"
    assert "Traceback" in refused["exc"]
    assert "InvalidPasswordError" in refused["exc"]
