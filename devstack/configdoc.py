"""The README's configuration table, generated from the services' settings classes.

``python -m devstack.configdoc`` prints it; a test keeps the README in sync, so the table can never
drift from what the services actually read.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from svckit.identity import GATEWAY, OPTIONAL_SENDERS, PAIRS, pair_variable

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("gateway", "identity", "timesheets", "approvals", "audit")
PAIR_PREFIX = "identity_keys_"
SECRET_HINTS = ("secret", "password", "keys", "encryption_key", "database_url")
#: names with a hint in them that are no secret (their default is shown)
NOT_SECRET = frozenset(
    {
        "database_url",
        "demo_password",
        "audit_denial_max_keys",
        "client_secret_overlap_seconds",
        "password_hash_max_waiting",
        "password_hash_max_wait_seconds",
    }
)

MEANINGS = {
    "bind_host": "address to listen on; `::`: every address of both families (the chart's network.bindHost)",
    "port": "port to listen on (the public listener: never serves `/metrics`)",
    "metrics_port": "port of the metrics listener (`GET /metrics`; the chart's `metrics` port)",
    "log_level": "DEBUG, INFO, WARNING, ERROR or CRITICAL",
    "shutdown_timeout_seconds": "on SIGTERM, how long in-flight requests may take to finish",
    "request_head_timeout_seconds": (
        "a request head not complete this long after its first byte: 408, connection ended (slowloris)"
    ),
    "request_body_timeout_seconds": (
        "a request body silent this long while the server waits for it: 408, connection ended (only "
        "ended, once the response has begun)"
    ),
    "response_send_timeout_seconds": (
        "a client that takes nothing of its response this long while the server waits to write: "
        "connection reset (the application hears `http.disconnect`)"
    ),
    "request_body_buffer_bytes": (
        "identity, timesheets, approvals, audit: request bodies over 64 KiB each worker holds at once"
        " (the declared length, the body limit without one); one that does not fit is answered 503"
        " `request_body_budget` with `Retry-After: 2`, nothing stored; `0`: no bound (the gateway's is"
        " `GATEWAY_REQUEST_BODY_BUFFER_BYTES`)"
    ),
    "max_connections_per_worker": (
        "open connections per worker process; one more is answered 503 (`Retry-After`) and closed,"
        " unless it asks for `/healthz` or `/readyz`. At start the soft open-file limit is raised to"
        " this (twice this for the gateway, whose responses hold the SPA file they stream open) plus"
        " the worker's pools; a hard limit too low stops the start (exit 2) when this is set,"
        " and lowers the default to fit (a warning line, `http_max_connections`) when it is not"
    ),
    "worker_stuck_seconds": (
        "with several worker processes (the gateway's `GATEWAY_WORKERS`), one whose event loop has not"
        " run this long is killed (SIGKILL) and replaced: the requests it held fail at once instead of"
        " hanging; its threads' stacks are logged first (`worker_stuck_kills_total`; runbook"
        " TimesheetsWorkerStuck)"
    ),
    "worker_start_seconds": (
        "with several worker processes, one whose event loop has not run once this long after it was"
        " started (its start hung: an import, the application factory) is killed and replaced likewise"
    ),
    "dev_reload": "development only: restart when a Python file under `PYTHONPATH` changes (`skaffold dev`)",
    "identity_max_skew_seconds": "how old a signed identity may be",
    "database_url": (
        "PostgreSQL connection URL (a password percent-encodes `/ ? # @`, or the service refuses to start)"
    ),
    "db_pool_min": "smallest database pool",
    "db_pool_max": "largest database pool",
    "db_pool_idle_seconds": (
        "how long a pooled connection beyond `DB_POOL_MIN` may stay idle before it is closed (the next "
        "burst opens them again): a burst's sessions go back to the server's `max_connections`. `0`: never"
    ),
    "db_connect_timeout_seconds": "connect and acquire timeout",
    "db_statement_timeout_seconds": "longest wait for one statement's answer (the driver's bound: a "
    "hung server enforces nothing); past it 503 with `Retry-After` and the session is closed. The "
    "audit service's `AUDIT_READ_TIMEOUT_SECONDS` may not exceed it",
    "db_leader_check_seconds": "how often one fresh connection asks which Postgres server `DATABASE_URL` "
    "leads to; pooled connections (and the outbox's LISTEN connection) on another server are closed: "
    'bounds how long a service writes to an old primary a failover left up (runbook, "Split brain"). '
    "`0`: never",
    "db_lock_timeout_seconds": "longest wait for a lock another session holds (Postgres's "
    "`lock_timeout`: an operator's `LOCK TABLE`, a stuck transaction, a migration); past it 503 "
    "`database_busy` with `Retry-After` (`db_lock_timeouts_total`). Below the statement bound",
    "db_idle_in_transaction_timeout_seconds": "how long a session of the service may stay idle inside a "
    "transaction before Postgres ends it, its locks released (`idle_in_transaction_session_timeout`)",
    "db_migration_lock_timeout_seconds": "`migrate` only: how long each migration waits for a lock before "
    "it is rolled back and tried again after a backoff. Below `DB_LOCK_TIMEOUT_SECONDS`, above the "
    "server's `deadlock_timeout` (1 s: a waiter past it makes Postgres cancel an autovacuum in its way)",
    "db_migration_lock_attempts": "`migrate` only: how many times each migration is tried for its locks "
    "before `migrate` exits 1 naming it (nothing of it applied)",
    "db_sslmode": "overrides `DATABASE_URL`'s `sslmode` (e.g. `verify-full`)",
    "db_sslrootcert": "the database server's CA: a PEM file or `system` (wins over the URL's `sslrootcert`)",
    "db_runtime_role": "`migrate` only: the login role the service runs as; `migrate` (as the owner in "
    "`DATABASE_URL`) grants it exactly its schema's `privileges.txt` (docs/database-roles.md)",
    "db_runtime_password": "`migrate` only: the password `migrate` sets on the login the service uses",
    "db_runtime_login": (
        "`migrate` only: the login the service uses, the role itself (empty) or `<DB_RUNTIME_ROLE>_b`, a "
        "member inheriting its privileges; a password rotation switches between the two "
        '(docs/database-roles.md, "Rotating a runtime password")'
    ),
    "db_runtime_other_password": (
        "`migrate` only: the other login's password, kept while the pods switch; empty: `migrate` disables "
        "the other login (`NOLOGIN`, no password)"
    ),
    "db_manage_roles": "`migrate` only: create the role / set its password (`false`: the platform team "
    "creates the role; `migrate` only grants)",
    "redis_url": (
        "Redis URL (losable state: caches, counters, the replay memory of signed requests; a password "
        "percent-encodes `/ ? # @`, or the service refuses to start)"
    ),
    "redis_key_prefix": "prefix of every Redis key",
    "oidc_issuer": "issuers the gateway trusts, comma-separated (exact `iss` values)",
    "identity_issuer": "the bundled provider's own issuer (its `iss`); list it in `OIDC_ISSUER`",
    "oidc_audience": "the API identifier access tokens must name in `aud`",
    "timesheets_url": "where the timesheets service is",
    "approvals_url": "where the approvals service is",
    "audit_url": "where the audit service is",
    "cors_origins": "browser origins allowed to call the API",
    "gateway_workers": "uvicorn worker processes",
    "gateway_routes_file": "the route table (method + path → upstream + scopes)",
    "gateway_issuers_file": "optional per-issuer settings (JWKS URL, scope claims, leeway)",
    "jwt_algorithms": "accepted signature algorithms (never `none` or HS*)",
    "jwt_leeway_seconds": "clock leeway for `exp`, `nbf`, `iat`",
    "dpop_policy": "`allowed` (bearer and DPoP) or `required` (DPoP-bound only): every issuer's default",
    "dpop_algorithms": "accepted DPoP proof algorithms (asymmetric only)",
    "dpop_max_age_seconds": "how old a DPoP proof (`iat`) may be",
    "dpop_leeway_seconds": "clock leeway for a DPoP proof's `iat` (both ways) and for server nonces",
    "dpop_nonces": "require server nonces in DPoP proofs (`DPoP-Nonce`, `use_dpop_nonce`)",
    "dpop_nonce_seconds": (
        "how long a DPoP nonce is handed out (it is accepted for twice that, and up to "
        "`DPOP_LEEWAY_SECONDS` either side: replicas' clocks differ)"
    ),
    "dpop_nonce_secret": (
        "key of the gateway's DPoP nonces (equal on every replica; for `DPOP_NONCES`): one secret, or "
        "`kid:secret[,kid:secret…]` while it rotates, the first making nonces, every one taking them"
    ),
    "gateway_cache_secret": (
        "key of the MAC over the key sets the gateway caches in Redis (a second line behind its ACL): "
        "equal on every replica; unset, each process draws its own and replicas do not share copies"
    ),
    "max_token_bytes": "longest accepted access token",
    "spa_dist_dir": "the built SPA the gateway serves at `/`",
    "spa_auth_issuer": "the SPA's sign-in provider (default: the first `OIDC_ISSUER`)",
    "spa_client_id": "the SPA's OAuth client id",
    "spa_audience": "the audience the SPA asks for (default: `OIDC_AUDIENCE`)",
    "spa_auth_flow": "`code` (Authorization Code + PKCE) or `implicit`",
    "spa_scopes": "scopes the SPA requests",
    "identity_key_encryption_key": (
        "encrypts the provider's private signing keys at rest: one secret, or `kid:secret[,kid:secret…]` "
        "while it rotates, the first encrypting new keys, every one decrypting"
    ),
    "identity_session_secret": (
        "keys the provider's CSRF tokens and DPoP nonces (not its session cookies): one secret, or "
        "`kid:secret[,kid:secret…]` while it rotates, the first signing, every one verifying"
    ),
    "demo_password": "password of the seeded demo users",
    "batch_client_secret": "secret of the seeded `timesheets-batch` client",
    "access_token_ttl_seconds": "access token lifetime",
    "access_token_typ": "`at+jwt` (RFC 9068) or `JWT` (Auth0's default)",
    "signing_alg": "RS256 or ES256",
    "verified_token_cache_size": "how many verified tokens are remembered (by hash, never past `exp`)",
    "verified_token_cache_seconds": "how long a verified token is remembered at most",
    "revocation_feed_enabled": "refuse tokens revoked at the provider (its revocation stream)",
    "jwks_default_ttl_seconds": "JWKS cache lifetime when the provider sends no Cache-Control",
    "jwks_min_ttl_seconds": "lower bound on the provider's Cache-Control max-age",
    "jwks_max_ttl_seconds": "upper bound on the provider's Cache-Control max-age",
    "jwks_max_stale_seconds": "how long cached keys keep working while the provider is unreachable",
    "jwks_refetch_cooldown_seconds": "at most one unknown-`kid` refetch per issuer per this period",
    "jwks_fetch_timeout_seconds": "timeout of a discovery or JWKS fetch",
    "jwks_retry_min_seconds": "back-off after a failed discovery/JWKS fetch (doubling, jittered)",
    "jwks_retry_max_seconds": "longest back-off between fetches while an issuer keeps failing",
    "audit_read_timeout_seconds": (
        "longest a listing statement may run (`GET /audit/events`, `/audit/checkpoints`); past it 422 "
        "`query_too_broad` (a checkpoint page: 503)"
    ),
    "audit_read_concurrency": (
        "listings and verifications holding a database connection at once (kept below `DB_POOL_MAX`); "
        "the next waits, then 503"
    ),
    "audit_verify_timeout_seconds": (
        "longest a walk of `GET /audit/verify` may run in all; past it 422 `chain_too_long` (keep it below "
        "the gateway's `UPSTREAM_READ_TIMEOUT_SECONDS`)"
    ),
    "audit_verify_concurrency": (
        "walks of `GET /audit/verify` at once (each also takes a listing turn); the next is refused at "
        "once, 503 with `Retry-After`"
    ),
    "max_body_bytes": (
        "largest accepted request body (413 above); at the gateway the ceiling of each route's own"
        " limit (`max_body_bytes` in its route table, else 1 MiB)"
    ),
    "upstream_connect_timeout_seconds": "connect timeout to a service (502/503 after)",
    "upstream_read_timeout_seconds": "read timeout from a service (504 after)",
    "upstream_pool_size": "keep-alive connections to the services",
    "gateway_access_log": "one JSON access line per request",
    "rate_limit_enabled": "per-subject and per-client rate limits",
    "rate_limit_window_seconds": (
        "rate-limit window: the limits hold within any window's length"
        " (a sliding estimate from this window's and the previous one's counts)"
    ),
    "rate_limit_per_subject": "requests per window's length per (issuer, subject)",
    "rate_limit_per_client": "requests per window's length per client id",
    "rate_limit_sync_seconds": "how often local counters are merged in Redis",
    "rate_limit_anonymous_per_address": "requests without a valid token per window's length per client "
    "address; beyond it 429 before any verification",
    "redis_timeout_seconds": "a Redis call slower than this counts as Redis down",
    "redis_retry_seconds": "how long to wait before trying Redis again after a failure",
    "redis_tls_ca_file": (
        "for a `rediss://` URL: the Redis server's CA, a PEM file or `system` (the image's trust store; "
        "also when empty); only that CA is trusted"
    ),
    "redis_tls_verify": (
        "for a `rediss://` URL: `full` (the certificate must name the URL's host) or `ca` (the chain only)"
    ),
    "audit_denials": "send 401/403/429 denials to the audit trail",
    "audit_queue_size": "denial records waiting for the audit service (drops are counted beyond it)",
    "audit_batch_size": "denial records per delivery",
    "audit_flush_seconds": "longest wait before a partial batch is delivered",
    "audit_request_timeout_seconds": "how long a delivery waits for the audit service's answer before it "
    "gives up; the batch stays queued and is sent again after the back-off (the audit service records a "
    "resent event once)",
    "audit_denial_window_seconds": "denials are recorded as one count per (status, reason, route, method, "
    "caller, address) and window: the gateway's anonymous and rate-limit ones, the services' refused "
    "identities and scopes, the provider's refused sign-ins and client authentications",
    "audit_denial_max_keys": "aggregated denial records per window and worker (the rest share address `*`)",
    "identity_cookie_secure": "force the Secure cookie flag (default: on when the issuer is https)",
    "identity_allow_insecure_http": "allow an http issuer other than localhost (never in production)",
    "id_token_ttl_seconds": "ID token lifetime",
    "authorization_code_ttl_seconds": "authorization code lifetime (single use)",
    "session_ttl_seconds": "sign-in session lifetime at the provider",
    "refresh_token_idle_seconds": "a refresh token unused this long expires",
    "refresh_token_lifetime_seconds": "absolute refresh token lifetime (rotated on every use)",
    "key_rotation_grace_seconds": "a new signing key is published this long before it signs",
    "client_secret_overlap_seconds": (
        "a rotated client secret stays valid this long beside the new one (`rotate-client-secret`, a "
        "changed `BATCH_CLIENT_SECRET` at `seed`)"
    ),
    "key_refresh_seconds": "how often replicas reload the signing keys",
    "cors_origins_refresh_seconds": (
        "how often the registered clients' web origins (the CORS allow-list) are re-read"
    ),
    "revocation_check_seconds": "how often the revocation stream is checked (re-published if Redis lost it)",
    "login_max_failures_per_user": (
        "failed sign-ins per user name from one client address per window before throttling that pair"
    ),
    "login_max_failures_per_user_all_addresses": (
        "failed sign-ins per user name from all addresses per window before throttling the name everywhere"
    ),
    "login_max_failures_per_address": "failed sign-ins per client address per window before throttling",
    "login_throttle_window_seconds": "sign-in throttling window",
    "password_hash_max_waiting": "sign-in password checks admitted at once per process (waiting or on the "
    "4 Argon2 threads); one more: the sign-in page with 503 and `Retry-After`",
    "password_hash_max_wait_seconds": "how long a sign-in's password check may wait for its turn before "
    "it is answered 503 with `Retry-After` (below what a client waits); dropped at once if the client goes",
    "client_auth_max_failures_per_address": "failed client authentications per address per window",
    "token_max_failures_per_address": "failed `/oauth/token` and `/oauth/revoke` requests per address (IPv6: "
    "its /64) per `TOKEN_FAILURE_WINDOW_SECONDS`, counted before a DPoP proof is remembered; beyond: 429",
    "token_failure_window_seconds": "the window of `TOKEN_MAX_FAILURES_PER_ADDRESS`",
    "authorize_max_codes_per_user": "codes (and implicit answers) `/authorize` issues per signed-in user "
    "per `AUTHORIZE_CODE_WINDOW_SECONDS`; beyond: `temporarily_unavailable`",
    "authorize_code_window_seconds": "the window of `AUTHORIZE_MAX_CODES_PER_USER` (its own, not the "
    "sign-in throttle's)",
    "identity_trusted_proxies": "proxies whose X-Forwarded-For (or `Forwarded`) is believed (per-address "
    "throttling)",
    "identity_proxy_header": "the header those proxies write the client in: `x-forwarded-for` or RFC 7239 "
    "`forwarded`; the other is never read",
    "idempotency_ttl_hours": "how long an `Idempotency-Key` is remembered",
    "outbox_poll_interval_seconds": "outbox relay poll interval (NOTIFY wakes it sooner)",
    "outbox_max_backoff_seconds": "longest retry delay of the outbox relay while the audit service is down",
    "outbox_receipt_check_interval_seconds": (
        "how often the outbox relay asks the audit service whether its trail still holds the newest "
        "event delivered (also at start and after a failed delivery; svckit.receipts)"
    ),
    "outbox_request_timeout_seconds": (
        "how long the outbox relay waits for the audit service's answer to a batch before it gives up and "
        "sends it again after the back-off (a batch given up on may be stored all the same: the audit "
        "service records a resent event once); below DB_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS"
    ),
    "apply_timeout_seconds": "timeout of applying a decision at the timesheets service",
    "apply_attempts": "attempts to apply a decision before the reconciler takes over",
    "reconcile_interval_seconds": "how often interrupted decisions are reconciled",
    "reconcile_after_seconds": "a pending decision older than this is reconciled",
    "audit_verify_interval_seconds": "background chain verification (incremental) interval; 0 disables",
    "audit_full_verify_interval_seconds": "full chain verification interval; 0 disables",
    "audit_checkpoint_keys": "`kid:seed[,kid:seed…]` Ed25519 keys (32-byte seeds, base64url) signing "
    "checkpoints of the chain; the first signs, the rest verify (rotation); empty: no checkpoints",
    "audit_checkpoint_interval_seconds": "how often the grown chain's head is signed as a checkpoint; "
    "0: this process signs none",
}


def _default(field: FieldInfo, name: str) -> str:
    if field.is_required():
        return "required"
    if any(hint in name for hint in SECRET_HINTS) and name not in NOT_SECRET:
        return "(secret, none)"
    value: Any = field.default
    if value is PydanticUndefined and field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    if name == "gateway_workers":
        return "CPU count"
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)
    if value is None or value == "":
        return "(empty)"
    if isinstance(value, Path) and value.is_relative_to(ROOT):
        value = value.relative_to(ROOT)  # the checkout's location is not a default
    return f"`{value}`"


def rows() -> list[tuple[str, str, str, str]]:
    seen: dict[str, tuple[dict[str, str], list[str], str]] = {}
    for service in SERVICES:
        module = importlib.import_module(f"{service}.settings")
        cls = next(
            value
            for key, value in vars(module).items()
            if key.endswith("Settings") and getattr(value, "__module__", "") == module.__name__
        )
        for name, field in cls.model_fields.items():
            if name == "service_name" or name.startswith(PAIR_PREFIX):
                continue  # pair keys: one row per pair below, read by its two ends only
            default = _default(field, name)
            if name in seen:
                defaults, users, meaning = seen[name]
                users.append(service)
                defaults[service] = default
                continue
            seen[name] = ({service: default}, [service], MEANINGS.get(name, field.description or ""))
    result = []
    for name, (defaults, users, meaning) in seen.items():
        values = set(defaults.values())
        if len(values) == 1:
            default = values.pop()
        else:
            default = "; ".join(f"{service} {value}" for service, value in defaults.items())
        result.append((name.upper(), default, ", ".join(users), meaning))
        if name == "identity_max_skew_seconds":
            result.extend(pair_rows())
    return result


def pair_rows() -> list[tuple[str, str, str, str]]:
    """One row per sender → receiver pair (svckit.identity.PAIRS): only its two ends read it."""
    return [
        (
            pair_variable(sender, receiver),
            (
                f"(secret, none; required to serve by {sender}, optional at {receiver})"
                if sender in OPTIONAL_SENDERS
                else "(secret, none; required to serve)"
            ),
            f"{sender}, {receiver}",
            f"{sender} → {receiver} identity key, `kid:secret[,kid:secret…]`: {sender} signs with the first, "
            f"{receiver} accepts all; a key of {sender} may assert "
            + ("a user, a client or `service:gateway`" if sender == GATEWAY else f"`service:{sender}` only"),
        )
        for sender, receiver in PAIRS
    ]


def table() -> str:
    lines = ["| variable | default | read by | meaning |", "| --- | --- | --- | --- |"]
    for name, default, users, meaning in rows():
        if users == ", ".join(SERVICES):
            users = "all"
        lines.append(f"| `{name}` | {default} | {users} | {meaning} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
