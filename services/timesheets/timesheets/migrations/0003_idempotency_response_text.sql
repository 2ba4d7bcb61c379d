-- The first answer to an Idempotency-Key is kept as the text that was sent, so that a replay is that
-- answer byte for byte: jsonb kept only its value (members reordered, separators rewritten).
--
-- Safe for the previous release on this schema (tests/upgrade): it writes `response = $5::jsonb`,
-- which Postgres assigns to a text column (jsonb's output cast), and reads `response::text`. The
-- table holds one row per key within IDEMPOTENCY_TTL_HOURS, so the rewrite is short. Answers stored
-- before this migration replay as jsonb wrote them (the same JSON value).
ALTER TABLE idempotency_keys ALTER COLUMN response TYPE text USING response::text;
