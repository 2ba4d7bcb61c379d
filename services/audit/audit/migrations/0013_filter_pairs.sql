-- Pairs of filters of GET /audit/events that an auditor combines and that no index served (the
-- service's own denials, a client's or an action's denials — the web app offers action × outcome —,
-- an action from the wrong service): each
-- filter had an index of its own (0003, 0011), and Postgres walked one of them (or the primary key)
-- newest first, dropping the records the other filter excluded. Where the pair matches a few old
-- records (the timesheets service's own denials among the gateway's, one client's denials among its
-- successes) or nothing (timesheet.created from approvals), that walk read the whole trail for one
-- page: 1M records, ~72,000 buffers and ~300 ms; at 100M the 30 s command timeout, holding a pooled
-- connection all along. With the pair leading an index, the page is one range of it, newest first.
--
-- Other combinations, and every from/to window, are served without a walk that filters (audit/store.py,
-- AuditStore.list: a bounded band below the cursor, then the records of the most selective condition
-- sorted), and every listing statement is bounded by AUDIT_READ_TIMEOUT_SECONDS.
--
-- Four more index entries per record appended (measured before landing: docs/upgrades.md). IF NOT
-- EXISTS: on a big trail, build them by hand with CREATE INDEX CONCURRENTLY before the upgrade
-- (docs/upgrades.md, "Audit 0013"); this migration then finds them and blocks no append.
CREATE INDEX IF NOT EXISTS records_source_outcome ON records (source, outcome, seq);
CREATE INDEX IF NOT EXISTS records_source_action ON records (source, action, seq);
CREATE INDEX IF NOT EXISTS records_client_outcome ON records (actor_client_id, outcome, seq);
CREATE INDEX IF NOT EXISTS records_action_outcome ON records (action, outcome, seq);

-- What the planner needs to take those indexes: left to assume the columns independent, it reckons
-- "timesheets" (70% of the trail) and "denied" (15%) meet in 10% of it, walks the primary key expecting
-- a page within ~500 records, and reads the whole trail (the pair index was there, unused). Their
-- combinations as they are (the most common ones, the rest estimated from them) cost nothing to
-- appends; ANALYZE gathers them (autovacuum's, or the one below, a sample of 30,000 records).
CREATE STATISTICS IF NOT EXISTS records_filter_values (mcv) ON source, outcome, action, actor_client_id FROM records;
ANALYZE records;
