-- "Everything alice did, newest first" must walk an index in seq order: with actor_issuer between
-- actor_subject and seq, a subject-only filter had to sort all of that actor's records per page.
DROP INDEX records_actor;
CREATE INDEX records_actor ON records (actor_subject, seq);

-- Denials and failures are rare and exactly what an auditor looks for: find them without a scan.
CREATE INDEX records_outcome ON records (outcome, seq);
CREATE INDEX records_source ON records (source, seq);
