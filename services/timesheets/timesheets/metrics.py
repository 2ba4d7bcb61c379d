"""Domain metrics of the timesheets service (names fixed in docs/CONTRACTS.md).

``timesheets_refusals_total{reason,source}`` counts requests the service's own rules refused, beyond
what a schema says of one request alone (those are 422s in ``http_requests_total`` only): one count
per refused request, whatever the number of its rows at fault. ``reason`` is the problem's error
``type`` (``day_hours_exceeded``: a person's day past ``DAY_HOURS_LIMIT``, ``timesheets/daycap.py``),
``source`` where the write came from as in ``timesheets_entries_created_total`` (``api``, ``upload``).
A steady rate means a client keeps sending days it cannot store (a payroll import with a unit error,
a UI that does not show the day's total).
"""

from __future__ import annotations

from prometheus_client import Counter

entries_created = Counter(
    "timesheets_entries_created_total",
    "Timesheet entries created, by source (api: one by one; upload: batch uploads).",
    ["source"],
)
entries_deleted = Counter(
    "timesheets_entries_deleted_total",
    "Timesheet entries deleted by their owners.",
)

for _source in ("api", "upload"):
    entries_created.labels(_source)
#: the one-by-one creates' child, bound once (``labels()`` hashes and looks up its values per call)
entries_created_api = entries_created.labels("api")
refusals = Counter(
    "timesheets_refusals_total",
    "Writes refused by the service's rules, by reason (day_hours_exceeded) and source (api, upload).",
    ["reason", "source"],
)
#: the reasons :data:`refusals` knows (fixed label values: every series exists from the start)
REFUSAL_REASONS = ("day_hours_exceeded",)
for _reason in REFUSAL_REASONS:
    for _source in ("api", "upload"):
        refusals.labels(_reason, _source)
