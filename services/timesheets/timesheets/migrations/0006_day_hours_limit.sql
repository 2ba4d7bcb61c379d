-- The day's limit is written once: svckit.contracts.timesheets.DAY_HOURS_LIMIT, the number the API
-- documents and the upload's check (timesheets/daycap.py) compares with. 0005's admit_day_hours held a
-- copy of it (24, in its body), which a change of the contract would have left behind: creates checked
-- against one number, uploads against another. This overload takes the limit as an argument; the
-- create passes the contract's (store.CREATE_ENTRY), and nothing in SQL knows the number any more.
--
-- Expand only (docs/upgrades.md): a new function beside the old one, nothing changed or dropped. The
-- previous release calls neither. 0005's admit_day_hours(text, text, date, numeric) is no longer called
-- by this release and stays until a contract step removes it; while it stays, a test holds it to the
-- contract's number (services/timesheets/tests/test_day_cap.py). Same lock, same sum, same error as
-- 0005's: SQLSTATE 23514, constraint entries_day_hours, DETAIL the hours already recorded.
CREATE FUNCTION admit_day_hours(p_issuer text, p_subject text, p_date date, p_hours numeric, p_limit numeric)
RETURNS numeric
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    recorded numeric := day_hours_locked(p_issuer, p_subject, p_date);
BEGIN
    IF recorded + p_hours > p_limit THEN
        RAISE EXCEPTION 'a day holds at most % hours per person', p_limit
            USING ERRCODE = 'check_violation', CONSTRAINT = 'entries_day_hours', TABLE = 'entries',
                  COLUMN = 'hours', DETAIL = recorded::text;
    END IF;
    RETURN p_hours;
END
$$;

-- Names resolve in this schema only, whatever the caller's search_path.
DO $$
BEGIN
    EXECUTE format(
        'ALTER FUNCTION admit_day_hours(text, text, date, numeric, numeric) SET search_path = %I, pg_temp',
        current_schema());
END
$$;
