"""The audit service's domain metrics (names fixed in docs/CONTRACTS.md; alerts and dashboards use them).

- ``audit_events_ingested_total{source}``: records appended to the chain (first deliveries only).
- ``audit_events_duplicates_total{source}``: re-sent events recognised by id and not stored again
  (a relay retrying after a lost acknowledgement; a steady rate means acknowledgements get lost).
- ``audit_ingest_lag_seconds``: event time → stored, so a backlog in some outbox shows here too.
- ``audit_chain_verifications_total{result="ok|broken"}`` and ``audit_chain_ok`` (1/0, the last
  verification in this process; NaN before the first one; alert on 0). A verification holds the
  records to the signed checkpoints too: a rewritten history makes it 0. A ranged one
  (``GET /audit/verify?from_checkpoint=…``) counts and sets them only when it finds the range broken:
  intact, it says nothing of the records before its anchor.
- ``audit_event_ids_unique`` (1/0; NaN before this process walked the chain): 0 while the database
  does not keep ``records.id`` unique (constraint ``records_id_key`` dropped or invalid, or a table
  inheriting from ``records``): only the owner role can do that; every walk then searches the whole
  trail for events recorded twice (:mod:`audit.duplicates`), and appends slow down (alert on 0).
- ``audit_checkpoints_total{outcome="signed|unchanged|refused|unknown_key|rolled_back"}``: runs of the
  checkpoint signer — ``refused`` means it found the chain or the checkpoints tampered with and signed
  nothing (an error log line says what; alert on any); ``unknown_key``: the newest checkpoint is signed
  by a key this replica was not given, and it left the signing to the replicas that know it (a rollout
  of a key rotation; refused once it lasts longer than ``audit.checkpointer.UNKNOWN_KEY_GRACE_SECONDS``);
  ``rolled_back``: the trail's watermark (:mod:`audit.watermark`) says the database was put back to an
  earlier point, and the signer signs nothing (it would sign again numbers signed for other heads)
  until the operator runs ``python -m audit accept-restore``.
- ``audit_checkpoint_unknown_key_since_timestamp_seconds{task="audit-checkpoint|audit-verifier"}``:
  when this process's checkpoint signer, or its background verifier, first met a newest checkpoint
  signed by a key it was not given, as long as that lasts (Unix time; 0 when there is none). Within
  ``audit.keygrace.UNKNOWN_KEY_GRACE_SECONDS`` (15 minutes) of it the signer stands aside and the
  verifier leaves those checkpoints unchecked; after it they are refused / the chain reported broken
  (critical). ``time() - it`` past a rollout's length (warning at 5 minutes) is a replica left on an
  old ``AUDIT_CHECKPOINT_KEYS`` — or checkpoints written by someone without any of the keys.
- ``audit_trail_rolled_back`` (1/0; NaN before this process could check): 1 while the database's
  checkpoints are behind the watermark kept in Redis, or fork from it — records signed before were
  lost (a restore of the schema); 0 once they agree or the operator accepted the loss (alert on 1).
- ``audit_listings_refused_total{reason="too_long|busy"}``: ``GET /audit/events`` and
  ``GET /audit/checkpoints`` pages not served: a statement ran into AUDIT_READ_TIMEOUT_SECONDS (an
  events listing: 422, the caller narrows the query; a checkpoint page, always small: 503), or every
  listing turn (AUDIT_READ_CONCURRENCY) stayed taken that long (503).
- ``audit_verifications_refused_total{reason="too_long|busy"}``: ``GET /audit/verify`` walks not
  served: stopped by AUDIT_VERIFY_TIMEOUT_SECONDS (422 ``chain_too_long``), or refused at once because
  AUDIT_VERIFY_CONCURRENCY walks were running (or no listing turn came: 503). Callers that join the
  full walk already running are not refused.
- ``audit_checkpoint_latest_timestamp_seconds``: when the newest checkpoint this process signed or
  found was signed (alert when it lags while records keep arriving).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)

ingested = Counter(
    "audit_events_ingested_total",
    "Audit events appended to the hash chain, by the service that produced them.",
    ["source"],
)
#: ``ingested.labels(source)`` by source, looked up once (``labels`` validates and locks per call)
_ingested_children: dict[str, Counter] = {}


def ingested_by(source: str) -> Counter:
    """``ingested.labels(source)``, the child kept after its first use."""
    child = _ingested_children.get(source)
    if child is None:
        child = _ingested_children[source] = ingested.labels(source)
    return child


duplicates = Counter(
    "audit_events_duplicates_total",
    "Audit events received again (same id) and acknowledged without storing a second record.",
    ["source"],
)
ingest_lag = Histogram(
    "audit_ingest_lag_seconds",
    "Time from an event happening (occurred_at) to its record being stored.",
    buckets=LAG_BUCKETS,
)
verifications = Counter(
    "audit_chain_verifications_total",
    "Hash chain verifications run, by result.",
    ["result"],
)
chain_ok = Gauge(
    "audit_chain_ok",
    "1 when the last hash chain verification found the chain intact, 0 when it found it broken.",
    multiprocess_mode="livemax",
)
# Unknown until this process has verified once: NaN, not 0, so a restarting pod never looks like a
# broken chain to `min(audit_chain_ok) == 0` (PromQL's min skips NaN unless every value is NaN).
chain_ok.set(float("nan"))
event_ids_unique = Gauge(
    "audit_event_ids_unique",
    "1 when the last walk found records.id kept unique by the database (records_id_key), 0 when it did not "
    "and had to search the trail for events recorded twice itself.",
    multiprocess_mode="livemin",
)
event_ids_unique.set(float("nan"))  # unknown until this process has walked once, as audit_chain_ok
checkpoints = Counter(
    "audit_checkpoints_total",
    "Runs of the checkpoint signer by outcome: signed, unchanged, refused (tampering found, nothing signed), "
    "unknown_key (the newest checkpoint's key is not this replica's yet: a rollout; nothing signed), "
    "rolled_back (the database is behind the trail's watermark: nothing signed until accept-restore).",
    ["outcome"],
)
for _outcome in ("signed", "unchanged", "refused", "unknown_key", "rolled_back"):
    checkpoints.labels(_outcome)
trail_rolled_back = Gauge(
    "audit_trail_rolled_back",
    "1 while the database's checkpoints are behind (or fork from) the newest checkpoint signed, kept in "
    "Redis: the trail was put back to an earlier point and records were lost; 0 when they agree.",
    multiprocess_mode="livemax",
)
trail_rolled_back.set(float("nan"))  # unknown until checked, as audit_chain_ok
checkpoint_latest = Gauge(
    "audit_checkpoint_latest_timestamp_seconds",
    "Unix time at which the newest checkpoint this process signed or found was signed.",
    multiprocess_mode="livemax",
)
unknown_key_since = Gauge(
    "audit_checkpoint_unknown_key_since_timestamp_seconds",
    "Unix time at which this process's checkpoint signer (task audit-checkpoint) or background verifier "
    "(audit-verifier) first met checkpoints signed by a key it was not given, still unresolved; 0: none.",
    ["task"],
    multiprocess_mode="livemax",
)
for _task in ("audit-checkpoint", "audit-verifier"):
    unknown_key_since.labels(_task).set(0)
listings_refused = Counter(
    "audit_listings_refused_total",
    "GET /audit/events and /audit/checkpoints pages refused: too_long (read timeout), busy (no turn, 503).",
    ["reason"],
)
for _reason in ("too_long", "busy"):
    listings_refused.labels(_reason)
verifications_refused = Counter(
    "audit_verifications_refused_total",
    "GET /audit/verify walks refused: too_long (verify timeout, 422), busy (no verification turn, 503).",
    ["reason"],
)
for _reason in ("too_long", "busy"):
    verifications_refused.labels(_reason)
