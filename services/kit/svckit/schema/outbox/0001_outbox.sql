-- The transactional outbox of audit events (svckit.outbox): the one definition of the table, applied
-- into every writer's schema by the migration runner (the writer lists "outbox" in migrations/kit.txt).
--
-- position orders delivery; id is the event's id (the audit service ingests idempotently by it);
-- attempts, next_attempt_at and last_error are the relay's retry bookkeeping.
CREATE TABLE outbox (
    position        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id              uuid NOT NULL UNIQUE,
    occurred_at     timestamptz NOT NULL,
    payload         jsonb NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text
);
CREATE INDEX outbox_due ON outbox (next_attempt_at, position);
