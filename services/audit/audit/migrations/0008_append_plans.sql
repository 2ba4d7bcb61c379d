-- append_records (0006) looks every event up by id under the chain lock. PL/pgSQL keeps a generic
-- plan per session, made once; made while the table was small and never analysed (this kind of
-- Postgres may run without autovacuum), it was a sequential scan of the records, kept as the table
-- grew: perf put uuid_eq and the scan above everything else, and the append rate fell round after
-- round. Without sequential scans the only plans are the index lookups, whatever the statistics.
DO $$
BEGIN
    EXECUTE
        'ALTER FUNCTION append_records(bigint, bigint, text, bigint[], uuid[], timestamptz[], '
        'timestamptz[], text[], text[], text[], text[], text[], text[], text[], text[], text[], '
        'text[], text[], text[], text[], text[]) SET enable_seqscan = off';
END
$$;
