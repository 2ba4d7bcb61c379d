-- Timesheet entries, the idempotency records of create/upload requests.
--
-- Deletion is soft (deleted_at): a deleted entry answers 404 everywhere, but its row keeps the
-- decision id it may carry, so a decision replayed by the approvals reconciler after the entry was
-- deleted is still recognised as applied instead of being mistaken for a missing entry.

CREATE TABLE entries (
    id                  uuid PRIMARY KEY,
    owner_issuer        text NOT NULL,
    owner_subject       text NOT NULL,
    owner_name          text NOT NULL DEFAULT '',
    date                date NOT NULL,
    project             text NOT NULL CHECK (char_length(project) BETWEEN 1 AND 100),
    hours               numeric(4, 2) NOT NULL
                        CHECK (hours > 0 AND hours <= 24 AND hours * 4 = trunc(hours * 4)),
    notes               text CHECK (char_length(notes) <= 2000),
    status              text NOT NULL DEFAULT 'submitted'
                        CHECK (status IN ('submitted', 'approved', 'rejected')),
    source              text NOT NULL CHECK (source IN ('api', 'upload')),
    created_by_client   text NOT NULL DEFAULT '',
    upload_id           uuid,
    decision_id         uuid UNIQUE,
    decided_by_issuer   text,
    decided_by_subject  text,
    decided_by_name     text,
    decided_at          timestamptz,
    decision_comment    text,
    created_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    deleted_at          timestamptz,
    -- A decided entry carries the whole decision; a submitted one none of it.
    CHECK ((status = 'submitted') = (decision_id IS NULL)),
    CHECK (decision_id IS NULL OR (decided_by_issuer IS NOT NULL AND decided_by_subject IS NOT NULL
                                   AND decided_at IS NOT NULL)),
    -- An approved entry is never deleted.
    CHECK (NOT (status = 'approved' AND deleted_at IS NOT NULL))
);

-- The owner's listing, newest date first, in the cursor's order.
CREATE INDEX entries_owner_listing
    ON entries (owner_issuer, owner_subject, date DESC, created_at DESC, id DESC)
    WHERE deleted_at IS NULL;

-- The approvers' queue: submitted entries, newest date first.
CREATE INDEX entries_pending
    ON entries (date DESC, created_at DESC, id DESC)
    WHERE status = 'submitted' AND deleted_at IS NULL;

CREATE INDEX entries_upload ON entries (upload_id) WHERE upload_id IS NOT NULL;

-- A create or upload retried with the same Idempotency-Key by the same caller replays the first
-- response; the fingerprint (a hash of the request) tells a retry from a different request that
-- reuses a key.
CREATE TABLE idempotency_keys (
    caller_issuer   text NOT NULL,
    caller_subject  text NOT NULL,
    key             text NOT NULL,
    operation       text NOT NULL,
    fingerprint     text NOT NULL,
    status_code     integer NOT NULL,
    response        jsonb NOT NULL,
    location        text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (caller_issuer, caller_subject, key)
);

CREATE INDEX idempotency_keys_age ON idempotency_keys (created_at);
