"""Rotating the generated identity-session-secret and dpop-nonce-secret with the chart, one step per
upgrade (secrets.rotation; docs/runbook.md, "Rotate the provider's session secret" and "Rotate the
gateway's DPoP nonce key").

Each step is rendered as ``helm upgrade`` against a Kubernetes API server whose live Secret holds
what the step before left (the fake API server of test_secret_persistence.py): the value must be a
key ring the services read (svckit.keyring), the first key signing, and the keys that signed before
the step still verify after it; the pods that read the key roll with each step.
"""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest
from identity.settings import IdentitySettings
from svckit.keyring import KeyRing

from tests.packaging.fakeapi import FakeApiServer, fake_api
from tests.packaging.support import (
    SCENARIOS,
    deep_merge,
    pod_annotations,
    render,
    secret_data,
    upgrade_over,
)
from tests.packaging.test_policies import env_of

KEYS = {
    "identitySessionSecret": "identity-session-secret",
    "dpopNonceSecret": "dpop-nonce-secret",
    "identityKeyEncryptionKey": "identity-key-encryption-key",
}
READERS = {
    "identitySessionSecret": "identity",
    "dpopNonceSecret": "gateway",
    "identityKeyEncryptionKey": "identity",
}
BASE = deep_merge(SCENARIOS["values-dev.yaml"], {"gateway": {"dpop": {"nonces": True}}})
#: what a release of before generated: one secret, no key id
BEFORE = "S" * 48


def upgrade(api: FakeApiServer, live: dict[str, str], rotation: dict[str, str]) -> list[dict[str, Any]]:
    return upgrade_over(api, live, deep_merge(BASE, {"secrets": {"rotation": rotation}}))


@pytest.fixture
def api() -> Any:
    with fake_api() as server:
        yield server


@pytest.mark.parametrize("name", sorted(KEYS))
def test_add_promote_drop_rotates_the_key_one_upgrade_at_a_time(api: FakeApiServer, name: str) -> None:
    key = KEYS[name]
    live = {key: BEFORE}
    rings = [KeyRing.parse(BEFORE)]
    steps = ["add", "add", "promote", "promote", "drop", "drop", ""]
    annotations = []
    for step in steps:
        objects = upgrade(api, live, {name: step})
        live = secret_data(objects)
        rings.append(KeyRing.parse(live[key]))
        annotations.append(pod_annotations(objects, READERS[name]).get("timesheets/key-rotation-step"))
    assert [ring.kids for ring in rings] == [
        ("",),
        ("k1", "k2"),  # the secret of before named k1 (the same key), a new one that only verifies
        ("k1", "k2"),  # the same step again changes nothing
        ("k2", "k1"),  # the new one signs, the old one verifies
        ("k2", "k1"),
        ("k2",),  # the old one dropped
        ("k2",),
        ("k2",),  # no step: kept
    ]
    assert rings[1].keys[0][1] == rings[0].key  # the key of before, named: what it made stays valid
    assert rings[3].key == rings[1].keys[1][1]
    assert rings[5].key == rings[3].key
    # each step rolls the pods that read the key
    assert annotations == [*(f"{name}={step}" for step in steps[:-1]), None]
    # every other generated value is kept
    other = "batch-client-secret"
    objects = upgrade(api, {**live, other: "K" * 48}, {name: "add"})
    assert secret_data(objects)[other] == "K" * 48
    # the next rotation goes on numbering
    assert KeyRing.parse(secret_data(objects)[key]).kids == ("k2", "k3")


@pytest.mark.parametrize("name", ["identitySessionSecret", "identityKeyEncryptionKey"])
def test_the_rotated_keys_are_what_the_provider_reads(api: FakeApiServer, name: str) -> None:
    live = {KEYS[name]: BEFORE}
    for step in ("add", "promote", "drop"):
        live = secret_data(upgrade(api, live, {name: step}))
        settings = IdentitySettings(
            identity_key_encryption_key=live["identity-key-encryption-key"],
            identity_session_secret=live["identity-session-secret"],
        )
        assert settings.key_encryption_keys.kids
        assert settings.session_keys.kids


def test_only_the_reader_of_the_rotated_key_rolls(api: FakeApiServer) -> None:
    objects = upgrade(api, {"identity-session-secret": BEFORE}, {"identitySessionSecret": "add"})
    assert pod_annotations(objects, "identity")["timesheets/key-rotation-step"] == "identitySessionSecret=add"
    for component in ("gateway", "timesheets", "approvals", "audit"):
        assert "timesheets/key-rotation-step" not in pod_annotations(objects, component)
    for deployment in (o for o in objects if o["kind"] == "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            env = env_of(container)
            if "IDENTITY_SESSION_SECRET" in env:  # from the Secret, never a value in the manifest
                assert (
                    env["IDENTITY_SESSION_SECRET"]["valueFrom"]["secretKeyRef"]["key"]
                    == "identity-session-secret"
                )


def test_promote_before_add_is_refused_not_ignored(api: FakeApiServer) -> None:
    """``promote`` with one key in the ring changed nothing and said nothing: a rotation taken for
    done (after a leak, the leaked key kept signing). The render fails, naming the step to run first."""
    name = "dpopNonceSecret"
    with pytest.raises(helm.HelmError, match=f"{name}=promote: the ring holds one key; run the step add"):
        upgrade(api, {KEYS[name]: BEFORE}, {name: "promote"})


def test_promote_needs_the_charts_key_names(api: FakeApiServer) -> None:
    with pytest.raises(helm.HelmError, match="no key is named k<N>"):
        upgrade(
            api,
            {"identity-session-secret": f"mine:{'a' * 48},yours:{'b' * 48}"},
            {"identitySessionSecret": "promote"},
        )


def test_a_rotation_step_with_a_secret_given_by_reference_is_refused() -> None:
    values = deep_merge(SCENARIOS["values-prod.yaml"], {"secrets": {"rotation": {"dpopNonceSecret": "add"}}})
    with pytest.raises(helm.HelmError, match="write kid:secret"):
        render(values)


def test_an_unknown_step_is_refused_by_the_schema() -> None:
    values = deep_merge(BASE, {"secrets": {"rotation": {"dpopNonceSecret": "rotate"}}})
    with pytest.raises(helm.HelmError):
        render(values)
