-- The day's lock stops at its bucket's row (day_hours_locked, inside every create and every day of an
-- upload's check): `LIMIT 1` on the statement that locks it, nothing else changed.
--
-- Why: day_locks is one page of 128 rows, so once the table has statistics (autovacuum analyses it
-- within a minute of 0005) the planner takes a sequential scan over its primary key, and without a
-- limit the scan read every row for the one it locks: ~6.5 µs of a create's backend CPU (PostgreSQL 15,
-- a loop of 100,000 lookups: 8.5 µs a lookup against 4.7 with the limit; issue 17). With it, the scan
-- ends at the first row that matches: the rows lie in bucket order (0005's INSERT; a row lock does not
-- move a row), half the page on average. bucket is the primary key, so at most one row matches with or
-- without the limit: the same row is locked, the lock is taken before the day is summed, and a writer
-- waiting for it sees the holder's committed entries (each statement of a VOLATILE function takes a
-- fresh snapshot, as before). services/timesheets/tests/test_day_functions.py holds the read to one row
-- for a day of bucket 0.
--
-- Names qualified as in 0007 (no SET clause; the caller's search_path cannot substitute a look-alike).
-- Expand only (docs/upgrades.md, "(chart 0.12.0)"): the same signature, behaviour, owner and grants
-- (CREATE OR REPLACE); the previous release calls it by the same name on this schema. Rolling back
-- leaves it in place, which that release runs as its own.
DO $migration$
DECLARE
    here constant text := format('%I', current_schema());
BEGIN
    EXECUTE replace($sql$
CREATE OR REPLACE FUNCTION {schema}.day_hours_locked(p_issuer text, p_subject text, p_date date)
RETURNS numeric
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    bucket_of_day int := {schema}.day_bucket(p_issuer, p_subject, p_date);
    total numeric;
BEGIN
    PERFORM 1 FROM {schema}.day_locks WHERE bucket OPERATOR(pg_catalog.=) bucket_of_day LIMIT 1 FOR UPDATE;
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
END
$migration$;
