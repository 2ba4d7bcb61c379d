"""The identity keys of the sender → receiver pairs: one Secret key per pair, given (as an environment
variable) to the two containers of that pair only — never to another service, never to a migration,
seed or test container — so that no key is shared beyond the pair that uses it."""

from __future__ import annotations

from svckit.identity import PAIRS, pair_variable

from tests.packaging.support import component, rendered_scenario
from tests.packaging.test_policies import app_deployments, containers, env_of, workloads


def pairs_of(scenario: str) -> list[tuple[str, str]]:
    """The pairs both of whose ends the scenario deploys (the bundled provider's only with
    identity.enabled: production's values use Auth0)."""
    present = {component(dep) for dep in app_deployments(rendered_scenario(scenario))}
    return [(sender, receiver) for sender, receiver in PAIRS if {sender, receiver} <= present]


def holders(scenario: str) -> dict[str, set[tuple[str, str]]]:
    """Variable → the (workload, command) of every container that holds it."""
    found: dict[str, set[tuple[str, str]]] = {}
    for obj, spec in workloads(rendered_scenario(scenario)):
        for c in containers(spec):
            for name, entry in env_of(c).items():
                if name.startswith("IDENTITY_KEYS"):
                    assert "value" not in entry, f"{name} inline in {obj['metadata']['name']}"
                    found.setdefault(name, set()).add((obj["metadata"]["name"], " ".join(c["command"])))
    return found


def test_each_pair_key_reaches_its_two_ends_only() -> None:
    for scenario, prefix, secret in (
        ("values-dev.yaml", "ts-timesheets-", "ts-timesheets-generated"),
        ("values-prod.yaml", "ts-timesheets-", "timesheets-app"),
    ):
        found = holders(scenario)
        assert set(found) == {pair_variable(sender, receiver) for sender, receiver in pairs_of(scenario)}
        for sender, receiver in pairs_of(scenario):
            ends = {(prefix + end, f"python -m {end}") for end in (sender, receiver)}
            assert found[pair_variable(sender, receiver)] == ends, (scenario, sender, receiver)
        for _, spec in workloads(rendered_scenario(scenario)):
            for c in containers(spec):
                for name, entry in env_of(c).items():
                    if name.startswith("IDENTITY_KEYS"):
                        ref = entry["valueFrom"]["secretKeyRef"]
                        assert ref == {"name": secret, "key": name.lower().replace("_", "-")}


def test_no_shared_identity_key_is_given_to_anyone() -> None:
    assert "IDENTITY_KEYS" not in holders("values-dev.yaml")
    assert "IDENTITY_KEYS" not in holders("dev+everything")


def test_every_receiver_shares_its_replay_memory_in_redis_and_no_migration_needs_it() -> None:
    """A signed request is accepted once by all replicas: the receivers get the release's Redis."""
    for scenario in ("values-dev.yaml", "values-prod.yaml"):
        for obj, spec in workloads(rendered_scenario(scenario)):
            for c in containers(spec):
                command = c.get("command", [])
                if command[:2] != ["python", "-m"] or command[2] not in ("timesheets", "approvals", "audit"):
                    continue
                env = env_of(c)
                serving = command[3:] == []
                assert ("REDIS_URL" in env) == serving, (scenario, obj["metadata"]["name"], command)
                if serving:
                    assert "secretKeyRef" in env["REDIS_URL"]["valueFrom"]


def test_the_providers_audit_key_reaches_the_provider_and_audit_only() -> None:
    """The bundled provider relays its denials to the audit service with a key of that pair alone; a
    release without the provider (Auth0) has no such key anywhere, and its audit service serves
    without it."""
    variable = pair_variable("identity", "audit")
    assert holders("values-dev.yaml")[variable] == {
        ("ts-timesheets-identity", "python -m identity"),
        ("ts-timesheets-audit", "python -m audit"),
    }
    assert variable not in holders("values-prod.yaml")
    for obj in rendered_scenario("values-prod.yaml"):
        if obj["kind"] == "Secret":
            assert "identity-keys-identity-to-audit" not in obj.get("data", {})
