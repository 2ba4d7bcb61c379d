"""Domain metrics of the approvals service.

``approvals_decisions_total{decision}`` is fixed in docs/CONTRACTS.md. The reconciler adds
``approvals_decisions_pending`` (decisions recorded but not yet applied or voided),
``approvals_oldest_pending_decision_age_seconds`` and ``approvals_reconciliations_total{outcome}``
(``applied``, ``void``, ``retry``): a pending count or age that keeps growing means the timesheets
service is unreachable or refusing decisions. ``approvals_refusals_total{reason}`` counts decisions
refused before anything was recorded for a reason that is a denial (``own_entry``: an approver's own
entry, 403); its audit record is written beside (``audit_denials_written_total`` /
``audit_denials_dropped_total{service="approvals"}``).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

decisions = Counter(
    "approvals_decisions_total",
    "Decisions applied to entries, by decision (approved, rejected).",
    ["decision"],
)
pending = Gauge(
    "approvals_decisions_pending",
    "Decisions recorded but not yet applied to their entry (or voided).",
    multiprocess_mode="max",
)
oldest_pending = Gauge(
    "approvals_oldest_pending_decision_age_seconds",
    "Age of the oldest pending decision (0 when none).",
    multiprocess_mode="max",
)
reconciliations = Counter(
    "approvals_reconciliations_total",
    "Pending decisions the reconciler drove, by outcome (applied, void, retry).",
    ["outcome"],
)
refusals = Counter(
    "approvals_refusals_total",
    "Decisions refused before anything was recorded, by denial reason (own_entry).",
    ["reason"],
)

#: the counter's children by decision, looked up once (``labels()`` is ~2 µs a call, once a decision)
decided = {decision: decisions.labels(decision) for decision in ("approved", "rejected")}
for _outcome in ("applied", "void", "retry"):
    reconciliations.labels(_outcome)
refusals.labels("own_entry")
