"""Where every metric label of the platform takes its values from — each a closed set (docs/CONTRACTS.md
"Metrics": never a value a request chose).

Every module of the kit and the five services is imported, and each labelled metric of the registry
must be in :data:`SOURCES` with the closed set its label comes from. A new label fails here until its
author says where its values come from; a label whose values a request could choose does not belong
in the table, and ``tests/faults/test_cardinality.py`` catches one that slips in anyway.
"""

from __future__ import annotations

import importlib
import pkgutil

import pytest
from prometheus_client import REGISTRY

pytestmark = pytest.mark.unit

PACKAGES = ("svckit", "gateway", "identity", "timesheets", "approvals", "audit")

TEMPLATE = "a route template or unmatched (svckit.middleware.route_template)"
GATEWAY_TEMPLATE = "a routes.yaml template, preflight or unmatched (gateway.stages)"
METHOD = "the seven usual methods or other (svckit.metrics.method_label)"
STATUS = "a status code the process answers itself"
FIXED = "a fixed list in the module that counts it"
SERVICE = "a configured upstream or this service's own name"
TASK = "a PeriodicTask's name, given in code"
ISSUER = "OIDC_ISSUER / the configured issuers"
SENDER = "a configured sender of a signed identity (svckit.identity.PAIRS)"
AUDIT_SOURCE = "the verified sender: the intake refuses an event whose source is not (audit.api)"

SOURCES: dict[tuple[str, str], str] = {
    ("http_requests", "route"): TEMPLATE,
    ("http_requests", "method"): METHOD,
    ("http_requests", "status"): STATUS,
    ("http_request_duration_seconds", "route"): TEMPLATE,
    ("http_request_duration_seconds", "method"): METHOD,
    ("http_refused", "status"): "400, 408, 414, 431, 503 (svckit.server)",
    ("gateway_requests", "route"): GATEWAY_TEMPLATE,
    ("gateway_requests", "method"): METHOD,
    ("gateway_requests", "status"): STATUS,
    ("gateway_request_duration_seconds", "route"): GATEWAY_TEMPLATE,
    ("gateway_upstream_duration_seconds", "service"): SERVICE,
    ("gateway_upstream_errors", "service"): SERVICE,
    ("gateway_upstream_errors", "kind"): FIXED + " (never the upstream's own reason)",
    ("gateway_upstream_retries", "service"): SERVICE,
    ("gateway_upstream_retries", "reason"): FIXED,
    ("gateway_upstream_connections", "service"): SERVICE,
    ("gateway_upstream_connections", "state"): FIXED,
    ("gateway_upstream_pool_waits", "service"): SERVICE,
    ("gateway_response_streamed", "service"): SERVICE,
    ("gateway_response_cutoffs", "service"): SERVICE,
    ("gateway_auth_failures", "reason"): FIXED + " (gateway.stages, svckit.dpop: never a claim)",
    ("gateway_jwks_fetch", "issuer"): ISSUER,
    ("gateway_jwks_fetch", "outcome"): FIXED,
    ("gateway_jwks_key_age_seconds", "issuer"): ISSUER,
    ("gateway_jwks_cache", "layer"): FIXED,
    ("gateway_jwks_cache", "result"): FIXED,
    ("gateway_jwks_lease", "outcome"): FIXED,
    ("gateway_rate_limited", "limit"): FIXED,
    ("gateway_revocations_received", "outcome"): FIXED,
    ("identity_verification_failures", "reason"): FIXED + " (svckit.identity.REASONS)",
    ("identity_clock_offset_seconds", "sender"): SENDER,
    ("identity_replay_fallback", "outcome"): FIXED,
    ("identity_tokens_issued", "grant_type"): "the grant the provider issued (its code, not the form's)",
    ("identity_login_failures", "reason"): FIXED,
    ("identity_password_hash_refusals", "reason"): FIXED + " (identity.passwords: QUEUE_FULL … IN_FLIGHT)",
    ("identity_dpop_proof_refusals", "reason"): FIXED + " (svckit.dpop.ProofError reasons)",
    ("identity_dpop_binding_refusals", "binding"): FIXED,
    ("identity_userinfo_refusals", "reason"): FIXED,
    ("identity_token_throttled", "reason"): FIXED,
    ("identity_revocations", "reason"): FIXED,
    ("identity_revocations_published", "outcome"): FIXED,
    ("dpop_replay_checks", "store"): FIXED,
    ("db_ambiguous_commits", "outcome"): FIXED,
    ("db_connect_failures", "reason"): FIXED,
    ("db_server_moved", "old"): FIXED,
    ("db_transaction_conflicts", "reason"): FIXED,
    ("db_transaction_retries", "reason"): FIXED,
    ("background_task_runs", "task"): TASK,
    ("background_task_runs", "outcome"): FIXED,
    ("background_task_last_success_timestamp_seconds", "task"): TASK,
    ("outbox_pending_events", "service"): SERVICE,
    ("outbox_oldest_event_age_seconds", "service"): SERVICE,
    ("outbox_delivered", "service"): SERVICE,
    ("outbox_delivery_failures", "service"): SERVICE,
    ("outbox_audit_receipt_mismatch", "service"): SERVICE,
    ("audit_denials_written", "service"): SERVICE,
    ("audit_denials_dropped", "service"): SERVICE,
    ("audit_events_ingested", "source"): AUDIT_SOURCE,
    ("audit_events_duplicates", "source"): AUDIT_SOURCE,
    ("audit_chain_verifications", "result"): FIXED,
    ("audit_checkpoints", "outcome"): FIXED,
    ("audit_checkpoint_unknown_key_since_timestamp_seconds", "task"): FIXED,
    ("audit_listings_refused", "reason"): FIXED,
    ("audit_verifications_refused", "reason"): FIXED,
    ("timesheets_entries_created", "source"): FIXED,
    ("timesheets_refusals", "reason"): FIXED,
    ("timesheets_refusals", "source"): FIXED,
    ("approvals_decisions", "decision"): FIXED,
    ("approvals_reconciliations", "outcome"): FIXED,
    ("approvals_refusals", "reason"): FIXED,
}


def labelled_metrics() -> set[tuple[str, str]]:
    """(metric, label) of every labelled metric the platform's modules define (their import defines
    them; ``__main__`` modules start processes and define none)."""
    for package in PACKAGES:
        root = importlib.import_module(package)
        for module in pkgutil.walk_packages(root.__path__, package + "."):
            if not module.name.endswith("__main__"):
                importlib.import_module(module.name)
    pairs = set()
    for collector in list(REGISTRY._collector_to_names):  # the registry has no public list of collectors
        name = getattr(collector, "_name", None)
        if name and name.split("_")[0] not in ("python", "process"):
            pairs |= {(name, label) for label in getattr(collector, "_labelnames", ())}
    return pairs


def test_every_label_comes_from_a_closed_set() -> None:
    found = labelled_metrics()
    unlisted = sorted(found - SOURCES.keys())
    assert not unlisted, (
        f"labels without a stated source: {unlisted}. Say in SOURCES which closed set each takes its "
        "values from; a value a request chose (a path, a header, a client id, a claim, an error message) "
        'is never a label (docs/CONTRACTS.md "Metrics")'
    )
    gone = sorted(SOURCES.keys() - found)
    assert not gone, f"SOURCES names labels no metric has any more: {gone}"
