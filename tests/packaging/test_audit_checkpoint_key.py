"""The audit service's checkpoint signing key: generated once (or given), mounted in the audit
service's pods only — never in another service, never in a migration container."""

from __future__ import annotations

import base64

from audit.checkpoints import CheckpointKeys

from tests.packaging.support import rendered_scenario
from tests.packaging.test_policies import by_kind, containers, env_of, workloads


def test_only_the_audit_service_holds_the_checkpoint_key() -> None:
    for name, secret in (
        ("values-dev.yaml", "ts-timesheets-generated"),
        ("values-prod.yaml", "timesheets-app"),
    ):
        holders = []
        for obj, spec in workloads(rendered_scenario(name)):
            for c in containers(spec):
                env = env_of(c)
                if "AUDIT_CHECKPOINT_KEYS" in env:
                    holders.append((obj["metadata"]["name"], c["name"], c["command"]))
                    ref = env["AUDIT_CHECKPOINT_KEYS"]["valueFrom"]["secretKeyRef"]
                    assert ref == {"name": secret, "key": "audit-checkpoint-keys"}
        assert holders == [("ts-timesheets-audit", "audit", ["python", "-m", "audit"])], (name, holders)


def test_the_generated_key_is_an_ed25519_key_the_service_accepts() -> None:
    (secret,) = by_kind(rendered_scenario("values-dev.yaml"), "Secret")
    text = base64.b64decode(secret["data"]["audit-checkpoint-keys"]).decode()
    keys = CheckpointKeys.parse(text)
    assert keys.signing_kid == "ck1"
    (again,) = by_kind(rendered_scenario("dev+everything"), "Secret")
    assert again["data"]["audit-checkpoint-keys"] != secret["data"]["audit-checkpoint-keys"], (
        "random per install"
    )
