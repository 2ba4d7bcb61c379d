-- A confidential client's secret rotates with an overlap (python -m identity rotate-client-secret):
-- the secret of before stays valid until previous_secret_expires_at, beside the current one in
-- secret_hash. Expand only: secret_hash stays the current secret, which the previous release reads and
-- writes as before (it takes only the current secret during an overlap: docs/upgrades.md).
-- secret_rotated_at: set by the command, so that the seed (BATCH_CLIENT_SECRET) does not put back the
-- secret of before; cleared once the seed's value is the current secret again.

ALTER TABLE clients ADD COLUMN IF NOT EXISTS previous_secret_hash text;
ALTER TABLE clients ADD COLUMN IF NOT EXISTS previous_secret_expires_at timestamptz;
ALTER TABLE clients ADD COLUMN IF NOT EXISTS secret_rotated_at timestamptz;
