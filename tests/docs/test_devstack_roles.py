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
    assert not [
        name for name in service_database(ENV, "identity", "identity") if name.startswith("IDENTITY_KEYS")
    ]


def test_every_pair_key_is_generated_for_a_local_run() -> None:
    from svckit.identity import PAIRS, pair_variable

    assert {pair_variable(sender, receiver) for sender, receiver in PAIRS} <= set(GENERATED)
    assert "IDENTITY_KEYS" not in GENERATED
