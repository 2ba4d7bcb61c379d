"""Generated secrets are kept across upgrades.

The chart reads the live Secret with Helm's ``lookup``. Offline rendering makes ``lookup`` return
nothing, so here Helm's engine renders against a Kubernetes API server: a small HTTP server on
loopback that answers the discovery and the Secret read exactly as the API server would (no
cluster can run on this machine). The test then checks what an upgrade would apply.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import helm_python as helm
import pytest
from svckit.identity import PAIRS

from tests.packaging.fakeapi import FakeApiServer, fake_api, object_path
from tests.packaging.support import (
    CHART,
    GENERATED_SECRET,
    NAMESPACE,
    RELEASE,
    SCENARIOS,
    parse_manifests,
    secret_data,
    set_live_secret,
)

SECRET_PATH = object_path("Secret", GENERATED_SECRET)


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    with fake_api() as server:
        yield server


def render_against(api: FakeApiServer, *, upgrade: bool) -> dict[str, str]:
    return secret_data(parse_manifests(api.render(SCENARIOS["values-dev.yaml"], upgrade=upgrade)))


LIVE = {
    "identity-keys-gateway-to-timesheets": "gateway-timesheets-1:" + "A" * 48,
    "identity-keys-approvals-to-audit": "approvals-audit-1:" + "Z" * 48,
    "identity-key-encryption-key": "K" * 48,
    "identity-session-secret": "S" * 48,
    "batch-client-secret": "B" * 40,
    "postgres-password": "P" * 32,
    "redis-password": "R" * 32,
    "redis-password-gateway": "G" * 32,
    "redis-password-timesheets": "E" * 32,
    "database-password-identity": "I" * 32,
    "database-password-timesheets": "T" * 32,
    "database-password-approvals": "A" * 32,
    "database-password-audit": "U" * 32,
    "audit-checkpoint-keys": "ck1:" + "C" * 43,
}


def test_an_upgrade_keeps_every_generated_value(api: FakeApiServer) -> None:
    set_live_secret(api, LIVE)
    data = render_against(api, upgrade=True)
    assert SECRET_PATH in api.requests, "the chart looked the live Secret up"
    for key, value in LIVE.items():
        assert data[key] == value, key
    assert (
        data["database-url"] == f"postgresql://timesheets:{'P' * 32}@ts-timesheets-postgresql:5432/timesheets"
    )
    # each component's Redis user keeps its password: its URL matches the bundled Redis's ACL file
    assert data["redis-url-gateway"] == f"redis://gateway:{'G' * 32}@ts-timesheets-redis:6379/0"
    assert data["redis-url-timesheets"] == f"redis://timesheets:{'E' * 32}@ts-timesheets-redis:6379/0"
    assert hashlib.sha256(b"G" * 32).hexdigest() in data["redis-users.acl"]
    # the services' roles keep their passwords: the URLs they connect with match what the Job sets
    assert (
        data["database-url-audit"]
        == f"postgresql://ts_audit:{'U' * 32}@ts-timesheets-postgresql:5432/timesheets"
    )


def test_values_missing_from_an_older_release_are_generated_the_rest_kept(api: FakeApiServer) -> None:
    old = "identity-keys-gateway-to-timesheets"
    set_live_secret(api, {old: LIVE[old], "postgres-password": LIVE["postgres-password"]})
    data = render_against(api, upgrade=True)
    assert data[old] == LIVE[old]
    assert data["postgres-password"] == LIVE["postgres-password"]
    assert len(data["identity-session-secret"]) == 48
    assert data["identity-session-secret"] != LIVE["identity-session-secret"]


def test_an_upgrade_adds_the_providers_audit_key_and_keeps_every_other_pair_key(api: FakeApiServer) -> None:
    """A release from before the provider relayed its denials to the audit trail has a key for every
    pair but identity → audit: the upgrade generates that one (naming its pair) and changes no other."""
    before = {
        f"identity-keys-{sender}-to-{receiver}": f"{sender}-{receiver}-1:" + "Q" * 48
        for sender, receiver in PAIRS
        if sender != "identity"
    }
    set_live_secret(api, {**LIVE, **before})
    data = render_against(api, upgrade=True)
    for key, value in {**LIVE, **before}.items():
        assert data[key] == value, key
    kid, _, secret = data["identity-keys-identity-to-audit"].partition(":")
    assert kid == "identity-audit-1"
    assert len(secret) == 48


def test_a_first_install_generates_fresh_values(api: FakeApiServer) -> None:
    first = render_against(api, upgrade=False)
    second = render_against(api, upgrade=False)
    assert SECRET_PATH in api.requests
    for key in ("identity-keys-timesheets-to-audit", "identity-session-secret", "postgres-password"):
        assert first[key] != second[key], "random per install while nothing is live"
    kid, _, secret = first["identity-keys-timesheets-to-audit"].partition(":")
    assert kid == "timesheets-audit-1"
    assert len(secret) == 48


# --- GitOps (Argo CD, Flux): rendered without a cluster, every sync -----------------------------


def render_text(values: dict[str, Any]) -> dict[str, str]:
    with helm.Chart.load(CHART) as chart:
        return dict(chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True))


def test_with_existing_secrets_every_render_is_identical() -> None:
    """Argo CD renders with `helm template` on every sync and cannot `lookup`: with every secret given
    by reference (values-prod.yaml) two renders are byte-identical — no random value, nothing that
    drifts, nothing to roll."""
    first = render_text(SCENARIOS["values-prod.yaml"])
    second = render_text(SCENARIOS["values-prod.yaml"])
    assert first == second
    assert not [o for o in parse_manifests(first) if o["kind"] == "Secret"]


def test_without_existing_secrets_only_the_generated_secret_changes_between_renders() -> None:
    """What a GitOps tool would see without secrets.existingSecret: a new random Secret per sync (so
    the chart README tells GitOps users to give them by reference); everything else is stable."""
    first = render_text(SCENARIOS["values-dev.yaml"])
    second = render_text(SCENARIOS["values-dev.yaml"])
    changed = sorted(name for name in first if first[name] != second[name])
    assert changed == ["timesheets/templates/secret.yaml"]


def test_notes_warn_gitops_users_when_secrets_are_generated() -> None:
    from tests.packaging.support import render_notes

    assert "GitOps" in render_notes(SCENARIOS["values-dev.yaml"])
    assert "GitOps" not in render_notes(SCENARIOS["values-prod.yaml"])
