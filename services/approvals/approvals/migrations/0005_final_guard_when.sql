-- The guard of settled decisions (decisions_settled_are_final, 0002/0004) is called only for the
-- changes it refuses, no longer before every UPDATE: settling a pending decision (and counting an
-- attempt at one) went through a plpgsql call whose checks pass, every time.
--
-- One trigger became three, each calling the same, unchanged function (so the same rows are refused,
-- with the same errors):
--
--   * decisions_settled_are_final: an UPDATE of a decision no longer pending (WHEN OLD.state <>
--     'pending'; state is NOT NULL, so the condition is never null);
--   * decisions_decided_never_changes: an UPDATE that sets any column saying what was decided, by whom
--     and when (UPDATE OF those columns; the function compares their values, as before). The services'
--     own updates never set them. Nothing else can change them: no other trigger on the table
--     rewrites a row, and no column is generated;
--   * decisions_never_deleted: every DELETE (a trigger on DELETE cannot name NEW in a WHEN; the runtime
--     role has no DELETE privilege anyway).
--
-- Why not one trigger with WHEN (OLD.state <> 'pending' OR (NEW.<decided>) IS DISTINCT FROM
-- (OLD.<decided>)): a trigger's WHEN is read and compiled again for every statement, and for that
-- row comparison this cost more than the plpgsql call it saved (a single-row update in autocommit,
-- interleaved rounds of the backend's CPU: 1.06x the old trigger's; without any trigger 0.88-0.91x,
-- these three 0.89-0.98x).
--
-- Expand only (docs/upgrades.md, "(chart 0.11.0)"): the previous release runs against this schema as
-- against its own. Replaced in this migration's one transaction: no moment without a guard.

DROP TRIGGER decisions_settled_are_final ON decisions;

CREATE TRIGGER decisions_settled_are_final
    BEFORE UPDATE ON decisions
    FOR EACH ROW
    WHEN (OLD.state <> 'pending')
    EXECUTE FUNCTION decisions_settled_are_final();

CREATE TRIGGER decisions_decided_never_changes
    BEFORE UPDATE OF id, entry_id, decision, comment, approver_issuer, approver_subject, approver_kind,
                     decided_at ON decisions
    FOR EACH ROW
    EXECUTE FUNCTION decisions_settled_are_final();

CREATE TRIGGER decisions_never_deleted
    BEFORE DELETE ON decisions
    FOR EACH ROW
    EXECUTE FUNCTION decisions_settled_are_final();
