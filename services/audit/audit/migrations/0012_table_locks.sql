-- The service's locks as locks on tables of its schema, not advisory locks. An advisory lock needs
-- no privilege: any role that may connect to the database (another service's, stolen from its pod)
-- could take the chain's key (crc32 of "audit-chain:<schema>", public in the source, and visible in
-- pg_locks while the audit service holds it) and keep it, and nothing would reach the trail for as
-- long as its session lived. LOCK TABLE ... IN EXCLUSIVE MODE needs UPDATE on the table, and only
-- the audit roles have any privilege in this schema. A table lock, like an advisory one, lives in the
-- lock manager only: no row written, no WAL (a row locked FOR UPDATE costs a write and its WAL record
-- on every append).
--
-- chain_lock serialises appends (append_documents below, and audit/store.py's transaction path);
-- checkpoint_lock lets one replica at a time sign a checkpoint (audit/checkpointer.py). Neither holds
-- rows: only their locks are used.
--
-- append_documents keeps its signature (pods built before this migration call it too, with the
-- advisory key they compute, now unused) and its body but for the lock. 0.1.0's pods never call it:
-- they take the advisory lock and insert themselves, so they must not append beside this release's
-- pods; the chart recreates the audit pods across that boundary (docs/upgrades.md).
CREATE TABLE chain_lock (nothing boolean CHECK (false));
CREATE TABLE checkpoint_lock (nothing boolean CHECK (false));

CREATE OR REPLACE FUNCTION append_documents(lock_key bigint, expected_seq bigint, expected_hash text,
                                 documents text[], hashes text[])
RETURNS TABLE (head_seq bigint, head_hash text, existing uuid[])
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    found_seq bigint;
    found_hash text;
    stored boolean;
    taken uuid[];
    r record;
    document text;
    prev text;
    next_seq bigint;
    new_documents text[] := '{}';
    new_hashes text[] := '{}';
BEGIN
    -- the chain lock: a table only this schema's roles can lock (not an advisory lock: see above)
    LOCK TABLE chain_lock IN EXCLUSIVE MODE;
    -- each statement of a VOLATILE function takes a fresh snapshot: the head is read after the lock
    SELECT h.seq, h.hash INTO found_seq, found_hash FROM chain_head AS h;
    IF NOT FOUND THEN  -- the owner removed the head row: the newest record is the head
        SELECT last.seq, last.hash INTO found_seq, found_hash
            FROM records AS last ORDER BY last.seq DESC LIMIT 1;
        IF NOT FOUND THEN
            found_seq := 0;
            found_hash := repeat('0', 64);
        END IF;
    END IF;

    -- The usual case, in one statement (the documents parsed once): the group was chained from this
    -- head, in order, with jsonb's form of every details, and no event of it is recorded yet.
    IF found_seq = expected_seq AND found_hash = expected_hash THEN
        WITH parsed AS MATERIALIZED (
            SELECT t.n, t.h, (j->>'seq')::bigint AS seq, (j->>'id')::uuid AS id,
                   CASE j->>'occurred_at'
                       WHEN '9999-12-31T23:59:59.999999Z' THEN 'infinity'::timestamptz
                       WHEN '0001-01-01T00:00:00.000000Z' THEN '-infinity'::timestamptz
                       ELSE (j->>'occurred_at')::timestamptz
                   END AS occurred_at,
                   (j->>'recorded_at')::timestamptz AS recorded_at, j->>'source' AS source,
                   j->'actor'->>'issuer' AS issuer, j->'actor'->>'subject' AS subject,
                   j->'actor'->>'kind' AS kind, j->'actor'->>'client_id' AS client_id,
                   j->'actor'->>'name' AS name, j->>'action' AS action,
                   j->'resource'->>'type' AS resource_type, j->'resource'->>'id' AS resource_id,
                   j->>'outcome' AS outcome, j->>'request_id' AS request_id, v.value,
                   v.value::text = j->>'details' AS jsonb_form, j->>'prev_hash' AS prev_hash,
                   CASE WHEN t.n = 1 THEN found_hash ELSE hashes[t.n - 1] END AS before
            FROM unnest(documents, hashes) WITH ORDINALITY AS t(d, h, n)
            CROSS JOIN LATERAL (SELECT t.d::jsonb AS j OFFSET 0) AS doc  -- parsed once
            CROSS JOIN LATERAL (SELECT (j->>'details')::jsonb AS value OFFSET 0) AS v
        ), exact AS (
            SELECT bool_and(p.jsonb_form AND p.seq = found_seq + p.n AND p.prev_hash = p.before)
                   AND NOT EXISTS (SELECT 1 FROM records AS r0 WHERE r0.id IN (SELECT p2.id FROM parsed AS p2))
                   AS ok
            FROM parsed AS p
        ), added AS (
            INSERT INTO records (seq, id, occurred_at, recorded_at, source, actor_issuer, actor_subject,
                                 actor_kind, actor_client_id, actor_name, action, resource_type,
                                 resource_id, outcome, request_id, details, prev_hash, hash)
            SELECT p.seq, p.id, p.occurred_at, p.recorded_at, p.source,
                   p.issuer, p.subject, p.kind, p.client_id, p.name, p.action, p.resource_type,
                   p.resource_id, p.outcome, p.request_id, p.value, p.prev_hash, p.h
            FROM parsed AS p
            WHERE (SELECT e.ok FROM exact AS e)
            ORDER BY p.n
            RETURNING 1
        )
        SELECT count(*) > 0 INTO stored FROM added;
        IF stored THEN
            RETURN QUERY SELECT found_seq + cardinality(documents), hashes[cardinality(hashes)],
                                '{}'::uuid[];
            RETURN;
        END IF;
    END IF;

    -- Otherwise the group is chained here, from the head found, without the events recorded
    -- already: the canonical document of audit/chain.py, written by to_json's escapes.
    SELECT coalesce(array_agg(r1.id), '{}') INTO taken
        FROM records AS r1
        WHERE r1.id IN (SELECT (d::json->>'id')::uuid FROM unnest(documents) AS d);
    prev := found_hash;
    next_seq := found_seq;
    FOR r IN
        SELECT x.*, a.issuer, a.subject, a.kind, a.client_id, a.name, o.type AS resource_type,
               o.id AS resource_id, x.details::jsonb::text AS form
        FROM unnest(documents) WITH ORDINALITY AS t(d, n)
        CROSS JOIN LATERAL json_to_record(t.d::json) AS x(
            id uuid, occurred_at text, recorded_at text, source text, actor json, action text,
            resource json, outcome text, request_id text, details text)
        CROSS JOIN LATERAL json_to_record(x.actor)
            AS a(issuer text, subject text, kind text, client_id text, name text)
        CROSS JOIN LATERAL json_to_record(x.resource) AS o(type text, id text)
        WHERE x.id <> ALL (taken)
        ORDER BY t.n
    LOOP
        next_seq := next_seq + 1;
        document := '{"action":' || to_json(r.action)
            || ',"actor":{"client_id":' || to_json(r.client_id) || ',"issuer":' || to_json(r.issuer)
            || ',"kind":' || to_json(r.kind) || ',"name":' || to_json(r.name)
            || ',"subject":' || to_json(r.subject) || '},"details":' || to_json(r.form)
            || ',"id":"' || r.id || '","occurred_at":"' || r.occurred_at
            || '","outcome":' || to_json(r.outcome) || ',"prev_hash":"' || prev
            || '","recorded_at":"' || r.recorded_at
            || '","request_id":' || coalesce(to_json(r.request_id)::text, 'null')
            || ',"resource":{"id":' || to_json(r.resource_id) || ',"type":' || to_json(r.resource_type)
            || '},"seq":' || next_seq || ',"source":' || to_json(r.source) || '}';
        prev := encode(sha256(convert_to(document, 'UTF8')), 'hex');
        new_documents := new_documents || document;
        new_hashes := new_hashes || prev;
    END LOOP;
    IF cardinality(new_documents) > 0 THEN
        INSERT INTO records (seq, id, occurred_at, recorded_at, source, actor_issuer, actor_subject,
                             actor_kind, actor_client_id, actor_name, action, resource_type,
                             resource_id, outcome, request_id, details, prev_hash, hash)
        SELECT x.seq, x.id, utc_instant(x.occurred_at), utc_instant(x.recorded_at), x.source,
               a.issuer, a.subject, a.kind, a.client_id, a.name, x.action, o.type, o.id, x.outcome,
               x.request_id, x.details::jsonb, x.prev_hash, t.h
        FROM unnest(new_documents, new_hashes) WITH ORDINALITY AS t(d, h, n)
        CROSS JOIN LATERAL json_to_record(t.d::json) AS x(
            seq bigint, id uuid, occurred_at text, recorded_at text, source text, actor json,
            action text, resource json, outcome text, request_id text, details text, prev_hash text)
        CROSS JOIN LATERAL json_to_record(x.actor)
            AS a(issuer text, subject text, kind text, client_id text, name text)
        CROSS JOIN LATERAL json_to_record(x.resource) AS o(type text, id text)
        ORDER BY t.n;
    END IF;
    RETURN QUERY SELECT next_seq, prev, taken;
END
$$;

-- CREATE OR REPLACE keeps no SET clause that it does not name: the settings of 0009 again.
DO $$
BEGIN
    EXECUTE format(
        'ALTER FUNCTION append_documents(bigint, bigint, text, text[], text[]) SET search_path = %I, pg_temp',
        current_schema()
    );
END
$$;
ALTER FUNCTION append_documents(bigint, bigint, text, text[], text[]) SET enable_seqscan = off;
ALTER FUNCTION append_documents(bigint, bigint, text, text[], text[]) SET jit = off;
ALTER FUNCTION append_documents(bigint, bigint, text, text[], text[]) SET plan_cache_mode = force_generic_plan;
