"""Which Deployment strategy an upgrade gets: RollingUpdate within a contract generation, Recreate
across a breaking boundary (docs/upgrades.md, "Breaking boundaries").

0.1.0's pods sign ``tsp-identity-v1`` with one shared key and append to the audit chain under an
advisory lock; this generation's pods accept neither and take a row lock. Side by side in a rolling
update, every call between an old and a new pod is refused (401) for the rollout's whole length, and
old and new audit replicas append to one chain unserialised. So the chart looks the live Deployment
up (Helm's ``lookup``, here against :mod:`tests.packaging.fakeapi`) and recreates the pods of a
component whose live pods are of another generation: one short outage instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.packaging.fakeapi import FakeApiServer, fake_api
from tests.packaging.support import NAMESPACE, SCENARIOS, Obj, deep_merge, parse_manifests

CONTRACT = "timesheets.abc.example/contract-generation"
COMPONENTS = ("gateway", "identity", "timesheets", "approvals", "audit")


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    with fake_api() as server:
        yield server


def live_deployment(api: FakeApiServer, component: str, annotations: dict[str, str]) -> None:
    api.live(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": f"ts-timesheets-{component}", "namespace": NAMESPACE},
            "spec": {"template": {"metadata": {"annotations": annotations}}},
        }
    )


def strategies(rendered: dict[str, str]) -> dict[str, Obj]:
    deployments = [o for o in parse_manifests(rendered) if o["kind"] == "Deployment"]
    return {
        o["metadata"]["name"].removeprefix("ts-timesheets-"): o["spec"]["strategy"]
        for o in deployments
        if o["metadata"]["name"].removeprefix("ts-timesheets-") in COMPONENTS
    }


def generation(rendered: dict[str, str]) -> set[str]:
    return {
        o["spec"]["template"]["metadata"]["annotations"][CONTRACT]
        for o in parse_manifests(rendered)
        if o["kind"] == "Deployment" and o["metadata"]["name"].removeprefix("ts-timesheets-") in COMPONENTS
    }


def test_an_upgrade_from_pods_without_a_contract_generation_recreates_them(api: FakeApiServer) -> None:
    """0.1.0's pods carry no generation: each component is recreated, never rolled alongside."""
    for component in COMPONENTS:
        live_deployment(api, component, {"checksum/secret-ref": "0123456789abcdef"})
    rendered = api.render(SCENARIOS["values-dev.yaml"], upgrade=True)
    assert {name: s["type"] for name, s in strategies(rendered).items()} == dict.fromkeys(
        COMPONENTS, "Recreate"
    )
    assert generation(rendered) == {"2"}


def test_an_upgrade_within_the_generation_rolls(api: FakeApiServer) -> None:
    for component in COMPONENTS:
        live_deployment(api, component, {CONTRACT: "2"})
    rendered = api.render(SCENARIOS["values-dev.yaml"], upgrade=True)
    for name, strategy in strategies(rendered).items():
        assert strategy == {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0},
        }, name


def test_only_the_components_of_another_generation_are_recreated(api: FakeApiServer) -> None:
    """A component added since (nothing live) and one already upgraded roll; an old one is recreated."""
    live_deployment(api, "timesheets", {})
    live_deployment(api, "audit", {CONTRACT: "2"})
    rendered = api.render(SCENARIOS["values-dev.yaml"], upgrade=True)
    types = {name: s["type"] for name, s in strategies(rendered).items()}
    assert types["timesheets"] == "Recreate"
    assert types["audit"] == types["gateway"] == "RollingUpdate"


@pytest.mark.parametrize("forced", ["Recreate", "RollingUpdate"])
def test_the_strategy_can_be_forced_for_gitops(api: FakeApiServer, forced: str) -> None:
    """`helm template` cannot look anything up: GitOps users set the strategy for that one upgrade."""
    for component in COMPONENTS:
        live_deployment(api, component, {CONTRACT: "2"} if forced == "Recreate" else {})
    values: dict[str, Any] = deep_merge(SCENARIOS["values-dev.yaml"], {"rollout": {"strategy": forced}})
    rendered = api.render(values, upgrade=True)
    assert {s["type"] for s in strategies(rendered).values()} == {forced}


def test_a_first_install_rolls(api: FakeApiServer) -> None:
    rendered = api.render(SCENARIOS["values-dev.yaml"], upgrade=False)
    assert {s["type"] for s in strategies(rendered).values()} == {"RollingUpdate"}
