-- The outbox relay's delivery receipt (svckit.outbox): where the audit service said it stored the
-- newest event this schema's relay delivered. Kept here, in the producer's schema, where the audit
-- service's role cannot reach: a trail restored to an earlier point, or cut by someone with the audit
-- database owner's rights, no longer holds it, and the relay's check (GET /internal/receipts/{id})
-- finds that out even when the audit service's own watermark was lost with Redis, or the lost records
-- were newer than its newest signed checkpoint. Expand-only: a new table, nothing else changes.
--
-- One row. event_id/seq/hash/delivered_at: the receipt (NULL until the first delivery to an audit
-- service that answers receipts); moved by the relay in the transaction that deletes the delivered
-- rows, only to a higher seq, and never while a mismatch is recorded. mismatch_*: what the check
-- found when the trail no longer held the receipt; kept (the receipt with it) until an operator
-- accepts the loss (python -m <service> outbox accept-audit-restore).
CREATE TABLE outbox_receipt (
    singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    event_id        uuid,
    seq             bigint,
    hash            text,
    delivered_at    timestamptz,
    mismatch_at     timestamptz,
    mismatch_detail text
);
INSERT INTO outbox_receipt DEFAULT VALUES;
