"""A trail shaped like the platform's, written in one statement (for plan tests and measurements).

The rows bypass the chain (their hashes are placeholders): listing reads columns only and never checks
a hash, and nothing here verifies. What matters for plans is the mix, taken from the producers
(docs/CONTRACTS.md "Audit actions" and "Denials on the audit trail"):

* timesheets: entries created (50%), deleted (10%), decided (5%), uploaded by the batch client (5%),
  created through the partner client (5%);
* approvals: decisions (10%), a few of them denied;
* gateway: aggregated ``access.denied`` records of anonymous callers (15%);
* rare on purpose, and only among the oldest records: the timesheets service's own denials, the
  partner client's denials. The combinations an auditor looks for (``outcome=denied&source=
  timesheets``, ``client_id=partner&outcome=denied``) match a handful of old records, so a plan that
  walks the newest records first and filters reads the whole trail before it has a page;
* ``action=timesheet.created&source=approvals`` matches nothing (approvals never writes it).

``occurred_at`` follows the chain (10 s a record, a few seconds of ingest lag) but for late events:
one record in 10,007 occurred 30 days before it was recorded, so ``occurred_at`` is not monotonic in
``seq``, as in production (an outbox backlog, a relay that was down).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

#: ``recorded_at`` of seq 0; record g is recorded SPACING later per seq
START = datetime(2026, 1, 1, tzinfo=UTC)
SPACING = timedelta(seconds=10)
#: the partner's client id, and the seqs below which the rare denials are
PARTNER = "partner-portal"
RARE_BELOW = 2_000


def recorded(seq: int) -> datetime:
    return START + seq * SPACING


SEED = """
INSERT INTO SCHEMA.records
SELECT g, md5(g::text || 'id')::uuid,
       CASE WHEN g % 10007 = 0 THEN t - interval '30 days' ELSE t - (g % 7) * interval '1 second' END,
       t, m.source, m.issuer, m.subject, m.kind, m.client_id, m.name, m.action, m.rtype, m.rid,
       m.outcome, md5(g::text || 'request'), m.details::jsonb,
       md5(g::text) || md5(g::text || 'p'), md5(g::text || 'h') || md5(g::text || 'i')
FROM generate_series(1, $1::bigint) AS g
CROSS JOIN LATERAL (SELECT $2::timestamptz + g * interval '10 seconds' AS t, g % 20 AS k) AS x
CROSS JOIN LATERAL (
    SELECT
        CASE WHEN x.k BETWEEN 12 AND 13 THEN 'approvals'
             WHEN x.k BETWEEN 16 AND 18 AND NOT rare.ts_denied THEN 'gateway'
             ELSE 'timesheets' END AS source,
        CASE WHEN x.k BETWEEN 16 AND 18 THEN '' ELSE 'http://localhost:9000/' END AS issuer,
        CASE WHEN x.k BETWEEN 16 AND 18 THEN 'anonymous'
             WHEN x.k = 15 THEN 'timesheets-batch@clients'
             WHEN x.k IN (12, 13, 14) THEN 'local|manager' || (g % 50)
             ELSE 'local|user' || (g % 500) END AS subject,
        CASE WHEN x.k BETWEEN 16 AND 18 THEN 'anonymous' WHEN x.k = 15 THEN 'client' ELSE 'user' END AS kind,
        CASE WHEN x.k BETWEEN 16 AND 18 AND NOT rare.ts_denied THEN ''
             WHEN x.k = 15 THEN 'timesheets-batch'
             WHEN x.k = 19 OR rare.ts_denied THEN $3
             ELSE 'timesheets-spa' END AS client_id,
        'User ' || (g % 500) AS name,
        CASE WHEN x.k < 10 OR x.k = 19 THEN 'timesheet.created'
             WHEN x.k < 12 THEN 'timesheet.deleted'
             WHEN x.k < 14 THEN 'approval.decided'
             WHEN x.k = 14 THEN 'timesheet.decided'
             WHEN x.k = 15 THEN 'timesheet.uploaded'
             ELSE 'access.denied' END AS action,
        CASE WHEN x.k BETWEEN 16 AND 18 THEN 'route' WHEN x.k = 15 THEN 'timesheet_upload'
             ELSE 'timesheet' END AS rtype,
        CASE WHEN x.k BETWEEN 16 AND 18 THEN 'GET /timesheets'
             ELSE md5(g::text || 'entry')::uuid::text END AS rid,
        CASE WHEN x.k BETWEEN 16 AND 18 THEN 'denied'
             WHEN x.k = 13 AND g % 1000 = 13 THEN 'denied'
             ELSE 'success' END AS outcome,
        CASE WHEN x.k BETWEEN 16 AND 18
             THEN '{"count": 3, "reason": "missing_token", "status": 401, "route": "/timesheets"}'
             ELSE '{"date": "2026-11-23", "hours": 7.5, "project": "Store rollout"}' END AS details
    FROM (SELECT g < $4 AND g % 97 = 16 AS ts_denied) AS rare
) AS m
"""


async def seed(conn: asyncpg.Connection, schema: str, rows: int) -> None:
    """``rows`` records (seq 1..rows) in ``schema``'s trail, its head moved to the last, analysed."""
    await conn.execute(SEED.replace("SCHEMA", schema, 1), rows, START, PARTNER, RARE_BELOW)
    await conn.execute(f"ANALYZE {schema}.records")
