-- Signed checkpoints of the chain (audit/checkpoints.py). The JWS is the checkpoint — signed outside
-- the database with AUDIT_CHECKPOINT_KEYS; the other columns repeat what it signs, for listing, and
-- are trusted by nothing. Append-only like the records: the runtime role may insert and read.
CREATE TABLE checkpoints (
    number    bigint PRIMARY KEY CHECK (number > 0),
    seq       bigint NOT NULL CHECK (seq >= 0),
    head      text NOT NULL CHECK (head ~ '^[0-9a-f]{64}$'),
    signed_at timestamptz NOT NULL,
    key_id    text NOT NULL,
    jws       text NOT NULL
);

CREATE TRIGGER checkpoints_append_only
    BEFORE UPDATE OR DELETE ON checkpoints
    FOR EACH ROW EXECUTE FUNCTION refuse_record_change();

CREATE TRIGGER checkpoints_no_truncate
    BEFORE TRUNCATE ON checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_record_change();

REVOKE ALL ON checkpoints FROM PUBLIC;
