"""The day cap's functions (migrations 0005 to 0007) as objects of the schema: every name in them
resolves in this schema (and pg_catalog) whatever the caller's search_path, and they carry no
``SET search_path`` clause.

Why no SET clause: a function with one saves, sets and restores the setting and recomputes the search
path on every call, and a SQL function with one is never inlined; every create called three of them
nested (``admit_day_hours`` → ``day_hours_locked`` → ``day_bucket``). Migration 0007 writes their
bodies with schema-qualified names instead, so the guarantee the clause gave is now held by the
bodies themselves, and :func:`test_names_resolve_in_this_schema_whatever_the_callers_search_path`
holds it against a caller whose search_path offers a look-alike of every name they use."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import asyncpg
import pytest

from testkit.fixtures import runtime_role, runtime_url

SCHEMA = "timesheets"
#: every overload of the day cap's functions (0005's two-, 0006's limit-taking admit_day_hours)
FUNCTIONS = (
    "day_bucket(text,text,date)",
    "lock_days(text,text[],date[])",
    "day_hours_locked(text,text,date)",
    "admit_day_hours(text,text,date,numeric)",
    "admit_day_hours(text,text,date,numeric,numeric)",
)
DAY = dt.date(2026, 11, 24)
NEXT_DAY = dt.date(2026, 11, 25)

#: 0005's bucket, written out with every name qualified: a change of it would move a day to another
#: lock row while writers of the old bucket still hold theirs (e.g. across the migration)
BUCKET_0005 = """SELECT (pg_catalog.hashtextextended(pg_catalog.format('%s:%s:%s:%s',
                     pg_catalog.length($1::pg_catalog.text), $1::pg_catalog.text, $2::pg_catalog.text,
                     $3::pg_catalog.date OPERATOR(pg_catalog.-) '2000-01-01'::pg_catalog.date), 0)
                     OPERATOR(pg_catalog.&) 127)::int"""


async def test_the_day_functions_carry_no_set_clause(db: asyncpg.Connection) -> None:
    """No ``proconfig``: a call pays no setting's save and restore, and ``day_bucket`` may be inlined."""
    rows = await db.fetch(
        "SELECT p.oid::regprocedure::text AS name, p.proconfig FROM pg_proc AS p"
        " WHERE p.pronamespace = $1::regnamespace AND p.oid::regprocedure::text = ANY($2::text[])",
        SCHEMA,
        list(FUNCTIONS),
    )
    assert sorted(row["name"] for row in rows) == sorted(FUNCTIONS)
    assert {row["name"]: row["proconfig"] for row in rows} == dict.fromkeys(FUNCTIONS)


async def test_day_bucket_is_inlined_into_its_callers(db: asyncpg.Connection) -> None:
    """The planner writes ``day_bucket``'s expression into the calling query (no call per row): what a
    SQL function with a SET clause, or an IMMUTABLE one whose body is not (0005's STABLE ``format()``),
    can never have."""
    plan = await db.fetch(
        "EXPLAIN (VERBOSE, COSTS OFF) SELECT timesheets.day_bucket(e.owner_issuer, e.owner_subject, e.date)"
        " FROM timesheets.entries AS e"
    )
    text = "\n".join(row[0] for row in plan)
    assert "hashtextextended" in text, text
    assert "day_bucket" not in text, text


async def test_the_runtime_role_may_execute_every_day_function(db: asyncpg.Connection) -> None:
    """Replacing a function keeps its owner and grants; the service's role must still call them all."""
    role = runtime_role(SCHEMA).name
    for function in FUNCTIONS:
        allowed = await db.fetchval(
            "SELECT has_function_privilege($1, $2::regprocedure, 'EXECUTE')", role, f"{SCHEMA}.{function}"
        )
        assert allowed, function


@pytest.fixture
async def shadow(db: asyncpg.Connection) -> AsyncIterator[str]:
    """A schema holding a look-alike of every name the day functions use: the tables (one more hour
    on the day, a lock row for every bucket and for -1), the functions (a bucket of -1, a hash of 0, a
    day of 0 hours) and the operators they compare with (``date = date`` and ``numeric > numeric``,
    always false). Readable and lockable by the runtime role, as the real tables are."""
    name = f"shadow_{uuid.uuid4().hex[:8]}"
    role = runtime_role(SCHEMA).name
    await db.execute(
        f"""CREATE SCHEMA {name};
        CREATE TABLE {name}.entries (LIKE timesheets.entries INCLUDING DEFAULTS);
        CREATE TABLE {name}.day_locks (bucket int PRIMARY KEY);
        INSERT INTO {name}.day_locks SELECT generate_series(-1, 127);
        CREATE FUNCTION {name}.day_bucket(text, text, date) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT -1';
        CREATE FUNCTION {name}.day_hours_locked(text, text, date) RETURNS numeric LANGUAGE sql AS 'SELECT 0';
        CREATE FUNCTION {name}.hashtextextended(text, bigint) RETURNS bigint LANGUAGE sql IMMUTABLE
            AS 'SELECT 0::bigint';
        CREATE FUNCTION {name}.never(date, date) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT false';
        CREATE OPERATOR {name}.= (LEFTARG = date, RIGHTARG = date, FUNCTION = {name}.never);
        CREATE FUNCTION {name}.never(numeric, numeric) RETURNS boolean LANGUAGE sql IMMUTABLE
            AS 'SELECT false';
        CREATE OPERATOR {name}.> (LEFTARG = numeric, RIGHTARG = numeric, FUNCTION = {name}.never);
        GRANT USAGE ON SCHEMA {name} TO {role};
        GRANT SELECT, UPDATE ON ALL TABLES IN SCHEMA {name} TO {role};"""
    )
    try:
        yield name
    finally:
        await db.execute(f"DROP SCHEMA {name} CASCADE")


@pytest.mark.parametrize("path", ["{shadow}, {schema}", "{shadow}, pg_catalog, {schema}"])
async def test_names_resolve_in_this_schema_whatever_the_callers_search_path(
    timesheets_database: str, db: asyncpg.Connection, shadow: str, path: str
) -> None:
    """The runtime role calls the functions with a search_path that puts ``shadow`` first (and, in
    the second case, pg_catalog after it, so that its operators and functions win over the built-in
    ones), and with temporary tables ``entries`` and ``day_locks`` (pg_temp, searched first for
    tables when a path does not name it): the cap still sums this schema's entries, locks this
    schema's buckets, and refuses with the same error."""
    issuer, subject = "https://issuer.test/", f"shadowed-{uuid.uuid4().hex[:8]}"
    await db.execute(
        "INSERT INTO timesheets.entries (id, owner_issuer, owner_subject, date, project, hours, source)"
        " VALUES ($1, $2, $3, $4, 'Here', 20, 'api')",
        uuid.uuid4(),
        issuer,
        subject,
        DAY,
    )
    await db.execute(
        f"INSERT INTO {shadow}.entries (id, owner_issuer, owner_subject, date, project, hours, source)"
        " VALUES ($1, $2, $3, $4, 'Shadow', 1, 'api')",
        uuid.uuid4(),
        issuer,
        subject,
        DAY,
    )
    buckets = [await db.fetchval(BUCKET_0005, issuer, subject, day) for day in (DAY, NEXT_DAY)]
    caller = await asyncpg.connect(
        runtime_url(timesheets_database, SCHEMA),
        server_settings={"search_path": path.format(shadow=shadow, schema=SCHEMA)},
    )
    try:
        await caller.execute(
            "CREATE TEMP TABLE entries (LIKE timesheets.entries INCLUDING DEFAULTS);"
            "CREATE TEMP TABLE day_locks (bucket int PRIMARY KEY);"
            "INSERT INTO day_locks SELECT generate_series(-1, 127)"
        )
        await caller.execute(
            "INSERT INTO entries (id, owner_issuer, owner_subject, date, project, hours, source)"
            " VALUES ($1, $2, $3, $4, 'Temporary', 2, 'api')",
            uuid.uuid4(),
            issuer,
            subject,
            DAY,
        )
        for day, bucket in zip((DAY, NEXT_DAY), buckets, strict=True):
            found = await caller.fetchval("SELECT timesheets.day_bucket($1, $2, $3)", issuer, subject, day)
            assert found == bucket

        async with caller.transaction():
            total = await caller.fetchval(
                "SELECT timesheets.day_hours_locked($1, $2, $3)", issuer, subject, DAY
            )
            assert total == Decimal(20)
            await assert_locked(db, buckets[:1], shadow)
        async with caller.transaction():
            locked = await caller.fetchval(
                "SELECT timesheets.lock_days($1, $2::text[], $3::date[])",
                issuer,
                [subject, subject],
                [DAY, NEXT_DAY],
            )
            assert locked == len(set(buckets))
            await assert_locked(db, buckets, shadow)

        admit = "SELECT timesheets.admit_day_hours($1, $2, $3, $4::numeric, $5::numeric)"
        assert await caller.fetchval(admit, issuer, subject, DAY, Decimal(4), Decimal(24)) == Decimal(4)
        legacy = "SELECT timesheets.admit_day_hours($1, $2, $3, $4::numeric)"
        assert await caller.fetchval(legacy, issuer, subject, DAY, Decimal(4)) == Decimal(4)
        for refused in (
            caller.fetchval(admit, issuer, subject, DAY, Decimal("4.25"), Decimal(24)),
            caller.fetchval(legacy, issuer, subject, DAY, Decimal("4.25")),
        ):
            with pytest.raises(asyncpg.CheckViolationError) as error:
                await refused
            assert error.value.sqlstate == "23514"
            assert error.value.constraint_name == "entries_day_hours"
            assert error.value.detail == "20.00"
            assert "at most 24 hours per person" in str(error.value)
    finally:
        await caller.close()


async def assert_locked(db: asyncpg.Connection, buckets: list[int], shadow: str) -> None:
    """This schema's ``buckets`` are held by the caller's open transaction; no row of the shadow's."""
    for bucket in buckets:
        with pytest.raises(asyncpg.LockNotAvailableError):
            await db.fetch(
                "SELECT bucket FROM timesheets.day_locks WHERE bucket = $1 FOR UPDATE NOWAIT", bucket
            )
    async with db.transaction():
        assert len(await db.fetch(f"SELECT bucket FROM {shadow}.day_locks FOR UPDATE NOWAIT")) == 129


async def test_the_day_lock_reads_no_row_past_its_bucket(db: asyncpg.Connection) -> None:
    """The day's lock (``day_hours_locked``, inside every create) stops at its bucket's row.

    ``day_locks`` is one page, so the planner scans it rather than take its primary key (once the table
    has statistics, as autovacuum gives it within a minute of the migration); without a LIMIT the scan
    read all 128 rows for the one it locks, ~6.5 µs of a create's backend CPU (PG 15, a loop of 100,000
    lookups: 8.5 µs against 4.7 with the LIMIT, 2 by the key). Migration 0009 stops it at the first row
    that matches: the rows lie in bucket order (0005's INSERT; a lock does not move a row), so a day in
    bucket 0 reads one. Counted in the session's own statistics, which need no flush."""
    await db.execute("ANALYZE timesheets.day_locks")  # the plan the service runs on (autovacuum's)
    issuer = "https://issuer.test/"
    subject = await db.fetchval(
        "SELECT s FROM generate_series(0, 9999) AS n, LATERAL (SELECT 'first-bucket-' || n AS s) AS k"
        " WHERE timesheets.day_bucket($1, s, $2) = 0 LIMIT 1",
        issuer,
        DAY,
    )
    rows_read = (
        "SELECT coalesce(sum(seq_tup_read + coalesce(idx_tup_fetch, 0)), 0) FROM pg_stat_xact_user_tables"
        " WHERE schemaname = 'timesheets' AND relname = 'day_locks'"
    )
    async with db.transaction():
        before = await db.fetchval(rows_read)
        assert await db.fetchval("SELECT timesheets.day_hours_locked($1, $2, $3)", issuer, subject, DAY) == 0
        read = await db.fetchval(rows_read) - before
    assert read == 1
