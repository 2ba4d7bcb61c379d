"""`make dev` hands each service its own database role and no other database credential."""

from __future__ import annotations

import pytest

from devstack.roles import migrate_env, service_database
from devstack.secrets_file import GENERATED

pytestmark = pytest.mark.unit

ENV = {
    "DATABASE_URL": "postgresql://owner:owner-pw@db.local:5433/app?sslmode=require",
    "DB_ROLE_PREFIX": "dev1_",
    "AUDIT_DB_PASSWORD": "audit-pw",
    "TIMESHEETS_DB_PASSWORD": "ts-pw",
    "IDENTITY_KEYS": "k:x",  # the retired shared key: nobody sees it
    "IDENTITY_KEYS_GATEWAY_TO_AUDIT": "ga:x",
    "IDENTITY_KEYS_APPROVALS_TO_TIMESHEETS": "at:x",
    "IDENTITY_KEYS_IDENTITY_TO_AUDIT": "ia:x",
    "AUDIT_CHECKPOINT_KEYS": "ck:seed",
}


def test_a_service_sees_its_own_role_only() -> None:
    env = service_database(ENV, "audit", "audit")
    assert env["DATABASE_URL"] == "postgresql://dev1_audit:audit-pw@db.local:5433/app?sslmode=require"
    assert "owner-pw" not in "".join(env.values())
    assert "ts-pw" not in "".join(env.values())
    assert env["IDENTITY_KEYS_GATEWAY_TO_AUDIT"] == "ga:x"
    assert "IDENTITY_KEYS" not in env
    assert "IDENTITY_KEYS_APPROVALS_TO_TIMESHEETS" not in env
    assert env["AUDIT_CHECKPOINT_KEYS"] == "ck:seed"
    assert "AUDIT_CHECKPOINT_KEYS" not in service_database(ENV, "timesheets", "timesheets")


def test_the_gateway_gets_no_database_credential_at_all() -> None:
    env = service_database(ENV, "gateway", None)
    assert "DATABASE_URL" not in env
    assert not [name for name in env if name.endswith("_DB_PASSWORD")]


def test_migrate_prepares_the_role_with_its_generated_password() -> None:
    assert migrate_env(ENV, "timesheets") == {
        "DB_RUNTIME_ROLE": "dev1_timesheets",
        "DB_RUNTIME_PASSWORD": "ts-pw",
    }
    assert migrate_env({}, "audit")["DB_RUNTIME_ROLE"] == "tsp_audit"
    for service in ("IDENTITY", "TIMESHEETS", "APPROVALS", "AUDIT"):
        assert f"{service}_DB_PASSWORD" in GENERATED


def test_make_dev_generates_a_usable_checkpoint_key() -> None:
    from audit.checkpoints import CheckpointKeys

    keys = CheckpointKeys.parse(GENERATED["AUDIT_CHECKPOINT_KEYS"]())
    assert keys.signing_kid.startswith("dev-")


def test_each_service_sees_the_identity_keys_of_its_own_pairs_only() -> None:
    assert "IDENTITY_KEYS_GATEWAY_TO_AUDIT" in service_database(ENV, "gateway", None)
    assert "IDENTITY_KEYS_APPROVALS_TO_TIMESHEETS" not in service_database(ENV, "gateway", None)
    timesheets = service_database(ENV, "timesheets", "timesheets")
    assert timesheets["IDENTITY_KEYS_APPROVALS_TO_TIMESHEETS"] == "at:x"
    assert "IDENTITY_KEYS_GATEWAY_TO_AUDIT" not in timesheets
    # the provider signs its denials' relay to audit with the key of that pair, and holds no other
    assert [
        name for name in service_database(ENV, "identity", "identity") if name.startswith("IDENTITY_KEYS")
    ] == ["IDENTITY_KEYS_IDENTITY_TO_AUDIT"]


def test_the_providers_audit_key_reaches_the_provider_and_audit_only() -> None:
    holders = {
        service
        for service, schema in (*SCHEMA_OF.items(), ("gateway", None))
        if "IDENTITY_KEYS_IDENTITY_TO_AUDIT" in service_database(ENV, service, schema)
    }
    assert holders == {"identity", "audit"}
    assert "IDENTITY_KEYS_IDENTITY_TO_AUDIT" in GENERATED
    assert "IDENTITY_KEYS_IDENTITY_TO_AUDIT" not in migrate_env(ENV, "identity")


def test_every_pair_key_is_generated_for_a_local_run() -> None:
    from svckit.identity import PAIRS, pair_variable

    assert {pair_variable(sender, receiver) for sender, receiver in PAIRS} <= set(GENERATED)
    assert "IDENTITY_KEYS" not in GENERATED


SETTINGS = {
    "identity": "identity.settings:IdentitySettings",
    "timesheets": "timesheets.settings:TimesheetsSettings",
    "approvals": "approvals.settings:ApprovalsSettings",
    "audit": "audit.settings:AuditSettings",
    "gateway": "gateway.settings:GatewaySettings",
}
SCHEMA_OF = {"identity": "identity", "timesheets": "timesheets", "approvals": "approvals", "audit": "audit"}


def readers_of(variable: str) -> set[str]:
    """The services whose settings read ``variable`` (the only ones that need it)."""
    import importlib

    readers = set()
    for service, path in SETTINGS.items():
        module, name = path.split(":")
        fields = getattr(importlib.import_module(module), name).model_fields
        if variable.lower() in fields:
            readers.add(service)
    return readers


def test_a_secret_of_one_service_reaches_no_other() -> None:
    """`make dev` generates the identity provider's secrets (IDENTITY_SESSION_SECRET,
    IDENTITY_KEY_ENCRYPTION_KEY, BATCH_CLIENT_SECRET) and the gateway's DPOP_NONCE_SECRET can be set,
    but OWN_SECRETS names only AUDIT_CHECKPOINT_KEYS and GATEWAY_CACHE_SECRET: every other service
    process gets the rest. A compromised audit or approvals process then holds the batch client's
    secret (a batch:upload token for entries in anyone's name) and the key that decrypts the
    provider's signing keys."""
    env = {**ENV, **{name: f"secret-of-{name}" for name in GENERATED}, "DPOP_NONCE_SECRET": "n" * 40}
    single_owner = {
        name: readers.pop()
        for name in [*GENERATED, "DPOP_NONCE_SECRET"]
        if not name.endswith("_DB_PASSWORD")
        and not name.startswith("IDENTITY_KEYS")
        and len(readers := readers_of(name)) == 1
    }
    assert {"IDENTITY_SESSION_SECRET", "IDENTITY_KEY_ENCRYPTION_KEY", "BATCH_CLIENT_SECRET"} <= set(
        single_owner
    )
    leaks = sorted(
        f"{name} -> {service}"
        for service in SETTINGS
        for name, owner in single_owner.items()
        if service != owner and name in service_database(env, service, SCHEMA_OF.get(service))
    )
    assert leaks == [], leaks


def test_a_service_sees_no_redis_password() -> None:
    """`make dev` generates a Redis password per component (its ACL user on the embedded server,
    svckit.redisacl) and one for its admin user; a service gets its own user's REDIS_URL from
    devstack, and no password."""
    from svckit import redisacl

    users = (*redisacl.COMPONENTS, "admin")
    env = {**ENV, **{f"{c.upper()}_REDIS_PASSWORD": f"{c}-redis-pw" for c in users}}
    assert {f"{c.upper()}_REDIS_PASSWORD" for c in users} <= set(GENERATED)
    for service, schema in SCHEMA_OF.items():
        seen = "".join(service_database(env, service, schema).values())
        assert "redis-pw" not in seen, service
    assert "redis-pw" not in "".join(service_database(env, "gateway", None).values())
