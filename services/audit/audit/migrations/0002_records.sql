-- The audit trail: one append-only table of hash-chained records.
--
-- seq is the chain position (1, 2, 3, … without gaps), assigned by the ingesting service while it
-- holds the chain lock (a transaction-scoped advisory lock), so concurrent ingestion across
-- replicas still forms one chain. hash = SHA-256 over the canonical JSON of the record's content
-- and prev_hash (see audit/chain.py); prev_hash of seq 1 is 64 zeros.

CREATE TABLE records (
    seq             bigint PRIMARY KEY CHECK (seq > 0),
    id              uuid NOT NULL UNIQUE,
    occurred_at     timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL,
    source          text NOT NULL,
    actor_issuer    text NOT NULL,
    actor_subject   text NOT NULL,
    actor_kind      text NOT NULL,
    actor_client_id text NOT NULL,
    actor_name      text NOT NULL,
    action          text NOT NULL,
    resource_type   text NOT NULL,
    resource_id     text NOT NULL,
    outcome         text NOT NULL CHECK (outcome IN ('success', 'denied', 'failure')),
    request_id      text,
    details         jsonb NOT NULL,
    prev_hash       text NOT NULL CHECK (prev_hash ~ '^[0-9a-f]{64}$'),
    hash            text NOT NULL CHECK (hash ~ '^[0-9a-f]{64}$')
);

-- Filters of GET /audit/events, each ending in seq so "newest first" pages walk an index.
CREATE INDEX records_actor ON records (actor_subject, actor_issuer, seq);
CREATE INDEX records_client ON records (actor_client_id, seq);
CREATE INDEX records_action ON records (action, seq);
CREATE INDEX records_resource ON records (resource_type, resource_id, seq);
CREATE INDEX records_occurred ON records (occurred_at);

-- Append-only, enforced by the database itself: no UPDATE, DELETE or TRUNCATE, whoever asks.
CREATE FUNCTION refuse_record_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit records are append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER records_append_only
    BEFORE UPDATE OR DELETE ON records
    FOR EACH ROW EXECUTE FUNCTION refuse_record_change();

CREATE TRIGGER records_no_truncate
    BEFORE TRUNCATE ON records
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_record_change();

-- Privileges as a second fence: nobody but the owner gets more than reading and appending. When the
-- deployment runs the service as a dedicated login role named audit_app (recommended: not the table
-- owner, so it cannot drop the triggers), that role gets exactly SELECT and INSERT.
REVOKE ALL ON records FROM PUBLIC;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'audit_app') THEN
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO audit_app', current_schema());
        GRANT SELECT, INSERT ON records TO audit_app;
        REVOKE UPDATE, DELETE, TRUNCATE ON records FROM audit_app;
    END IF;
END
$$;
