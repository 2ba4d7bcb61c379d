-- The replay memory's fallback (svckit.replay): the nonces of unsafe signed requests accepted while
-- Redis was unavailable (and for one window after it came back), shared by every replica of the
-- service through its own schema. Applied into each receiving service's schema by the migration runner
-- (the service lists "replay" in migrations/kit.txt).
--
-- nonce is the signed request's X-Identity-Nonce (16-128 characters, checked before it gets here);
-- expires_at is when it could no longer be replayed (now() + the window, on the database's clock:
-- one clock for every replica). Rows past it are deleted by each replica's purge task, a bounded
-- batch at a time (the index).
CREATE TABLE identity_replay (
    nonce      text PRIMARY KEY,
    expires_at timestamptz NOT NULL
);
CREATE INDEX identity_replay_expiry ON identity_replay (expires_at);
