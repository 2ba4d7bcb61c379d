"""Domain metrics of the timesheets service (names fixed in docs/CONTRACTS.md)."""

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
