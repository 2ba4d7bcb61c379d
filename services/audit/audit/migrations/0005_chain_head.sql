-- The chain's head in a row of its own, so appending never searches the records for it: a lookup of
-- one row by its key costs the same at a thousand records and at a billion, whatever the planner
-- thinks of a table it has never analysed (the ORDER BY seq DESC LIMIT 1 it replaces once turned into
-- a sequential scan under the chain lock).
--
-- A trigger keeps it, not the ingesting code: every insert into records moves the head, whoever
-- inserts — the previous release's pods too, which still find the head in records during a rolling
-- upgrade (both take the same advisory chain lock, so their appends interleave correctly). The
-- function runs as its owner (SECURITY DEFINER, search_path pinned), so the runtime role only reads
-- the head: it cannot set it, any more than it can change a record.
CREATE TABLE chain_head (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    seq      bigint NOT NULL CHECK (seq >= 0),
    hash     text NOT NULL CHECK (hash ~ '^[0-9a-f]{64}$')
);

INSERT INTO chain_head (seq, hash)
SELECT coalesce(last.seq, 0), coalesce(last.hash, repeat('0', 64))
FROM (SELECT 1) AS one
LEFT JOIN LATERAL (SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1) AS last ON true;

CREATE FUNCTION advance_chain_head() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    UPDATE chain_head AS head SET seq = added.seq, hash = added.hash
    FROM (SELECT seq, hash FROM appended ORDER BY seq DESC LIMIT 1) AS added
    WHERE added.seq > head.seq;
    RETURN NULL;
END
$$;

-- Pinned to this schema: a definer's function must never resolve names through the caller's path.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION advance_chain_head() SET search_path = %I, pg_temp', current_schema());
END
$$;
REVOKE ALL ON FUNCTION advance_chain_head() FROM PUBLIC;

CREATE TRIGGER records_advance_head
    AFTER INSERT ON records
    REFERENCING NEW TABLE AS appended
    FOR EACH STATEMENT EXECUTE FUNCTION advance_chain_head();

-- Nobody but the owner changes the head by hand; the runtime role reads it (privileges.txt).
REVOKE ALL ON chain_head FROM PUBLIC;
