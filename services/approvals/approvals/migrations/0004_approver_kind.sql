-- Who decided: a person or a machine client holding approve:timesheets (an identity's kind). The
-- decision's audit events (approval.decided here, timesheet.decided at the timesheets service) name
-- the approver with it; before this column both said "user" for every approver.
--
-- Expand only (docs/upgrades.md): a default, so the previous release, which does not write the
-- column, keeps inserting (its decisions are recorded as it recorded them: a user's). Rows decided
-- before this migration keep that default: which of them a client made is not known here.
--
-- Version 4, not 3: deployments from before the kit owned the outbox ran their outbox as version 3
-- (kept in their history when the kit adopted it: services/kit/tests/test_kit_migrations.py).

ALTER TABLE decisions
    ADD COLUMN approver_kind text NOT NULL DEFAULT 'user'
        CHECK (approver_kind IN ('user', 'client', 'service'));

-- What was decided cannot change, now including who decided it (as 0002's trigger, one more column).
CREATE OR REPLACE FUNCTION decisions_settled_are_final() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'decisions are never deleted' USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF OLD.state <> 'pending' THEN
        RAISE EXCEPTION 'decision % is % and cannot change', OLD.id, OLD.state
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF (NEW.id, NEW.entry_id, NEW.decision, NEW.comment, NEW.approver_issuer, NEW.approver_subject,
        NEW.approver_kind, NEW.decided_at) IS DISTINCT FROM
       (OLD.id, OLD.entry_id, OLD.decision, OLD.comment, OLD.approver_issuer, OLD.approver_subject,
        OLD.approver_kind, OLD.decided_at) THEN
        RAISE EXCEPTION 'what was decided cannot change' USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END;
$$;
