"""Events recorded twice: what the verification walk asks before it walks.

Every event reaches the trail exactly once (DESIGN.md, "Data and consistency"): a resend is
answered as a duplicate (``append_documents`` looks its id up under the chain lock), and
``records.id`` — the event's id — has been unique since the table exists (migration 0002,
``records_id_key``). The hash chain cannot tell: a copy of an event appended with the next seq and
the chain recomputed over it is a consistent chain. So the walk first asks the catalog whether that
uniqueness still stands, in the walk's own snapshot:

* a valid, live, unique index on ``(id)`` alone, whole-table (no predicate, no expression), and no
  table inheriting from ``records`` (a child's rows are read with the records but lie outside the
  parent's index): then no id is in the table twice — the index refused any second row, and it
  cannot be built again over one. One catalog lookup, whatever the trail's length; incremental
  walks cost nothing more.
* otherwise (the owner dropped the constraint, a child table was attached, an index build failed
  half-way): the walk looks for ids recorded twice itself, in SQL, among the records it walks
  against the whole table. Without the index that is a scan of the trail (an aggregate), on every
  walk, incremental ones too, for as long as the constraint is missing; a warning says so each time
  (docs/runbook.md: restore the constraint, which proves the trail free of duplicates as it builds).

A record whose event is in the trail at an earlier seq breaks the chain at the later copy's seq.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from svckit.db import Connection

from . import metrics

log = logging.getLogger("audit.store")

#: whether ``records`` (``$1``, its qualified name) keeps every id once by itself
GUARDED = """
SELECT EXISTS (
    SELECT 1
    FROM pg_index AS i
    JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attname = 'id'
    WHERE i.indrelid = $1::text::regclass
      AND i.indisunique AND i.indisvalid AND i.indislive
      AND i.indpred IS NULL AND i.indexprs IS NULL
      AND i.indnkeyatts = 1 AND i.indkey[0] = a.attnum
) AND NOT EXISTS (SELECT 1 FROM pg_inherits WHERE inhparent = $1::text::regclass)
"""


@dataclass(frozen=True, slots=True)
class RecordedTwice:
    """Event ``id`` at record ``first`` and again at ``again`` (the walk reports ``again``)."""

    id: uuid.UUID
    first: int
    again: int

    @property
    def reason(self) -> str:
        return (
            f"event {self.id} is recorded twice (records {self.first} and {self.again}): an event is "
            f"recorded once, so record {self.again} was appended behind the service"
        )


def _search(schema: str, until: int | None) -> str:
    """The ids in the table more than once, then the first later copy in the walked range. Grouped
    first, on purpose: asked as a self-join ``ORDER BY seq LIMIT 1``, the planner walked the range in
    seq order expecting a copy soon, reading every earlier record again for each one (a nested loop
    over the primary key: quadratic, stopped by the 30 s statement timeout on 20,000 records);
    grouped, it is one scan and one aggregate."""
    upper = "" if until is None else " AND s.again <= $2"
    return (
        f"WITH twice AS MATERIALIZED (SELECT id, array_agg(seq ORDER BY seq) AS seqs FROM {schema}.records"
        " GROUP BY id HAVING count(*) > 1)"
        " SELECT t.id, t.seqs[1] AS first, s.again FROM twice AS t"
        " CROSS JOIN LATERAL unnest(t.seqs[2:]) AS s(again)"
        f" WHERE s.again >= $1{upper} ORDER BY s.again LIMIT 1"
    )


async def recorded_twice(
    conn: Connection, schema: str, start: int, until: int | None
) -> RecordedTwice | None:
    """The first record from ``start`` (to ``until``) whose event is in the trail at an earlier seq,
    or None — at the cost of one catalog lookup while ``records.id`` is kept unique (see above)."""
    if await conn.fetchval(GUARDED, f"{schema}.records"):
        metrics.event_ids_unique.set(1)
        return None
    metrics.event_ids_unique.set(0)
    log.warning(
        "audit records.id is not kept unique by the database (constraint records_id_key missing or "
        "invalid, or a table inherits from records): this walk looks for events recorded twice by "
        "scanning the trail; restore the constraint (runbook)",
        extra={"from_seq": start},
    )
    args = (start,) if until is None else (start, until)
    row = await conn.fetchrow(_search(schema, until), *args)
    return None if row is None else RecordedTwice(row["id"], row["first"], row["again"])
