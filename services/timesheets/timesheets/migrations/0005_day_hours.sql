-- A person's day holds at most 24 hours: the live entries (deleted_at IS NULL, whatever their status:
-- a rejected entry stays on the person's record until they delete it) of one owner on one date add
-- up to at most 24 (timesheets/daycap.py says why these count and not others).
--
-- Checked in the database, under a lock, so that two writers cannot both read "room for 20 hours"
-- and both insert 20: each locks the day's bucket (a row of day_locks, held to the end of its
-- transaction) before it sums the day, and in READ COMMITTED (every transaction of the service) each
-- statement of a VOLATILE function takes a fresh snapshot, so the sum is read after the lock is held
-- and sees what the lock's previous holder committed (as audit's 0006 reads its chain head). A lock
-- inside the create's own statement would not do that: the statement's snapshot is older than it.
--
-- Why rows of a table of buckets, and not an advisory lock per (owner, date) (this file's first
-- draft): an upload of 1,000 rows on distinct days took 1,000 advisory locks, which live in the
-- server's shared lock table (max_locks_per_transaction × connections: ~4–8 thousand), so a few
-- concurrent uploads filled it and every session of every service on the server failed with "out of
-- shared memory"; and any role on the database may take any advisory lock, so another service's role
-- could hold a person's day (audit's 0012 replaced its advisory locks for that reason). A row lock is
-- kept in the row, not in that table, and only a role with UPDATE on day_locks (this service's runtime
-- role) can take one. The (owner, date) is hashed into one of 128 buckets: an upload locks at most 128
-- rows whatever its size (in bucket order, so two uploads never deadlock), and two writers whose days
-- share a bucket wait for each other for one short transaction (a create is one statement).
--
-- No round trip of its own: the create calls admit_day_hours() inside its INSERT (store.CREATE_ENTRY),
-- the upload calls lock_days() and day_hours_locked() once for all its days before its INSERT
-- (store.day_totals).
--
-- Expand only (docs/upgrades.md): a table and three functions, no trigger or constraint on entries. The
-- previous release, which does not call them, works on this schema as before (and, during a rollout,
-- is not held to the cap); days already over 24 hours stay as they are, readable and deletable: only
-- new writes are checked. SECURITY INVOKER: the runtime role's own SELECT on entries and UPDATE on
-- day_locks (privileges.txt), nothing more; names resolve in this schema whatever the caller's
-- search_path.

CREATE TABLE day_locks (
    bucket int PRIMARY KEY CHECK (bucket >= 0 AND bucket < 128)
);
INSERT INTO day_locks (bucket) SELECT generate_series(0, 127);

-- The bucket of an owner's day: a hash of (issuer, subject, date), the date as a day number so that
-- no session's DateStyle changes it.
CREATE FUNCTION day_bucket(p_issuer text, p_subject text, p_date date)
RETURNS int
LANGUAGE sql IMMUTABLE AS $$
    SELECT (hashtextextended(
        format('%s:%s:%s:%s', length(p_issuer), p_issuer, p_subject, p_date - DATE '2000-01-01'),
        0) & 127)::int
$$;

-- The buckets of several days, locked in bucket order (each once): what an upload takes before it
-- sums its days, so that two uploads sharing buckets take them in the same order.
CREATE FUNCTION lock_days(p_issuer text, p_subjects text[], p_dates date[])
RETURNS int
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    locked int;
BEGIN
    SELECT count(*) INTO locked FROM (
        SELECT l.bucket FROM day_locks AS l
        WHERE l.bucket IN (SELECT day_bucket(p_issuer, k.subject, k.date)
                           FROM unnest(p_subjects, p_dates) AS k(subject, date))
        ORDER BY l.bucket
        FOR UPDATE
    ) AS b;
    RETURN locked;
END
$$;

-- The day's lock and, read after it is held, the hours of the owner's live entries on that date.
CREATE FUNCTION day_hours_locked(p_issuer text, p_subject text, p_date date)
RETURNS numeric
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    total numeric;
BEGIN
    PERFORM 1 FROM day_locks WHERE bucket = day_bucket(p_issuer, p_subject, p_date) FOR UPDATE;
    SELECT coalesce(sum(e.hours), 0) INTO total
        FROM entries AS e
        WHERE e.owner_issuer = p_issuer AND e.owner_subject = p_subject AND e.date = p_date
          AND e.deleted_at IS NULL;
    RETURN total;
END
$$;

-- ``p_hours`` more on the owner's day, or an error: SQLSTATE 23514 (check_violation), constraint
-- entries_day_hours, DETAIL the hours already recorded (what the service's 422 says). Returns
-- ``p_hours``, so that the INSERT takes its value from the call and runs after it.
CREATE FUNCTION admit_day_hours(p_issuer text, p_subject text, p_date date, p_hours numeric)
RETURNS numeric
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    recorded numeric := day_hours_locked(p_issuer, p_subject, p_date);
BEGIN
    IF recorded + p_hours > 24 THEN
        RAISE EXCEPTION 'a day holds at most 24 hours per person'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'entries_day_hours', TABLE = 'entries',
                  COLUMN = 'hours', DETAIL = recorded::text;
    END IF;
    RETURN p_hours;
END
$$;

-- Names resolve in this schema only, whatever the caller's search_path.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION day_bucket(text, text, date) SET search_path = %I, pg_temp',
                   current_schema());
    EXECUTE format('ALTER FUNCTION lock_days(text, text[], date[]) SET search_path = %I, pg_temp',
                   current_schema());
    EXECUTE format('ALTER FUNCTION day_hours_locked(text, text, date) SET search_path = %I, pg_temp',
                   current_schema());
    EXECUTE format(
        'ALTER FUNCTION admit_day_hours(text, text, date, numeric) SET search_path = %I, pg_temp',
        current_schema());
END
$$;
