-- Rotating refresh tokens with reuse detection (OAuth 2.0 Security BCP §4.14): every use returns a new
-- token of the same family; presenting a used token again revokes the whole family.

CREATE TABLE IF NOT EXISTS refresh_tokens (
    token_hash         bytea PRIMARY KEY,       -- SHA-256 of the token
    family_id          text NOT NULL,
    client_id          text NOT NULL REFERENCES clients(client_id) ON DELETE CASCADE,
    subject            text NOT NULL REFERENCES users(subject) ON DELETE CASCADE,
    scope              text NOT NULL,
    auth_time          timestamptz NOT NULL,
    session_hash       bytea,                   -- the sign-in session it came from (logout revokes it)
    created_at         timestamptz NOT NULL DEFAULT now(),
    expires_at         timestamptz NOT NULL,    -- idle limit of this token
    family_expires_at  timestamptz NOT NULL,    -- absolute limit of the family
    used_at            timestamptz,
    revoked_at         timestamptz
);
CREATE INDEX IF NOT EXISTS refresh_tokens_family_idx ON refresh_tokens (family_id);
CREATE INDEX IF NOT EXISTS refresh_tokens_session_idx ON refresh_tokens (session_hash) WHERE session_hash IS NOT NULL;

ALTER TABLE authorization_codes ADD COLUMN IF NOT EXISTS session_hash bytea;
