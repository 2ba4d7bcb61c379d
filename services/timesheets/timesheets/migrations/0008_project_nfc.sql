-- Project names in Unicode NFC, the rows written before it too.
--
-- Since release 47837cf the service stores a new project name in NFC and reads the project filter
-- so (svckit.contracts.fields.NameText, nfc=True): "Café" composed (U+00E9) and decomposed (e +
-- U+0301) are one project. Rows stored before that keep the spelling they were sent in, so a filter
-- by the (NFC) name missed the decomposed ones, and a listing showed one project twice.
--
-- Two parts, both expand-only (docs/upgrades.md):
--
-- * a trigger that stores a project name in NFC whoever writes it. Releases before 47837cf (still
--   serving while this release rolls out over one of them, and again after a `helm rollback` to one,
--   on this schema) store names as sent, NFD included: without the trigger they would go on writing
--   rows the filter misses after this migration ran. The trigger fires only for a name that is not NFC (its WHEN condition, evaluated
--   without calling a function), so the current release's writes, already NFC, never run it. A name
--   whose NFC is longer than the column's 100 characters (a few characters decompose under NFC,
--   U+0958 is two) is left as sent: the previous release took it so, and rewriting it would fail the
--   CHECK and turn its 201 into a 500. The current release refuses such a name (422).
-- * the backfill: rows whose project is not NFC, rewritten to NFC (the same exception). One statement:
--   a sequential read of entries and an update of the rows it changes (decomposed names are rare; a
--   row lock each, held to the end of this transaction). Idempotent: a second run finds nothing.
--   updated_at is left alone: the entry did not change, its spelling did.
--
-- Not rewritten: what other places hold of a name as it was sent — the audit trail (hash-chained: its
-- records stay as appended, and verify), the outbox's events not yet delivered (they are appended as
-- they are), and the idempotency records (a retry replays its first answer byte for byte, and expires
-- with IDEMPOTENCY_TTL_HOURS). No other service stores project names (approvals reads them from here).
--
-- The contract step (a later release, once no release that writes names as sent is a rollback
-- target): drop the trigger and its function, and hold the column to `project IS NFC NORMALIZED`
-- with a CHECK (NOT VALID, then VALIDATE).
--
-- `normalize` and `IS NFC NORMALIZED` need a UTF8 database (the chart's and the dev stack's are; any
-- other could not hold these names at all): on another encoding this file fails and says so.

CREATE FUNCTION project_nfc() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    composed text := pg_catalog.normalize(NEW.project, 'NFC');
BEGIN
    IF pg_catalog.char_length(composed) OPERATOR(pg_catalog.<=) 100 THEN
        NEW.project := composed;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER entries_project_nfc
    BEFORE INSERT OR UPDATE OF project ON entries
    FOR EACH ROW
    WHEN (NEW.project IS NOT NFC NORMALIZED)
    EXECUTE FUNCTION project_nfc();

UPDATE entries SET project = normalize(project, NFC)
    WHERE project IS NOT NFC NORMALIZED AND char_length(normalize(project, NFC)) <= 100;
