-- The day cap's functions (0005, 0006) without their `SET search_path` clauses: each name in their
-- bodies is qualified instead, so they still resolve in this schema whatever the caller's search_path.
--
-- Why: a function with a SET clause saves the setting, sets it, recomputes the search path and
-- restores it on every call, and a SQL function with one is never inlined. Every create ran three of
-- them nested (admit_day_hours → day_hours_locked → day_bucket, store.CREATE_ENTRY), an upload one
-- day_bucket call per day besides. Without the clause day_bucket is written into the calling query as
-- its expression (services/timesheets/README.md, "Performance", for what it measured) — once its body
-- is immutable too: 0005's format() is STABLE (it calls its arguments' output functions), and the
-- planner does not inline an IMMUTABLE function whose body is not. The same text is built with `||` of
-- text and casts to text (int4's output, immutable): ':'-separated, the same bytes for the same
-- arguments, so the same hash and bucket. Only NULL arguments differ (format wrote '', `||` gives a
-- NULL bucket, no lock row); no caller passes one: every column the service passes is NOT NULL, and
-- the INSERT after the check fails on it in either case.
--
-- day_hours_locked takes the day's bucket into a variable (a plpgsql expression, evaluated once) and
-- locks `bucket = bucket_of_day`. Written in the WHERE clause as before, the inlined expression was
-- evaluated for each of the 128 rows the scan of day_locks reads (the table is one page: no index
-- scan); not inlined (0005), the call kept that statement on custom plans, planned again at every
-- call with day_bucket's body run as a query of its own. Now both statements of it keep one generic
-- plan per session.
--
-- What is qualified, and why all of it: without the clause a body runs under the caller's search_path.
-- Tables (entries, day_locks) and the functions of this schema (day_bucket, day_hours_locked) carry
-- the schema's name: a caller's path may name another schema first, and pg_temp, searched first for
-- tables unless a path names it, may hold tables of those names. The built-in functions, aggregates,
-- operators and types carry pg_catalog's (`pg_catalog.sum`, `OPERATOR(pg_catalog.=)`,
-- `::pg_catalog.text`): pg_catalog is searched first only when a path does not name it, and a path
-- such as `other, pg_catalog` lets `other`'s `=`, `hashtextextended` or `date` win over the built-in
-- ones (the SET clause, which did not name pg_catalog, kept it first). That matters most for
-- day_bucket: inlined, its body is parsed inside the caller's query, under the caller's path. Left
-- unqualified: keywords (int, numeric, coalesce, IS NULL), which always mean the built-in ones;
-- ORDER BY, which takes the type's default ordering, not an operator by name; casts between built-in
-- types, found by type, not by name. `x IN (subquery)` looks `=` up by name: it is `= ANY`, qualified.
-- The multi-argument `unnest(a, b)` in FROM is only recognised unqualified: `ROWS FROM` with two
-- qualified one-argument unnests, its expansion, says the same. The test holding all of this:
-- services/timesheets/tests/test_day_functions.py (a caller's path offering a look-alike of each name).
--
-- Same signatures, same behaviour: the same bucket of each day (a writer holding a bucket across this
-- migration and one after it lock the same row; the test compares with 0005's expression), the same
-- lock, the same sum, the same error (SQLSTATE 23514, constraint entries_day_hours, DETAIL the hours
-- already recorded). CREATE OR REPLACE keeps each function's owner and grants (the runtime role's
-- EXECUTE), and, having no SET clause of its own, drops the one the function had: nothing to RESET.
--
-- Expand only (docs/upgrades.md): no function added, dropped or changed in what it takes or returns;
-- the previous release calls the same functions by the same names on this schema.
--
-- The schema's name is this migration's current_schema() (the runner sets it), written into the
-- bodies where they say {schema}.
DO $migration$
DECLARE
    here constant text := format('%I', current_schema());
BEGIN
    EXECUTE replace($sql$
CREATE OR REPLACE FUNCTION {schema}.day_bucket(p_issuer text, p_subject text, p_date date)
RETURNS int
LANGUAGE sql IMMUTABLE AS $$
    SELECT (pg_catalog.hashtextextended(
                pg_catalog.length(p_issuer)::pg_catalog.text
                OPERATOR(pg_catalog.||) ':' OPERATOR(pg_catalog.||) p_issuer
                OPERATOR(pg_catalog.||) ':' OPERATOR(pg_catalog.||) p_subject
                OPERATOR(pg_catalog.||) ':' OPERATOR(pg_catalog.||)
                (p_date OPERATOR(pg_catalog.-) '2000-01-01'::pg_catalog.date)::pg_catalog.text,
                0)
            OPERATOR(pg_catalog.&) 127)::int
$$
$sql$, '{schema}', here);

    EXECUTE replace($sql$
CREATE OR REPLACE FUNCTION {schema}.lock_days(p_issuer text, p_subjects text[], p_dates date[])
RETURNS int
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    locked int;
BEGIN
    SELECT pg_catalog.count(*) INTO locked FROM (
        SELECT l.bucket FROM {schema}.day_locks AS l
        WHERE l.bucket OPERATOR(pg_catalog.=) ANY (
            SELECT {schema}.day_bucket(p_issuer, k.subject, k.date)
            FROM ROWS FROM (pg_catalog.unnest(p_subjects), pg_catalog.unnest(p_dates)) AS k(subject, date))
        ORDER BY l.bucket
        FOR UPDATE
    ) AS b;
    RETURN locked;
END
$$
$sql$, '{schema}', here);

    EXECUTE replace($sql$
CREATE OR REPLACE FUNCTION {schema}.day_hours_locked(p_issuer text, p_subject text, p_date date)
RETURNS numeric
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    bucket_of_day int := {schema}.day_bucket(p_issuer, p_subject, p_date);
    total numeric;
BEGIN
    PERFORM 1 FROM {schema}.day_locks WHERE bucket OPERATOR(pg_catalog.=) bucket_of_day FOR UPDATE;
    SELECT coalesce(pg_catalog.sum(e.hours), 0) INTO total
        FROM {schema}.entries AS e
        WHERE e.owner_issuer OPERATOR(pg_catalog.=) p_issuer
          AND e.owner_subject OPERATOR(pg_catalog.=) p_subject
          AND e.date OPERATOR(pg_catalog.=) p_date
          AND e.deleted_at IS NULL;
    RETURN total;
END
$$
$sql$, '{schema}', here);

    EXECUTE replace($sql$
CREATE OR REPLACE FUNCTION {schema}.admit_day_hours(p_issuer text, p_subject text, p_date date, p_hours numeric)
RETURNS numeric
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    -- 0005's, which only the previous release calls: 0006's with 0005's limit (the same lock, sum,
    -- message and error)
    RETURN {schema}.admit_day_hours(p_issuer, p_subject, p_date, p_hours, 24);
END
$$
$sql$, '{schema}', here);

    EXECUTE replace($sql$
CREATE OR REPLACE FUNCTION {schema}.admit_day_hours(
    p_issuer text, p_subject text, p_date date, p_hours numeric, p_limit numeric)
RETURNS numeric
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    recorded numeric := {schema}.day_hours_locked(p_issuer, p_subject, p_date);
BEGIN
    IF (recorded OPERATOR(pg_catalog.+) p_hours) OPERATOR(pg_catalog.>) p_limit THEN
        RAISE EXCEPTION 'a day holds at most % hours per person', p_limit
            USING ERRCODE = 'check_violation', CONSTRAINT = 'entries_day_hours', TABLE = 'entries',
                  COLUMN = 'hours', DETAIL = recorded::pg_catalog.text;
    END IF;
    RETURN p_hours;
END
$$
$sql$, '{schema}', here);
END
$migration$;
