-- Appending a group of records in one round trip (audit/store.py). The ingesting process chains the
-- group from the head it wrote last, so it needs nothing from the database before hashing; this
-- function then does under the chain lock what a transaction of five statements did: it takes the
-- lock, reads the head (each statement of a VOLATILE function takes a fresh snapshot, so the head is
-- read after the lock is held), and inserts the rows only when
--
-- * the head is still the one the rows were chained from (no other replica appended meanwhile),
-- * none of the events is recorded already (a resent event never becomes a second record),
-- * every details text is jsonb's own text form of the value (what verification reads back, so the
--   hashes computed over it hold).
--
-- Otherwise it inserts nothing and returns what it found (the head, the ids already recorded,
-- jsonb's form of each details text) for the caller to chain again. Called as one statement in
-- autocommit: the lock is released when it ends. SECURITY INVOKER: the runtime role's own rights
-- (SELECT, INSERT), nothing more; the head still moves by the 0005 trigger only.
CREATE FUNCTION append_records(
    lock_key bigint,
    expected_seq bigint,
    expected_hash text,
    seqs bigint[],
    ids uuid[],
    occurred timestamptz[],
    recorded timestamptz[],
    sources text[],
    actor_issuers text[],
    actor_subjects text[],
    actor_kinds text[],
    actor_client_ids text[],
    actor_names text[],
    actions text[],
    resource_types text[],
    resource_ids text[],
    outcomes text[],
    request_ids text[],
    details text[],
    prev_hashes text[],
    hashes text[]
) RETURNS TABLE (head_seq bigint, head_hash text, existing uuid[], forms text[])
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    found_seq bigint;
    found_hash text;
    taken uuid[];
    found_forms text[];
BEGIN
    PERFORM pg_advisory_xact_lock(lock_key);
    SELECT h.seq, h.hash INTO found_seq, found_hash FROM chain_head AS h;
    SELECT coalesce(array_agg(r.id), '{}') INTO taken FROM records AS r WHERE r.id = ANY(ids);
    SELECT coalesce(array_agg(d::jsonb::text ORDER BY n), '{}') INTO found_forms
        FROM unnest(details) WITH ORDINALITY AS t(d, n);
    IF found_seq IS DISTINCT FROM expected_seq OR found_hash IS DISTINCT FROM expected_hash
        OR cardinality(taken) > 0 OR found_forms IS DISTINCT FROM details THEN
        RETURN QUERY SELECT found_seq, found_hash, taken, found_forms;
        RETURN;
    END IF;
    INSERT INTO records (seq, id, occurred_at, recorded_at, source, actor_issuer, actor_subject,
                         actor_kind, actor_client_id, actor_name, action, resource_type, resource_id,
                         outcome, request_id, details, prev_hash, hash)
    SELECT r.seq, r.id, r.occurred_at, r.recorded_at, r.source, r.actor_issuer, r.actor_subject,
           r.actor_kind, r.actor_client_id, r.actor_name, r.action, r.resource_type, r.resource_id,
           r.outcome, r.request_id, r.details::jsonb, r.prev_hash, r.hash
    FROM unnest(seqs, ids, occurred, recorded, sources, actor_issuers, actor_subjects, actor_kinds,
                actor_client_ids, actor_names, actions, resource_types, resource_ids, outcomes,
                request_ids, details, prev_hashes, hashes)
        AS r(seq, id, occurred_at, recorded_at, source, actor_issuer, actor_subject, actor_kind,
             actor_client_id, actor_name, action, resource_type, resource_id, outcome, request_id,
             details, prev_hash, hash);
END
$$;

-- Names resolve in this schema only, whatever the caller's search_path.
DO $$
BEGIN
    EXECUTE format(
        'ALTER FUNCTION append_records(bigint, bigint, text, bigint[], uuid[], timestamptz[], '
        'timestamptz[], text[], text[], text[], text[], text[], text[], text[], text[], text[], '
        'text[], text[], text[], text[], text[]) SET search_path = %I, pg_temp',
        current_schema()
    );
END
$$;
