-- A person's day holds at most 24 hours: the live entries (deleted_at IS NULL, whatever their status:
-- a rejected entry stays on the person's record until they delete it) of one owner on one date add
-- up to at most 24 (timesheets/daycap.py says why these count and not others).
--
-- Checked in the database, under a lock per (owner, date), so that two writers cannot both read
-- "room for 20 hours" and both insert 20: each takes the day's advisory lock (held to the end of its
-- transaction) before it sums the day, and in READ COMMITTED (every transaction of the service) each
-- statement of a VOLATILE function takes a fresh snapshot, so the sum is read after the lock is held
-- and sees what the lock's previous holder committed (as audit's 0006 reads its chain head). A lock inside the create's own statement would
-- not do that: the statement's snapshot is older than the lock.
--
-- No round trip of its own: the create calls admit_day_hours() inside its INSERT (store.CREATE_ENTRY),
-- the upload calls day_hours_locked() once for all its days before its INSERT (store.day_totals).
--
-- Expand only (docs/upgrades.md): two functions, no trigger or constraint on entries. The previous
-- release, which does not call them, works on this schema as before (and, during a rollout, is not
-- held to the cap); days already over 24 hours stay as they are, readable and deletable: only new
-- writes are checked. SECURITY INVOKER: the runtime role's own SELECT on entries, nothing more.

-- The day's lock and, read after it is held, the hours of the owner's live entries on that date.
-- The key is a hash of the (issuer, subject, date) (one 64-bit key: a rare collision only makes two
-- days wait for each other); the date as a day number, so that no session's DateStyle changes it.
CREATE FUNCTION day_hours_locked(p_issuer text, p_subject text, p_date date)
RETURNS numeric
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    total numeric;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(
        format('timesheets.day:%s:%s:%s:%s', length(p_issuer), p_issuer, p_subject,
               p_date - DATE '2000-01-01'),
        0));
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
