-- Approval decisions. A decision is recorded here first (pending), then applied to the entry at the
-- timesheets service (idempotent by decision id), then marked applied. A pending decision whose
-- apply step was interrupted is finished by the reconciler; one the timesheets service refuses for
-- good (entry deleted, decided by someone else, own entry) becomes void. See
-- docs/approvals-consistency.md.

CREATE TABLE decisions (
    id                uuid PRIMARY KEY,
    entry_id          uuid NOT NULL,
    decision          text NOT NULL CHECK (decision IN ('approved', 'rejected')),
    comment           text CHECK (char_length(comment) <= 2000),
    approver_issuer   text NOT NULL,
    approver_subject  text NOT NULL,
    approver_name     text NOT NULL DEFAULT '',
    approver_client   text NOT NULL DEFAULT '',
    request_id        text,
    state             text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'applied', 'void')),
    void_reason       text,
    attempts          integer NOT NULL DEFAULT 0,
    last_error        text,
    decided_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    applied_at        timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK ((state = 'applied') = (applied_at IS NOT NULL)),
    CHECK ((state = 'void') = (void_reason IS NOT NULL))
);

-- One decision per entry: a second one (or a concurrent one) conflicts here.
CREATE UNIQUE INDEX decisions_one_per_entry ON decisions (entry_id) WHERE state <> 'void';

-- The reconciler's work list.
CREATE INDEX decisions_pending ON decisions (updated_at) WHERE state = 'pending';

-- A settled decision is final: only a pending one may change (its state, attempts, last error).
CREATE FUNCTION decisions_settled_are_final() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'decisions are never deleted' USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF OLD.state <> 'pending' THEN
        RAISE EXCEPTION 'decision % is % and cannot change', OLD.id, OLD.state
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF (NEW.id, NEW.entry_id, NEW.decision, NEW.comment, NEW.approver_issuer, NEW.approver_subject,
        NEW.decided_at) IS DISTINCT FROM
       (OLD.id, OLD.entry_id, OLD.decision, OLD.comment, OLD.approver_issuer, OLD.approver_subject,
        OLD.decided_at) THEN
        RAISE EXCEPTION 'what was decided cannot change' USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER decisions_settled_are_final
    BEFORE UPDATE OR DELETE ON decisions
    FOR EACH ROW EXECUTE FUNCTION decisions_settled_are_final();
