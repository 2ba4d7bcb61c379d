-- DPoP (RFC 9449, issue 15): a client may be registered to always use DPoP (RFC 9449 §5.2's
-- dpop_bound_access_tokens); an authorization code may be bound to a key by dpop_jkt on the
-- authorization request (§10); a public client's refresh tokens are bound to the key of the proof
-- they were issued with (§5), and the binding travels with every rotation of the family.

ALTER TABLE clients ADD COLUMN IF NOT EXISTS dpop_bound_access_tokens boolean NOT NULL DEFAULT false;
ALTER TABLE authorization_codes ADD COLUMN IF NOT EXISTS dpop_jkt text;
ALTER TABLE refresh_tokens ADD COLUMN IF NOT EXISTS dpop_jkt text;
