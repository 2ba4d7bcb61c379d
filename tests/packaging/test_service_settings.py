"""The environment the chart gives each service is what that service reads, and it accepts it.

For every values scenario and every app Deployment (and every migration container), the rendered
env is fed to the service's own settings model (``load_settings`` — the same validation that stops a
misconfigured pod at start-up), with Secret references replaced by values of the right shape. Every
variable the chart sets must be a setting of that service (no typos, nothing ignored), and every
peer URL a service reads must be set (no silent fallback to 127.0.0.1 in a cluster).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from svckit.identity import PAIRS, pair_variable
from svckit.settings import ServiceSettings, SettingsError, load_settings

from tests.packaging.support import APP_COMPONENTS, Obj, pod_spec, render
from tests.packaging.test_ops_values import container_env

# Shapes of the secrets the chart references (never real ones).
SECRET_SHAPES = {
    **{pair_variable(sender, receiver): f"{sender}-{receiver}-1:" + "a" * 43 for sender, receiver in PAIRS},
    "DATABASE_URL": "postgresql://timesheets:pw@db.internal:5432/timesheets",
    "REDIS_URL": "redis://:pw@redis.internal:6379/0",
    "IDENTITY_KEY_ENCRYPTION_KEY": "e" * 48,
    "IDENTITY_SESSION_SECRET": "s" * 48,
    "BATCH_CLIENT_SECRET": "b" * 40,
    "DB_RUNTIME_PASSWORD": "r" * 32,
    # optional keys, present while a password rotates: the login in use, the other login's password
    "DB_RUNTIME_LOGIN": "",
    "DB_RUNTIME_OTHER_PASSWORD": "o" * 32,
    "AUDIT_CHECKPOINT_KEYS": "ck1:" + "A" * 43,  # a 32-byte seed, base64url
    "DPOP_NONCE_SECRET": "n" * 48,
    "GATEWAY_CACHE_SECRET": "g" * 48,
}
PEER_URLS = {"timesheets_url", "approvals_url", "audit_url"}


def settings_class(service: str) -> type[ServiceSettings]:
    module = importlib.import_module(f"{service}.settings")
    found = [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, ServiceSettings)
        and value.__module__ == module.__name__
    ]
    assert len(found) == 1, found
    return found[0]


def rendered_settings(values: dict[str, Any], component: str) -> Any:
    """The settings ``component`` loads from the env the chart renders into its Deployment's container
    with ``values`` (Secret references given :data:`SECRET_SHAPES`)."""
    env = {
        e["name"]: str(e["value"]) if "value" in e else SECRET_SHAPES[e["name"]]
        for e in container_env(render(values), component)
    }
    return load_settings(settings_class(component), env)


def containers_by_service(objects: list[Obj]) -> list[tuple[str, Obj]]:
    """(service, container) for every container that runs `python -m <service> …`."""
    out = []
    for obj in objects:
        spec = pod_spec(obj)
        if spec is None:
            continue
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            command = c.get("command", [])
            if command[:2] == ["python", "-m"] and command[2] in APP_COMPONENTS:
                out.append((command[2], c))
    return out


NOT_SETTINGS = frozenset({"PYTHONPATH", "PROMETHEUS_MULTIPROC_DIR"})


def env_values(container: Obj, objects: list[Obj], tmp: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    config_maps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
    for entry in container.get("env", []):
        name = entry["name"]
        if "value" in entry:
            env[name] = str(entry["value"])
        else:
            assert name in SECRET_SHAPES, f"{name} comes from a Secret this test does not know"
            env[name] = SECRET_SHAPES[name]
    if env.get("DB_SSLROOTCERT", "system") != "system":
        # The mounted CA bundle: a real PEM where the service will read it.
        from testkit.pgtls import make_ca

        ca_path, _ = make_ca("database CA").write(tmp, "database-ca")
        env["DB_SSLROOTCERT"] = str(ca_path)
    if "REDIS_TLS_CA_FILE" in env:
        # The mounted CA bundle of a TLS Redis, whose URLs (the Secret's) are rediss://.
        from testkit.pgtls import make_ca

        ca_path, _ = make_ca("redis CA").write(tmp, "redis-ca")
        env["REDIS_TLS_CA_FILE"] = str(ca_path)
        env["REDIS_URL"] = env["REDIS_URL"].replace("redis://", "rediss://", 1)
    if "GATEWAY_ISSUERS_FILE" in env:
        # The file the gateway reads is the mounted ConfigMap: write its content where it points.
        (cm,) = [c for name, c in config_maps.items() if name.endswith("gateway-issuers")]
        path = tmp / "issuers.yaml"
        path.write_text(cm["data"]["issuers.yaml"])
        env["GATEWAY_ISSUERS_FILE"] = str(path)
    return env


def test_every_variable_is_read_and_accepted_by_the_service(objects: list[Obj], tmp_path: Path) -> None:
    pairs = containers_by_service(objects)
    assert {service for service, _ in pairs} >= {"gateway", "timesheets", "approvals", "audit"}
    for service, container in pairs:
        cls = settings_class(service)
        env = env_values(container, objects, tmp_path)
        fields = set(cls.model_fields)
        # PYTHONPATH (devMode.sourceSync) is the interpreter's, PROMETHEUS_MULTIPROC_DIR prometheus_client's
        # (and python -m gateway's, which clears it at start): not settings
        unknown = sorted(name for name in env if name.lower() not in fields and name not in NOT_SETTINGS)
        assert unknown == [], f"{service} does not read {unknown}"
        try:
            settings = load_settings(cls, env=env)
        except SettingsError:
            pytest.fail(f"{service} refuses the chart's environment (its message is above)")
        assert settings.port == int(env["PORT"])
        if "DB_RUNTIME_ROLE" in env:  # a migration container: the role it prepares is valid as given
            assert getattr(settings, "runtime_role", None) is not None, service
        if container["command"][3:] == []:  # serving: every pair it is an end of has its key
            assert settings.missing_identity_pairs() == "", service
        missing_peers = sorted(f.upper() for f in PEER_URLS & fields if f.upper() not in env)
        assert missing_peers == [], f"{service} reads {missing_peers} but the chart does not set them"


def test_the_check_notices_a_variable_nobody_reads(objects: list[Obj]) -> None:
    """Guard: a misspelt variable must be caught by the field comparison above."""
    cls = settings_class("timesheets")
    assert "audit_url" in cls.model_fields
    assert "oidc_isuer" not in cls.model_fields


def test_gateway_issuer_settings_file_is_valid_for_the_gateway(tmp_path: Path) -> None:
    """The issuers file the chart mounts parses with the gateway's own loader."""
    from gateway.issuers import load_issuers

    from tests.packaging.support import rendered_scenario

    objects = rendered_scenario("values-dev.yaml")
    (service, container) = next(p for p in containers_by_service(objects) if p[0] == "gateway")
    env = env_values(container, objects, tmp_path)
    settings: Any = load_settings(settings_class(service), env=env)
    issuers = load_issuers(settings)
    (issuer,) = issuers.values()
    assert issuer.jwks_uri == "http://ts-timesheets-identity:9000/.well-known/jwks.json"
    assert yaml.safe_load(Path(env["GATEWAY_ISSUERS_FILE"]).read_text())


def test_the_gateway_cache_key_is_generated_and_given_to_the_gateway_alone() -> None:
    """The MAC key over the gateway's Redis key-set cache, a second line behind the Redis ACL (a
    shared external credential lets every service write there): a service that also held this key
    could plant keys the gateway trusts (gateway.jwks)."""
    from tests.packaging.support import rendered_scenario

    objects = rendered_scenario("values-dev.yaml")
    holders = sorted(
        service
        for service, container in containers_by_service(objects)
        if any(entry["name"] == "GATEWAY_CACHE_SECRET" for entry in container.get("env", []))
    )
    assert holders == ["gateway"]
    (entry,) = [
        e
        for e in dict(containers_by_service(objects))["gateway"]["env"]
        if e["name"] == "GATEWAY_CACHE_SECRET"
    ]
    assert entry["valueFrom"]["secretKeyRef"]["key"] == "gateway-cache-secret"
    (secret,) = [o for o in objects if o["kind"] == "Secret" and "gateway-cache-secret" in o.get("data", {})]
    assert len(secret["data"]["gateway-cache-secret"]) >= 44  # 32+ bytes, base64


def test_dpop_settings_reach_the_gateway_and_the_provider(tmp_path: Path) -> None:
    """gateway.dpop (policy, nonces with the generated nonce key), identity.dpop and a per-issuer
    ``dpop`` reach the services as settings they accept (issue 15)."""
    from gateway.issuers import load_issuers

    from tests.packaging.support import SCENARIOS, deep_merge, render, rendered_scenario

    objects = rendered_scenario("dev+everything")  # gateway.dpop: required + nonces, identity nonces
    containers = dict(containers_by_service(objects))
    gateway = {entry["name"]: entry for entry in containers["gateway"]["env"]}
    assert gateway["DPOP_POLICY"]["value"] == "required"
    assert gateway["DPOP_NONCES"]["value"] == "true"
    assert gateway["DPOP_NONCE_SECRET"]["valueFrom"]["secretKeyRef"]["key"] == "dpop-nonce-secret"
    (secret,) = [o for o in objects if o["kind"] == "Secret" and "dpop-nonce-secret" in o.get("data", {})]
    assert len(secret["data"]["dpop-nonce-secret"]) >= 44  # 32+ bytes, base64
    identity = {entry["name"]: entry for entry in containers["identity"]["env"]}
    assert identity["DPOP_NONCES"]["value"] == "true"
    assert "DPOP_NONCE_SECRET" not in identity  # the provider's nonce key derives from its session secret

    dev = SCENARIOS["values-dev.yaml"]
    (own,) = dev["oidc"]["issuers"]
    objects = render(deep_merge(dev, {"gateway": {"issuers": {own: {"dpop": "required"}}}}))
    container = dict(containers_by_service(objects))["gateway"]
    env = env_values(container, objects, tmp_path)
    assert env["DPOP_POLICY"] == "allowed"  # the default; the issuer's own setting wins
    settings: Any = load_settings(settings_class("gateway"), env=env)
    assert load_issuers(settings)[own].dpop_required


@pytest.mark.parametrize("service", APP_COMPONENTS)
def test_settings_models_are_found(service: str) -> None:
    assert issubclass(settings_class(service), ServiceSettings)
