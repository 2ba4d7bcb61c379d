-- Revocation end to end (issue 14): every access token's ledger row says which sign-in session and
-- which refresh-token family it came from, so that logout, refresh-family revocation, consent
-- withdrawal and code replay can revoke exactly what was issued from them; revoked rows say why and
-- whether the revocation was published to the gateways (the Redis Stream fan-out; this table is the
-- source of truth, see identity/revocation.py).

ALTER TABLE issued_tokens ADD COLUMN IF NOT EXISTS session_hash bytea;
ALTER TABLE issued_tokens ADD COLUMN IF NOT EXISTS family_id text;
ALTER TABLE issued_tokens ADD COLUMN IF NOT EXISTS revocation_reason text;
ALTER TABLE issued_tokens ADD COLUMN IF NOT EXISTS published_at timestamptz;
CREATE INDEX IF NOT EXISTS issued_tokens_session_idx ON issued_tokens (session_hash) WHERE session_hash IS NOT NULL;
CREATE INDEX IF NOT EXISTS issued_tokens_family_idx ON issued_tokens (family_id) WHERE family_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS issued_tokens_owner_idx ON issued_tokens (client_id, subject);
-- What the publisher looks for: revoked, not yet published (or all of them after Redis lost the stream).
CREATE INDEX IF NOT EXISTS issued_tokens_revoked_idx ON issued_tokens (expires_at) WHERE revoked_at IS NOT NULL;

ALTER TABLE refresh_tokens ADD COLUMN IF NOT EXISTS code_hash bytea;
CREATE INDEX IF NOT EXISTS refresh_tokens_owner_idx ON refresh_tokens (client_id, subject);
