-- Appending a group as the documents that were hashed (audit/store.py), in one round trip that
-- always stores it.
--
-- append_records (0006) took the group as 18 column arrays: encoding them was a quarter of the
-- ingesting process's CPU per request (a fixed cost per array, whatever the group's size). Here each
-- record arrives as its canonical JSON document (audit/chain.py: the exact text its hash covers) with
-- that hash: two arrays. The columns are read back out of the document, so the stored row is the one
-- that was hashed by construction.
--
-- append_records stored nothing when the head had moved (another replica appended), an event was
-- recorded already or a details text was not jsonb's own form, and the process chained the group
-- again; replicas appending in turn kept moving the head between the answer and the retry, and after
-- three misses the process took a transaction holding the lock across round trips. This function
-- chains the group itself in that case, under the lock: from the head it found, without the events
-- already recorded, with jsonb's form of each details, each hash SHA-256 over the same canonical
-- document built in SQL (to_json writes a string with the escapes json.dumps(ensure_ascii=False)
-- writes; the timestamps keep the document's text, chain.timestamp's). A miss costs Postgres the
-- hashing, never a second round trip. It returns the head after the group and the ids skipped.
--
-- SECURITY INVOKER: the runtime role's own rights (SELECT, INSERT), nothing more; the head still
-- moves by the 0005 trigger only. Index lookups only (0008) and no JIT: with sequential scans
-- disabled every plan of the head row costs more than jit_above_cost, and a server built with LLVM
-- compiled the function's statements on every call (14 ms instead of 0.4). One generic plan per
-- statement, made once per session: PL/pgSQL otherwise kept planning the insert afresh for each call
-- (its custom plans looked cheaper), which cost Postgres ~2 ms per group of five events here.
CREATE FUNCTION append_documents(lock_key bigint, expected_seq bigint, expected_hash text,
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
    PERFORM pg_advisory_xact_lock(lock_key);
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
            SELECT t.n, t.h, x.*, x.actor->>'issuer' AS issuer, x.actor->>'subject' AS subject,
                   x.actor->>'kind' AS kind, x.actor->>'client_id' AS client_id,
                   x.actor->>'name' AS name, x.resource->>'type' AS resource_type,
                   x.resource->>'id' AS resource_id, v.value,
                   v.value::text = x.details AS jsonb_form,
                   CASE WHEN t.n = 1 THEN found_hash ELSE hashes[t.n - 1] END AS before
            FROM unnest(documents, hashes) WITH ORDINALITY AS t(d, h, n)
            CROSS JOIN LATERAL json_to_record(t.d::json) AS x(
                seq bigint, id uuid, occurred_at text, recorded_at text, source text, actor json,
                action text, resource json, outcome text, request_id text, details text, prev_hash text)
            CROSS JOIN LATERAL (SELECT x.details::jsonb AS value OFFSET 0) AS v  -- parsed once
        ), exact AS (
            SELECT bool_and(p.jsonb_form AND p.seq = found_seq + p.n AND p.prev_hash = p.before)
                   AND NOT EXISTS (SELECT 1 FROM records AS r0 WHERE r0.id IN (SELECT p2.id FROM parsed AS p2))
                   AS ok
            FROM parsed AS p
        ), added AS (
            INSERT INTO records (seq, id, occurred_at, recorded_at, source, actor_issuer, actor_subject,
                                 actor_kind, actor_client_id, actor_name, action, resource_type,
                                 resource_id, outcome, request_id, details, prev_hash, hash)
            SELECT p.seq, p.id, utc_instant(p.occurred_at), utc_instant(p.recorded_at), p.source,
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

-- A document's timestamp (chain.timestamp's text: UTC, microseconds, Z) as the instant it names;
-- the two that asyncpg writes as infinity (datetime.max and .min) stored so, as before.
CREATE FUNCTION utc_instant(written text) RETURNS timestamptz
LANGUAGE sql STABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE written
        WHEN '9999-12-31T23:59:59.999999Z' THEN 'infinity'::timestamptz
        WHEN '0001-01-01T00:00:00.000000Z' THEN '-infinity'::timestamptz
        ELSE written::timestamptz
    END
$$;

-- Names resolve in this schema only, whatever the caller's search_path.
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
