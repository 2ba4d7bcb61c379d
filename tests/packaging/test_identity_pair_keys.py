"""The identity keys of the sender → receiver pairs: one Secret key per pair, given (as an environment
variable) to the two containers of that pair only — never to another service, never to a migration,
seed or test container — so that no key is shared beyond the pair that uses it."""

from __future__ import annotations

from svckit.identity import PAIRS, pair_variable

from tests.packaging.support import rendered_scenario
from tests.packaging.test_policies import containers, env_of, workloads


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
        assert set(found) == {pair_variable(sender, receiver) for sender, receiver in PAIRS}, scenario
        for sender, receiver in PAIRS:
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
