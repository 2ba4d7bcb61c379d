-- Identity provider state: users, OAuth clients, consents, sessions, authorization codes,
-- issued-token ledger (for revocation on code replay) and signing keys (private parts encrypted).

CREATE TABLE IF NOT EXISTS users (
    subject        text PRIMARY KEY,
    username       text NOT NULL UNIQUE,
    email          text NOT NULL,
    name           text NOT NULL,
    password_hash  text NOT NULL,
    roles          text[] NOT NULL DEFAULT '{}',
    disabled       boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS clients (
    client_id                  text PRIMARY KEY,
    name                       text NOT NULL,
    first_party                boolean NOT NULL DEFAULT false,
    secret_hash                text,            -- NULL: public client (token auth method "none")
    redirect_uris              text[] NOT NULL DEFAULT '{}',
    post_logout_redirect_uris  text[] NOT NULL DEFAULT '{}',
    web_origins                text[] NOT NULL DEFAULT '{}',
    grant_types                text[] NOT NULL DEFAULT '{}',
    response_types             text[] NOT NULL DEFAULT '{}',
    allowed_scopes             text[] NOT NULL DEFAULT '{}',
    created_at                 timestamptz NOT NULL DEFAULT now(),
    updated_at                 timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS consents (
    subject     text NOT NULL REFERENCES users(subject) ON DELETE CASCADE,
    client_id   text NOT NULL REFERENCES clients(client_id) ON DELETE CASCADE,
    scopes      text[] NOT NULL,
    granted_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subject, client_id)
);

CREATE TABLE IF NOT EXISTS sessions (
    id_hash     bytea PRIMARY KEY,         -- SHA-256 of the cookie value; the value itself is never stored
    subject     text NOT NULL REFERENCES users(subject) ON DELETE CASCADE,
    auth_time   timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_subject_idx ON sessions (subject);

CREATE TABLE IF NOT EXISTS authorization_codes (
    code_hash              bytea PRIMARY KEY,   -- SHA-256 of the code
    client_id              text NOT NULL REFERENCES clients(client_id) ON DELETE CASCADE,
    subject                text NOT NULL REFERENCES users(subject) ON DELETE CASCADE,
    redirect_uri           text NOT NULL,
    scope                  text NOT NULL,
    audience               text NOT NULL,
    nonce                  text,
    code_challenge         text,
    code_challenge_method  text,
    auth_time              timestamptz NOT NULL,
    created_at             timestamptz NOT NULL DEFAULT now(),
    expires_at             timestamptz NOT NULL,
    used_at                timestamptz
);

CREATE TABLE IF NOT EXISTS issued_tokens (
    jti         text PRIMARY KEY,
    code_hash   bytea,
    client_id   text NOT NULL,
    subject     text NOT NULL,
    grant_type  text NOT NULL,
    issued_at   timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz
);
CREATE INDEX IF NOT EXISTS issued_tokens_code_idx ON issued_tokens (code_hash) WHERE code_hash IS NOT NULL;

CREATE TABLE IF NOT EXISTS signing_keys (
    kid            text PRIMARY KEY,
    alg            text NOT NULL,
    public_jwk     jsonb NOT NULL,
    private_key    bytea NOT NULL,          -- AES-256-GCM(nonce || ciphertext) of the PKCS#8 PEM
    created_at     timestamptz NOT NULL DEFAULT now(),
    signs_from     timestamptz NOT NULL,    -- published before this instant, signs from it on
    retired_at     timestamptz,             -- stops signing at this instant
    publish_until  timestamptz              -- removed from the JWKS after this instant
);
