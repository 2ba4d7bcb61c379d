-- A restore's revocation cutoff ("not before", as Keycloak's not-before push): python -m identity
-- after-restore records one, and the provider publishes it on the gateways' revocation stream, which
-- then refuse every access token of this issuer whose iat is before issued_before, until keep_until.
-- The restored ledger (issued_tokens) does not know the tokens issued after the backup, so revoking
-- its rows cannot reach them; the cutoff does (identity/revocation.py, docs/CONTRACTS.md "Revocation
-- events"). Expand only: a new table that the previous release neither reads nor writes.
-- published_at: when it was last written to the stream (NULL: the periodic check publishes it).

CREATE TABLE IF NOT EXISTS revocation_cutoffs (
    issued_before timestamptz PRIMARY KEY,   -- whole seconds: tokens with iat before it are refused
    keep_until    timestamptz NOT NULL,      -- issued_before + the longest access-token life + leeway
    reason        text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);
