"""Policy tests over the rendered objects of every values scenario.

They encode the platform's rules for workloads — the restricted Pod Security Standard, probes,
resources, pinned images, no service-account token, HPA + PDB + topology spread for every app
workload, NetworkPolicies that fence the backends, migrations as a hook Job, secrets only by
reference — so that a template change that breaks one fails here, whatever values are used.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from svckit.identity import PAIRS
from svckit.watchdog import WORKER_START_SECONDS

from tests.packaging.support import (
    APP_COMPONENTS,
    MINIMAL,
    SCENARIOS,
    Obj,
    component,
    deep_merge,
    pod_spec,
    render,
    rendered_scenario,
)

SECRET_VARS = {
    *(f"IDENTITY_KEYS_{sender}_TO_{receiver}".upper() for sender, receiver in PAIRS),
    "DATABASE_URL",
    "REDIS_URL",
    "IDENTITY_KEY_ENCRYPTION_KEY",
    "IDENTITY_SESSION_SECRET",
    "BATCH_CLIENT_SECRET",
    "POSTGRES_PASSWORD",
    "REDIS_PASSWORD",
    "DB_RUNTIME_PASSWORD",
    "DB_RUNTIME_OTHER_PASSWORD",
    "AUDIT_CHECKPOINT_KEYS",
}


def workloads(objects: list[Obj]) -> Iterator[tuple[Obj, Obj]]:
    for obj in objects:
        spec = pod_spec(obj)
        if spec is not None:
            yield obj, spec


def containers(spec: Obj) -> list[Obj]:
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def by_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def app_deployments(objects: list[Obj]) -> list[Obj]:
    return [o for o in by_kind(objects, "Deployment") if component(o) in APP_COMPONENTS]


# --- Pod Security Standard "restricted" -------------------------------------------------------


def test_every_pod_meets_the_restricted_pod_security_standard(objects: list[Obj]) -> None:
    for obj, spec in workloads(objects):
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        psc = spec.get("securityContext", {})
        assert psc.get("runAsNonRoot") is True, where
        assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert isinstance(psc.get("runAsUser"), int), where
        assert psc["runAsUser"] > 0, where
        for forbidden in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(forbidden), where
        for volume in spec.get("volumes", []):
            assert "hostPath" not in volume, where
        for c in containers(spec):
            sc = c.get("securityContext", {})
            cwhere = f"{where} container {c['name']}"
            assert sc.get("allowPrivilegeEscalation") is False, cwhere
            assert sc.get("readOnlyRootFilesystem") is True, cwhere
            assert sc.get("runAsNonRoot") is True, cwhere
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], cwhere
            assert not sc.get("capabilities", {}).get("add"), cwhere
            assert not sc.get("privileged"), cwhere
            assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", cwhere
            assert "ports" not in c or all("hostPort" not in p for p in c["ports"]), cwhere


def test_read_only_root_filesystem_comes_with_a_writable_tmp(objects: list[Obj]) -> None:
    for obj, spec in workloads(objects):
        if component(obj) not in (*APP_COMPONENTS, "migrations"):
            continue
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in containers(spec):
            if not chart_container(c):
                continue  # a sidecar or init container from values: its image's needs are its own
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{obj['metadata']['name']}/{c['name']}"
            assert "emptyDir" in volumes[mounts["/tmp"]]


def main_container(deployment: Obj) -> Obj:
    """The service's own container (sidecars from values may stand beside it)."""
    found: list[Obj] = [
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == component(deployment)
    ]
    (c,) = found
    return c


def chart_container(container: Obj) -> bool:
    name = str(container["name"])
    return name in APP_COMPONENTS or name == "dev-source" or name.startswith(("migrate-", "seed-"))


def test_no_pod_mounts_a_service_account_token(objects: list[Obj]) -> None:
    for obj, spec in workloads(objects):
        assert spec.get("automountServiceAccountToken") is False, obj["metadata"]["name"]
    for sa in by_kind(objects, "ServiceAccount"):
        assert sa.get("automountServiceAccountToken") is False, sa["metadata"]["name"]


def test_every_pod_uses_its_own_service_account(objects: list[Obj]) -> None:
    accounts = {sa["metadata"]["name"] for sa in by_kind(objects, "ServiceAccount")}
    for obj, spec in workloads(objects):
        assert spec.get("serviceAccountName") in accounts, obj["metadata"]["name"]
        assert spec["serviceAccountName"] != "default"


# --- images, resources, probes ----------------------------------------------------------------

PINNED = re.compile(r"^[^\s:@]+(:[0-9][\w.-]*|:(?!latest$)[\w][\w.-]*|@sha256:[a-f0-9]{64})$")


def test_every_image_is_pinned_by_tag_or_digest(objects: list[Obj]) -> None:
    for _obj, spec in workloads(objects):
        for c in containers(spec):
            image = c["image"]
            name_and_tag = image.rsplit("/", 1)[-1]
            assert ("@sha256:" in image) or (":" in name_and_tag), image
            assert not image.endswith(":latest"), image
            assert PINNED.match(image.split("/", 1)[-1] if "@" not in image else image), image


def test_digest_wins_over_tag() -> None:
    digest = "sha256:" + "a" * 64
    values = dict(SCENARIOS["minimal"], gateway={"image": {"digest": digest}})
    from tests.packaging.support import render

    objects = render(values)
    gateway = next(o for o in app_deployments(objects) if component(o) == "gateway")
    image = gateway["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"ghcr.io/abc-inc/timesheets-gateway@{digest}"


def test_every_container_requests_cpu_and_memory_and_limits_memory(objects: list[Obj]) -> None:
    for obj, spec in workloads(objects):
        for c in containers(spec):
            res = c.get("resources", {})
            where = f"{obj['metadata']['name']}/{c['name']}"
            assert res.get("requests", {}).get("cpu"), where
            assert res.get("requests", {}).get("memory"), where
            assert res.get("limits", {}).get("memory"), where


def test_app_containers_probe_healthz_and_readyz(objects: list[Obj]) -> None:
    """Each app container's probes: the paths, and the ports (chart 0.12.0)."""
    deployments = app_deployments(objects)
    assert deployments
    for dep in deployments:
        c = main_container(dep)
        assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        port_names = {p["name"] for p in c["ports"]}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert c[probe]["httpGet"]["port"] in port_names
        # the start through the public listener; then liveness and readiness on the metrics listener,
        # answered beside the event loop (svckit.probes): a busy loop is not taken for a dead one
        assert c["startupProbe"]["httpGet"]["port"] == "http"
        assert c["livenessProbe"]["httpGet"]["port"] == "metrics"
        assert c["readinessProbe"]["httpGet"]["port"] == "metrics"


def test_every_workload_of_the_chart_has_probes(objects: list[Obj]) -> None:
    for obj, spec in workloads(objects):
        if obj["kind"] == "Job" or obj["metadata"]["annotations"].get("helm.sh/hook") == "test":
            continue  # runs to completion
        for c in spec["containers"]:
            if component(obj) in APP_COMPONENTS and not chart_container(c):
                continue  # a sidecar from values
            assert "livenessProbe" in c, obj["metadata"]["name"]
            assert "readinessProbe" in c, obj["metadata"]["name"]


# --- availability ------------------------------------------------------------------------------


def test_every_app_workload_has_an_hpa_and_a_pdb_when_enabled(scenario: str, objects: list[Obj]) -> None:
    values = SCENARIOS[scenario]
    hpas = {o["spec"]["scaleTargetRef"]["name"]: o for o in by_kind(objects, "HorizontalPodAutoscaler")}
    pdbs = {o["metadata"]["name"]: o for o in by_kind(objects, "PodDisruptionBudget")}
    for dep in app_deployments(objects):
        name, comp = dep["metadata"]["name"], component(dep)
        comp_values: dict[str, Any] = values.get(comp, {})
        if comp_values.get("autoscaling", {}).get("enabled", True):
            assert name in hpas, name
            assert hpas[name]["apiVersion"] == "autoscaling/v2"
            assert "replicas" not in dep["spec"], "the HPA owns the replica count"
        else:
            assert "replicas" in dep["spec"]
        if comp_values.get("pdb", {}).get("enabled", True):
            assert name in pdbs, name
            assert pdbs[name]["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("name", ["values-dev.yaml", "values-prod.yaml"])
def test_shipped_values_give_every_app_workload_an_hpa_and_a_pdb(name: str) -> None:
    objects = rendered_scenario(name)
    deployments = {d["metadata"]["name"] for d in app_deployments(objects)}
    assert len(deployments) == (5 if name == "values-dev.yaml" else 4)  # prod: Auth0, no identity
    assert {
        o["spec"]["scaleTargetRef"]["name"] for o in by_kind(objects, "HorizontalPodAutoscaler")
    } == deployments
    assert {o["metadata"]["name"] for o in by_kind(objects, "PodDisruptionBudget")} == deployments
    for pdb in by_kind(objects, "PodDisruptionBudget"):
        assert "maxUnavailable" in pdb["spec"], "maxUnavailable never blocks a drain, even at 1 replica"
    if name == "values-prod.yaml":
        for hpa in by_kind(objects, "HorizontalPodAutoscaler"):
            assert hpa["spec"]["minReplicas"] >= 2, "production survives losing a pod"


def test_app_pods_spread_over_zones_and_nodes(objects: list[Obj]) -> None:
    for dep in app_deployments(objects):
        spec = dep["spec"]["template"]["spec"]
        keys = {t["topologyKey"] for t in spec["topologySpreadConstraints"]}
        assert {"topology.kubernetes.io/zone", "kubernetes.io/hostname"} <= keys
        for t in spec["topologySpreadConstraints"]:
            selector = t["labelSelector"]["matchLabels"]
            assert selector == dep["spec"]["selector"]["matchLabels"]


def test_selectors_match_pod_labels_and_services(objects: list[Obj]) -> None:
    services = {s["metadata"]["name"]: s for s in by_kind(objects, "Service")}
    for dep in app_deployments(objects):
        labels = dep["spec"]["template"]["metadata"]["labels"]
        for k, v in dep["spec"]["selector"]["matchLabels"].items():
            assert labels[k] == v
        svc = services[dep["metadata"]["name"]]
        assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
        c = main_container(dep)
        assert svc["spec"]["ports"][0]["port"] == c["ports"][0]["containerPort"]


# --- configuration and secrets -----------------------------------------------------------------

CONTRACT_PORTS = {"gateway": 8080, "identity": 9000, "timesheets": 8101, "approvals": 8102, "audit": 8103}


def env_of(container: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in container.get("env", [])}


def identity_keys_of(container: Obj) -> list[str]:
    return [name for name in env_of(container) if name.startswith("IDENTITY_KEYS")]


def test_services_get_the_contract_environment(objects: list[Obj]) -> None:
    present = {component(dep) for dep in app_deployments(objects)}
    for dep in app_deployments(objects):
        comp = component(dep)
        c = main_container(dep)
        env = env_of(c)
        assert c["command"] == ["python", "-m", comp]
        assert env["BIND_HOST"]["value"] == "::"  # both families (network.bindHost)
        assert env["PORT"]["value"] == str(CONTRACT_PORTS[comp])
        assert c["ports"][0]["containerPort"] == CONTRACT_PORTS[comp]
        assert set(identity_keys_of(c)) == {
            f"IDENTITY_KEYS_{sender}_TO_{receiver}".upper()
            for sender, receiver in PAIRS
            if comp in (sender, receiver) and {sender, receiver} <= present  # the provider's: if it runs
        }
        if comp != "gateway":
            assert "DATABASE_URL" in env
        if comp in ("gateway", "identity"):
            assert ("OIDC_ISSUER" if comp == "gateway" else "IDENTITY_ISSUER") in env
            assert "OIDC_AUDIENCE" in env
        if comp == "identity":
            for name in ("IDENTITY_KEY_ENCRYPTION_KEY", "IDENTITY_SESSION_SECRET", "BATCH_CLIENT_SECRET"):
                assert name in env
        for peer in ("TIMESHEETS_URL", "APPROVALS_URL", "AUDIT_URL"):
            if peer in env:
                assert env[peer]["value"].startswith("http://ts-timesheets-")


def test_secrets_reach_containers_only_by_reference(objects: list[Obj]) -> None:
    for obj, spec in workloads(objects):
        for c in containers(spec):
            for name, entry in env_of(c).items():
                if name in SECRET_VARS:
                    assert "value" not in entry, f"{obj['metadata']['name']}: {name} inline"
                    assert "secretKeyRef" in entry["valueFrom"]


def test_production_reads_every_secret_from_the_referenced_secrets() -> None:
    objects = rendered_scenario("values-prod.yaml")
    assert by_kind(objects, "Secret") == [], "production generates no secret"
    for obj, spec in workloads(objects):
        if component(obj) == "helm-test":
            assert not [e for c in containers(spec) for e in c.get("env", []) if "valueFrom" in e], (
                "no secrets"
            )
            continue
        for c in containers(spec):
            env = env_of(c)
            for name in identity_keys_of(c):
                assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "timesheets-app"
            if "DATABASE_URL" in env:
                # the owner's URL reaches the migration containers only; a service gets its own role's
                ref = env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
                if c["command"][3:] == ["migrate"]:
                    assert ref == {"name": "timesheets-database", "key": "database-url"}
                    password = env["DB_RUNTIME_PASSWORD"]["valueFrom"]["secretKeyRef"]
                    service = c["command"][2]
                    assert password == {
                        "name": "timesheets-database-roles",
                        "key": f"database-password-{service}",
                    }
                else:
                    service = c["command"][2]
                    assert ref == {"name": "timesheets-database-roles", "key": f"database-url-{service}"}
            if "REDIS_URL" in env:
                # each component its own Redis user's URL (svckit.redisacl), from the referenced Secret
                ref = env["REDIS_URL"]["valueFrom"]["secretKeyRef"]
                assert ref == {"name": "timesheets-redis", "key": f"redis-url-{component(obj)}"}


def test_generated_secret_holds_every_key_the_pods_reference() -> None:
    objects = rendered_scenario("values-dev.yaml")
    (secret,) = by_kind(objects, "Secret")
    name = secret["metadata"]["name"]
    keys = set(secret["data"])
    for obj, spec in workloads(objects):
        for c in containers(spec):
            for entry in c.get("env", []):
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["name"] == name and not ref.get("optional"):  # optional: while rotating
                    assert ref["key"] in keys, (obj["metadata"]["name"], ref)
    annotations = secret["metadata"]["annotations"]
    assert annotations["helm.sh/resource-policy"] == "keep"
    assert "pre-install" in annotations["helm.sh/hook"]


def test_generated_secrets_are_strong_and_consistent() -> None:
    import base64

    (secret,) = by_kind(rendered_scenario("values-dev.yaml"), "Secret")
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    for sender, receiver in PAIRS:
        kid, _, key = data[f"identity-keys-{sender}-to-{receiver}"].partition(":")
        assert kid == f"{sender}-{receiver}-1"  # a receiver's key ids each name one sender
        assert len(key) >= 32
    assert "identity-keys" not in data, "no key shared by every service"
    for name in ("identity-key-encryption-key", "identity-session-secret", "postgres-password"):
        assert len(data[name]) >= 32
    assert f":{data['postgres-password']}@ts-timesheets-postgresql:5432/" in data["database-url"]
    assert "redis-url" not in data, "no Redis credential shared by every component"
    for name in ("gateway", "identity", "timesheets", "approvals", "audit"):
        password = data[f"redis-password-{name}"]
        assert len(password) >= 32
        assert data[f"redis-url-{name}"] == f"redis://{name}:{password}@ts-timesheets-redis:6379/0"
        assert password not in data["redis-users.acl"], "the ACL file holds hashes only"
    (again,) = by_kind(rendered_scenario("dev+everything"), "Secret")
    pair = "identity-keys-gateway-to-audit"
    assert again["data"][pair] != secret["data"][pair], "random per install"


# --- database TLS ------------------------------------------------------------------------------

DB_CLIENTS = {"identity", "timesheets", "approvals", "audit"}


def test_production_checks_the_database_certificate_in_every_pod_that_connects() -> None:
    """values-prod.yaml: verify-full, with the CA bundle mounted into every service and migration
    container that connects to PostgreSQL — and into nothing else."""
    objects = rendered_scenario("values-prod.yaml")
    connecting = 0
    for obj, spec in workloads(objects):
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in containers(spec):
            env = env_of(c)
            mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
            if "DATABASE_URL" not in env:
                assert "database-ca" not in mounts
                assert "DB_SSLROOTCERT" not in env
                continue
            connecting += 1
            where = f"{obj['metadata']['name']}/{c['name']}"
            assert env["DB_SSLMODE"]["value"] == "verify-full", where
            path = env["DB_SSLROOTCERT"]["value"]
            mount = mounts["database-ca"]
            assert path == mount["mountPath"] + "/ca.crt", where
            assert mount["readOnly"] is True
            assert volumes["database-ca"]["configMap"] == {
                "name": "timesheets-database-ca",
                "items": [{"key": "ca.crt", "path": "ca.crt"}],
            }
    assert connecting == 3 + 3  # timesheets, approvals, audit Deployments + their migration containers


def test_database_ca_from_a_secret_or_the_system_store(
    render_values: Callable[[dict[str, Any]], list[Obj]],
) -> None:
    values = {
        **SCENARIOS["minimal"],
        "externalDatabase": {
            **SCENARIOS["minimal"]["externalDatabase"],
            "caBundle": {"secretName": "db-ca", "key": "root.pem"},
        },
    }
    objects = render_values(values)
    (job,) = by_kind(objects, "Job")
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["database-ca"]["secret"] == {
        "secretName": "db-ca",
        "items": [{"key": "root.pem", "path": "ca.crt"}],
    }
    system = {
        **SCENARIOS["minimal"],
        "externalDatabase": {
            **SCENARIOS["minimal"]["externalDatabase"],
            "caBundle": {"useSystemTrustStore": True},
        },
    }
    for dep in app_deployments(render_values(system)):
        c = main_container(dep)
        env = env_of(c)
        if component(dep) in DB_CLIENTS:
            assert env["DB_SSLROOTCERT"]["value"] == "system"
        assert "database-ca" not in {v["name"] for v in dep["spec"]["template"]["spec"]["volumes"]}
    for dep in app_deployments(rendered_scenario("values-dev.yaml")):  # the demo database: plain
        c = main_container(dep)
        assert not {"DB_SSLMODE", "DB_SSLROOTCERT"} & set(env_of(c))


# --- Redis TLS ---------------------------------------------------------------------------------


def test_production_checks_the_redis_certificate_in_every_container_that_connects() -> None:
    """values-prod.yaml: the Redis CA bundle (externalRedis.caBundle) mounted into every container
    given a REDIS_URL (the Deployments; Auth0 here, so no identity provider) and into nothing else;
    REDIS_TLS_VERIFY left at its default (full: the host name checked)."""
    objects = rendered_scenario("values-prod.yaml")
    connecting = []
    for obj, spec in workloads(objects):
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in containers(spec):
            env = env_of(c)
            mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
            assert "REDIS_TLS_VERIFY" not in env
            if "REDIS_URL" not in env:
                assert "REDIS_TLS_CA_FILE" not in env
                continue
            connecting.append(c["name"])
            where = f"{obj['metadata']['name']}/{c['name']}"
            mount = mounts["redis-ca"]
            assert env["REDIS_TLS_CA_FILE"]["value"] == mount["mountPath"] + "/ca.crt", where
            assert mount["readOnly"] is True
            assert volumes["redis-ca"]["configMap"] == {
                "name": "timesheets-redis-ca",
                "items": [{"key": "ca.crt", "path": "ca.crt"}],
            }
    assert sorted(connecting) == ["approvals", "audit", "gateway", "timesheets"], connecting


def test_redis_ca_from_a_secret_and_the_chain_only_check(
    render_values: Callable[[dict[str, Any]], list[Obj]],
) -> None:
    values = {
        **SCENARIOS["minimal"],
        "externalRedis": {
            **SCENARIOS["minimal"]["externalRedis"],
            "caBundle": {"secretName": "redis-ca", "key": "server-ca.pem"},
            "tlsVerify": "ca",
        },
    }
    for dep in app_deployments(render_values(values)):
        volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
        assert volumes["redis-ca"]["secret"] == {
            "secretName": "redis-ca",
            "items": [{"key": "server-ca.pem", "path": "ca.crt"}],
        }
        env = env_of(main_container(dep))
        assert env["REDIS_TLS_VERIFY"]["value"] == "ca"
        assert env["REDIS_TLS_CA_FILE"]["value"] == "/etc/timesheets/redis-ca/ca.crt"
    for dep in app_deployments(rendered_scenario("values-dev.yaml")):  # the bundled Redis: plain
        env = env_of(main_container(dep))
        assert not {"REDIS_TLS_CA_FILE", "REDIS_TLS_VERIFY"} & set(env)
        assert "redis-ca" not in {v["name"] for v in dep["spec"]["template"]["spec"]["volumes"]}


def test_request_body_budgets_reach_each_component(
    render_values: Callable[[dict[str, Any]], list[Obj]],
) -> None:
    """config.requestBodyBufferBytes is the services' REQUEST_BODY_BUFFER_BYTES; the gateway keeps its
    own (gateway.requestBodyBufferBytes): no variable it would not read."""
    values = {
        **SCENARIOS["minimal"],
        "config": {**SCENARIOS["minimal"].get("config", {}), "requestBodyBufferBytes": 33554432},
        "gateway": {**SCENARIOS["minimal"].get("gateway", {}), "requestBodyBufferBytes": 16777216},
    }
    seen = set()
    for dep in app_deployments(render_values(values)):
        env = env_of(main_container(dep))
        seen.add(component(dep))
        if component(dep) == "gateway":
            assert env["GATEWAY_REQUEST_BODY_BUFFER_BYTES"]["value"] == "16777216"
            assert "REQUEST_BODY_BUFFER_BYTES" not in env
        else:
            assert env["REQUEST_BODY_BUFFER_BYTES"]["value"] == "33554432"
    assert {"gateway", "timesheets", "approvals", "audit"} <= seen


# --- migrations --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "hooks"),
    [
        ("values-prod.yaml", ["pre-install", "pre-upgrade"]),
        ("values-dev.yaml", ["pre-upgrade"]),
    ],
)
def test_migrations_run_as_a_hook_job_for_every_schema(name: str, hooks: list[str]) -> None:
    objects = rendered_scenario(name)
    (job,) = by_kind(objects, "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"].split(",") == hooks
    spec = job["spec"]["template"]["spec"]
    commands = [c["command"] for c in containers(spec)]
    migrated = [cmd[2] for cmd in commands if cmd[3:] == ["migrate"]]
    assert all(cmd[:2] == ["python", "-m"] for cmd in commands)
    seeds = [cmd for cmd in commands if cmd[3:] == ["seed"]]
    assert seeds == ([["python", "-m", "identity", "seed"]] if name == "values-dev.yaml" else [])
    if seeds:
        assert commands.index(seeds[0]) == commands.index(["python", "-m", "identity", "migrate"]) + 1
    expected = ["timesheets", "approvals", "audit"]
    if SCENARIOS[name].get("identity", {}).get("enabled", True):
        expected = ["identity", *expected]
    assert migrated == expected
    assert spec["restartPolicy"] == "Never"
    # The Job's own ServiceAccount exists when the hook runs (it is a hook with a lower weight).
    sa = next(
        o for o in by_kind(objects, "ServiceAccount") if o["metadata"]["name"] == spec["serviceAccountName"]
    )
    assert int(sa["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        job["metadata"]["annotations"]["helm.sh/hook-weight"]
    )


# --- network policies --------------------------------------------------------------------------


def policy_for(objects: list[Obj], comp: str) -> Obj:
    (policy,) = [
        o
        for o in by_kind(objects, "NetworkPolicy")
        if o["spec"]["podSelector"]["matchLabels"].get("app.kubernetes.io/component") == comp
    ]
    return policy


def peers(rules: list[Obj], key: str) -> set[str]:
    found = set()
    for rule in rules:
        for peer in rule.get(key, []):
            comp = peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component")
            if comp and "namespaceSelector" not in peer:
                found.add(comp)
    return found


BACKEND_CALLERS = {
    "timesheets": {"gateway", "approvals"},
    "approvals": {"gateway"},
    "audit": {"gateway", "timesheets", "approvals", "identity"},  # identity: the provider's denials
}


def test_every_app_workload_is_covered_by_a_network_policy(objects: list[Obj]) -> None:
    for dep in app_deployments(objects):
        policy = policy_for(objects, component(dep))
        assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}


@pytest.mark.parametrize("backend", sorted(BACKEND_CALLERS))
def test_backends_accept_only_the_gateway_and_their_peers(objects: list[Obj], backend: str) -> None:
    present = {component(d) for d in app_deployments(objects)}
    policy = policy_for(objects, backend)
    ingress = policy["spec"]["ingress"]
    for rule in ingress:
        assert rule.get("from"), "a rule without 'from' admits anyone"
        for peer in rule["from"]:
            assert "ipBlock" not in peer
    allowed = peers(ingress, "from") - {"helm-test"}  # `helm test`'s pod checks every /readyz
    assert allowed == BACKEND_CALLERS[backend] & present
    # Anything else in 'from' may only be the metrics scrapers (a namespace selector).
    others = [p for r in ingress for p in r["from"] if "podSelector" not in p or "namespaceSelector" in p]
    assert all("namespaceSelector" in p for p in others)


def port_rules(policy: Obj, port: str) -> list[Obj]:
    return [r for r in policy["spec"]["ingress"] if any(p["port"] == port for p in r.get("ports", []))]


def test_metrics_port_is_open_only_to_the_monitoring_namespaces(scenario: str, objects: list[Obj]) -> None:
    """Every component serves /metrics on its `metrics` port (METRICS_PORT), never on `http`; the
    NetworkPolicy admits only the monitoring namespaces there, and never opens `http` to them."""
    namespaces = SCENARIOS[scenario].get("networkPolicy", {}).get("monitoringNamespaces", ["monitoring"])
    for dep in app_deployments(objects):
        comp = component(dep)
        c = main_container(dep)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert set(ports) == {"http", "metrics"}
        assert env_of(c)["METRICS_PORT"]["value"] == str(ports["metrics"])
        assert ports["metrics"] != ports["http"]
        policy = policy_for(objects, comp)
        rules = port_rules(policy, "metrics")
        extra = SCENARIOS[scenario].get("networkPolicy", {}).get("extraIngress", [])
        for rule in policy["spec"]["ingress"]:
            if rule in extra:
                continue
            assert [p["port"] for p in rule["ports"]] in (["http"], ["metrics"]), "one port per rule"
        if not namespaces:
            assert rules == [], comp
            continue
        (rule,) = rules
        allowed = {p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in rule["from"]}
        assert allowed == set(namespaces), comp
        assert all(set(p) <= {"namespaceSelector", "podSelector"} for p in rule["from"])
        for http_rule in port_rules(policy, "http"):
            assert not any(
                p.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
                in namespaces
                for p in http_rule.get("from", [])
            ), f"{comp}: the monitoring namespaces reach the service port"


def test_monitoring_pod_labels_narrow_the_metrics_rule(
    render_values: Callable[[dict[str, Any]], list[Obj]],
) -> None:
    values = {
        **SCENARIOS["minimal"],
        "networkPolicy": {
            "monitoringNamespaces": ["monitoring", "observability"],
            "monitoringPodLabels": {"app.kubernetes.io/name": "prometheus"},
        },
    }
    objects = render_values(values)
    (rule,) = port_rules(policy_for(objects, "audit"), "metrics")
    assert rule["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
        }
        for ns in ("monitoring", "observability")
    ]


def test_egress_is_dns_database_redis_identity_provider_and_peers_only(
    scenario: str, objects: list[Obj]
) -> None:
    extra = SCENARIOS[scenario].get("networkPolicy", {}).get("extraEgress", [])
    for dep in app_deployments(objects):
        comp = component(dep)
        egress = policy_for(objects, comp)["spec"]["egress"]
        ports = {p["port"] for rule in egress for p in rule.get("ports", [])}
        assert 53 in ports
        allowed_ports = {53, 5432, 6379, 6380, 443, 9000, 8101, 8102, 8103}
        allowed_ports |= {p["port"] for rule in extra for p in rule["ports"]}  # what values add
        assert ports <= allowed_ports, (comp, ports)
        for rule in egress:
            assert rule.get("ports"), f"{comp}: an egress rule without ports opens everything"
        if comp == "audit":
            assert peers(egress, "to") <= {"postgresql", "redis"}


def test_demo_databases_accept_only_their_clients() -> None:
    objects = rendered_scenario("values-dev.yaml")
    pg = peers(policy_for(objects, "postgresql")["spec"]["ingress"], "from")
    assert pg == {"identity", "timesheets", "approvals", "audit", "migrations"}
    redis = peers(policy_for(objects, "redis")["spec"]["ingress"], "from")
    # every service: the API services share their replay memory of signed requests there
    assert redis == {"gateway", "identity", "timesheets", "approvals", "audit"}


def test_public_components_are_reachable_from_the_ingress_controller() -> None:
    prod = rendered_scenario("values-prod.yaml")
    ingress = policy_for(prod, "gateway")["spec"]["ingress"]
    selectors = [p.get("namespaceSelector", {}).get("matchLabels") for r in ingress for p in r["from"]]
    assert {"kubernetes.io/metadata.name": "ingress-nginx"} in selectors
    dev = rendered_scenario("values-dev.yaml")
    rules = policy_for(dev, "gateway")["spec"]["ingress"]
    assert any("from" not in r for r in rules), "no ingressFrom: anyone may reach the gateway"


# --- ingress -----------------------------------------------------------------------------------


def test_ingress_exposes_gateway_and_bundled_identity_only() -> None:
    objects = rendered_scenario("dev+everything")
    ingresses = {component(o): o for o in by_kind(objects, "Ingress")}
    assert set(ingresses) == {"gateway", "identity"}
    for comp, ing in ingresses.items():
        backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
        assert backend["name"] == f"ts-timesheets-{comp}"
        assert backend["port"] == {"name": "http"}, "an Ingress never reaches the metrics port"
        assert ing["spec"]["tls"][0]["hosts"] == [ing["spec"]["rules"][0]["host"]]
    prod = rendered_scenario("values-prod.yaml")
    assert [component(o) for o in by_kind(prod, "Ingress")] == ["gateway"]


# --- gateway issuers file -------------------------------------------------------------------------


def test_gateway_fetches_bundled_identity_keys_in_cluster() -> None:
    objects = rendered_scenario("values-dev.yaml")
    gateway = next(d for d in app_deployments(objects) if component(d) == "gateway")
    spec = gateway["spec"]["template"]["spec"]
    c = main_container(gateway)
    path = env_of(c)["GATEWAY_ISSUERS_FILE"]["value"]
    mount = next(m for m in c["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    (cm,) = [o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"] == volume["configMap"]["name"]]
    doc = yaml.safe_load(cm["data"][path.rsplit("/", 1)[1]])
    assert doc == {
        "issuers": {
            "http://localhost:9000/": {"jwks_uri": "http://ts-timesheets-identity:9000/.well-known/jwks.json"}
        }
    }


def test_gateway_issuer_settings_must_name_a_trusted_issuer(
    render_values: Callable[[dict[str, Any]], list[Obj]],
) -> None:
    import helm_python as helm

    values = {
        **SCENARIOS["minimal"],
        "gateway": {"issuers": {"https://other.example/": {"leeway_seconds": 5}}},
    }
    with pytest.raises(helm.HelmError, match=r"not one of oidc\.issuers"):
        render_values(values)


def test_production_without_issuer_settings_has_no_issuers_file() -> None:
    objects = rendered_scenario("values-prod.yaml")
    gateway = next(d for d in app_deployments(objects) if component(d) == "gateway")
    c = main_container(gateway)
    assert "GATEWAY_ISSUERS_FILE" not in env_of(c)


def test_with_the_demo_database_pods_migrate_their_own_schema_before_start() -> None:
    """On install the demo PostgreSQL does not exist yet for a pre-install hook; each pod migrates."""
    objects = rendered_scenario("values-dev.yaml")
    for dep in app_deployments(objects):
        comp = component(dep)
        init = dep["spec"]["template"]["spec"].get("initContainers", [])
        if comp == "gateway":
            assert init == []
        elif comp == "identity":
            assert [c["command"] for c in init] == [
                ["python", "-m", "identity", "migrate"],
                ["python", "-m", "identity", "seed"],  # seedDemo in values-dev.yaml
            ]
        else:
            assert [c["command"] for c in init] == [["python", "-m", comp, "migrate"]]
            assert init[0]["image"] == dep["spec"]["template"]["spec"]["containers"][0]["image"]
    for dep in app_deployments(rendered_scenario("values-prod.yaml")):
        assert "initContainers" not in dep["spec"]["template"]["spec"]


def test_shutdown_fits_in_the_grace_period(objects: list[Obj]) -> None:
    """preStop pause + the service's drain (SHUTDOWN_TIMEOUT_SECONDS) end before SIGKILL."""
    for dep in app_deployments(objects):
        spec = dep["spec"]["template"]["spec"]
        c = main_container(dep)
        pause = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
        drain = float(env_of(c)["SHUTDOWN_TIMEOUT_SECONDS"]["value"])
        assert pause + drain < spec["terminationGracePeriodSeconds"], dep["metadata"]["name"]


def test_identity_trusts_forwarded_addresses_only_from_configured_proxies(
    render_values: Callable[[dict[str, Any]], list[Obj]],
) -> None:
    values = {
        **SCENARIOS["minimal"],
        "identity": {"trustedProxies": ["10.42.0.0/16", "10.43.0.10"]},
    }
    identity = next(d for d in app_deployments(render_values(values)) if component(d) == "identity")
    c = main_container(identity)
    assert env_of(c)["IDENTITY_TRUSTED_PROXIES"]["value"] == "10.42.0.0/16,10.43.0.10"
    dev = next(d for d in app_deployments(rendered_scenario("values-dev.yaml")) if component(d) == "identity")
    assert "IDENTITY_TRUSTED_PROXIES" not in env_of(dev["spec"]["template"]["spec"]["containers"][0])


def test_image_pull_secrets_reach_every_pod(
    render_values: Callable[[dict[str, Any]], list[Obj]],
) -> None:
    values = {
        **SCENARIOS["minimal"],
        "global": {"imagePullSecrets": ["registry-a"]},
        "image": {"pullSecrets": ["registry-b"]},
        "postgresql": {"enabled": True},
        "redis": {"enabled": True},
    }
    pods = list(workloads(render_values(values)))
    assert len(pods) == 9  # five services, migrations, PostgreSQL, Redis, the helm test pod
    for obj, spec in pods:
        assert spec["imagePullSecrets"] == [{"name": "registry-a"}, {"name": "registry-b"}], obj["kind"]
    for _obj, spec in workloads(rendered_scenario("values-prod.yaml")):
        assert "imagePullSecrets" not in spec


def test_cors_allows_no_other_origin_unless_configured() -> None:
    """The SPA is served by the gateway itself: no cross-origin caller unless named."""
    objects = rendered_scenario("values-prod.yaml")
    gateway = next(d for d in app_deployments(objects) if component(d) == "gateway")
    c = main_container(gateway)
    assert env_of(c)["CORS_ORIGINS"]["value"] == ""


# --- Bitnami-style extension points ------------------------------------------------------------


def test_extension_points_reach_the_pods_and_policies() -> None:
    """Every extension point of values (scenario prod+extensions) ends up where a platform team
    expects it; the restricted Pod Security Standard still holds for the added containers."""
    from tests.packaging.support import EXTENSIONS

    objects = rendered_scenario("prod+extensions")
    ext = EXTENSIONS["timesheets"]
    dep = next(d for d in app_deployments(objects) if component(d) == "timesheets")
    template = dep["spec"]["template"]
    spec = template["spec"]
    assert template["metadata"]["annotations"]["example.com/team"] == "timesheets"
    assert template["metadata"]["labels"]["example.com/cost-centre"] == "cc-42"
    assert "example.com/cost-centre" not in dep["spec"]["selector"]["matchLabels"], "selectors never change"
    assert spec["nodeSelector"] == ext["nodeSelector"]
    assert spec["tolerations"] == ext["tolerations"]
    assert spec["affinity"] == ext["affinity"]
    assert spec["priorityClassName"] == "timesheets-high"
    c = main_container(dep)
    assert c["envFrom"] == [{"secretRef": {"name": "timesheets-extra-env"}}]
    assert {"name": "extra-config", "mountPath": "/etc/extra", "readOnly": True} in c["volumeMounts"]
    assert {"name": "extra-config", "configMap": {"name": "timesheets-extra"}} in spec["volumes"]
    assert [i["name"] for i in spec["initContainers"]] == ["wait-for-vault"]
    assert [x["name"] for x in spec["containers"]] == ["timesheets", "log-shipper"]
    for added in (spec["initContainers"][0], spec["containers"][1]):
        assert added["securityContext"]["allowPrivilegeEscalation"] is False, "restricted by default"
    # the component's migration container reads the same extra environment
    (job,) = by_kind(objects, "Job")
    migrate = next(
        m for m in containers(job["spec"]["template"]["spec"]) if m["name"] == "migrate-timesheets"
    )
    assert migrate["envFrom"] == [{"secretRef": {"name": "timesheets-extra-env"}}]
    gateway = next(d for d in app_deployments(objects) if component(d) == "gateway")
    assert main_container(gateway)["envFrom"] == [{"secretRef": {"name": "gateway-extra-env"}}]
    approvals = next(d for d in app_deployments(objects) if component(d) == "approvals")
    assert "envFrom" not in main_container(approvals)
    for comp in ("gateway", "timesheets", "audit"):
        policy = policy_for(objects, comp)["spec"]
        assert EXTENSIONS["networkPolicy"]["extraIngress"][0] in policy["ingress"]
        assert EXTENSIONS["networkPolicy"]["extraEgress"][0] in policy["egress"]


def test_an_added_container_keeps_its_own_security_context(
    render_values: Callable[[dict[str, Any]], list[Obj]],
) -> None:
    own = {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": False}
    values = {
        **SCENARIOS["minimal"],
        "audit": {"sidecars": [{"name": "agent", "image": "example/agent:1.0", "securityContext": own}]},
    }
    audit = next(d for d in app_deployments(render_values(values)) if component(d) == "audit")
    agent = next(c for c in audit["spec"]["template"]["spec"]["containers"] if c["name"] == "agent")
    assert agent["securityContext"] == own


@pytest.mark.parametrize(
    ("bad", "complaint"),
    [
        ({"timesheets": {"extraVolumes": [{"configMap": {"name": "x"}}]}}, "/timesheets/extraVolumes/0"),
        ({"timesheets": {"extraVolumeMounts": [{"name": "x", "mountPath": "etc"}]}}, "mountPath"),
        ({"gateway": {"sidecars": [{"name": "no-image"}]}}, "/gateway/sidecars/0"),
        ({"audit": {"extraEnvVarsSecret": "Not_A_Name"}}, "/audit/extraEnvVarsSecret"),
        ({"networkPolicy": {"extraEgress": [{"too": []}]}}, "too"),
    ],
)
def test_the_schema_checks_the_extension_points(bad: dict[str, Any], complaint: str) -> None:
    import helm_python as helm

    from tests.packaging.support import CHART, deep_merge

    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError) as refused:
        chart.validate_schema(deep_merge(SCENARIOS["minimal"], bad))
    assert complaint in str(refused.value)


def test_production_believes_forwarded_headers_from_the_ingress_controller_only() -> None:
    """Behind the Ingress the gateway must know the controller's addresses, or the audit trail and
    the rate limits see the controller instead of the client."""
    from tests.packaging.support import render_notes

    gateway = next(
        d for d in app_deployments(rendered_scenario("values-prod.yaml")) if component(d) == "gateway"
    )
    proxies = env_of(main_container(gateway))["GATEWAY_TRUSTED_PROXIES"]["value"].split(",")
    assert proxies
    assert "0.0.0.0/0" not in proxies
    assert "trustedProxies is empty" not in render_notes(SCENARIOS["values-prod.yaml"])
    assert "trustedProxies is empty" in render_notes(SCENARIOS["dev+everything"])


# --- helm test -----------------------------------------------------------------------------------


def test_helm_test_checks_every_readyz_and_an_unauthenticated_api_call(objects: list[Obj]) -> None:
    pods = [o for o in by_kind(objects, "Pod") if o["metadata"]["annotations"].get("helm.sh/hook") == "test"]
    (pod,) = pods
    (c,) = pod["spec"]["containers"]
    env = env_of(c)
    components = {component(d) for d in app_deployments(objects)}
    assert sorted(env["READY_URLS"]["value"].split()) == sorted(
        f"http://ts-timesheets-{comp}:{CONTRACT_PORTS[comp]}/readyz" for comp in components
    )
    assert env["API_URL"]["value"] == "http://ts-timesheets-gateway:8080/api/timesheets"
    assert "exc.code != 401" in c["command"][2]
    assert "Bearer" in c["command"][2]
    assert pod["spec"]["restartPolicy"] == "Never"
    assert "hook-succeeded" in pod["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
    # it may reach what it checks, through the NetworkPolicies
    for comp in components:
        http_rules = [
            r for r in policy_for(objects, comp)["spec"]["ingress"] if r["ports"][0]["port"] == "http"
        ]
        if http_rules and "from" in http_rules[0]:
            assert "helm-test" in peers(http_rules, "from"), comp
    egress = policy_for(objects, "helm-test")["spec"]["egress"]
    assert peers(egress, "to") == components


def test_the_helm_test_script_runs_and_fails_when_a_component_is_not_ready(tmp_path: Path) -> None:
    """The pod's script itself, against two tiny servers: one ready, one not; an API answering 401
    with a Bearer challenge. It must pass only when everything is as expected."""
    import subprocess
    import sys
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/readyz":
                self.send_response(200 if self.server.server_port == ready.server_port else 503)  # type: ignore[attr-defined]
            else:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Bearer realm="api"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return

    ready = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    broken = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    for server in (ready, broken):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        (pod,) = [o for o in rendered_scenario("values-dev.yaml") if o["kind"] == "Pod"]
        script = pod["spec"]["containers"][0]["command"][2]

        def run(ready_urls: list[str]) -> subprocess.CompletedProcess[str]:
            env = {
                "READY_URLS": " ".join(ready_urls),
                "API_URL": f"http://127.0.0.1:{ready.server_port}/api/timesheets",
                "PATH": "/usr/bin:/bin",
            }
            return subprocess.run(
                [sys.executable, "-c", script],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )

        good = run([f"http://127.0.0.1:{ready.server_port}/readyz"])
        assert good.returncode == 0, good.stdout + good.stderr
        assert "all checks passed" in good.stdout
        bad = run(
            [f"http://127.0.0.1:{ready.server_port}/readyz", f"http://127.0.0.1:{broken.server_port}/readyz"]
        )
        assert bad.returncode == 1
        assert f"not ready: http://127.0.0.1:{broken.server_port}/readyz" in bad.stdout
    finally:
        for server in (ready, broken):
            server.shutdown()
            server.server_close()


def test_no_two_components_share_a_redis_credential(scenario: str, objects: list[Obj]) -> None:
    """No key shared beyond the parties that need it (DESIGN.md), yet every component gets the
    same REDIS_URL, and the bundled Redis knows one password (``--requirepass``: the default user,
    every command on every key). A compromised timesheets, approvals or audit pod can then write
    what the gateway and the identity provider rely on: the revocation stream
    (tests/revocation/test_propagation.py::test_a_redis_writer_cannot_silence_revocations: revoked
    tokens keep passing), the sign-in throttle's counters, the rate-limit counters, the DPoP ``jti``
    memory; or end Redis for all (CONFIG SET requirepass, FLUSHALL, SHUTDOWN). As with the database
    (a role per service), each component needs a Redis user of its own, limited by ACL to its own
    keys and the commands it uses."""
    credentials: dict[tuple[str, str], list[str]] = {}
    for dep in app_deployments(objects):
        env = env_of(main_container(dep))
        if "REDIS_URL" in env:
            ref = env["REDIS_URL"]["valueFrom"]["secretKeyRef"]
            credentials.setdefault((ref["name"], ref["key"]), []).append(component(dep))
    shared = {f"{name}/{key}": users for (name, key), users in credentials.items() if len(users) > 1}
    assert shared == {}


def start_bound(container: Obj) -> float:
    """WORKER_START_SECONDS as the container's process reads it: the chart's value, else the kit's
    default (the chart gives the variable to the gateway alone)."""
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    return float(env.get("WORKER_START_SECONDS") or WORKER_START_SECONDS)


def test_the_startup_probe_outlasts_a_starts_own_bound(objects: list[Obj]) -> None:
    """A hung import ends with one line saying where it hung (svckit.appimport, the fork server's
    watchdog) only if the kubelet has not killed the container first: the startup probe's budget (from
    the container's start) exceeds the bound (from the imports' start) with room for the interpreter's
    start and the line (chart 0.14.0; before, both were 60 s)."""
    deployments = app_deployments(objects)
    assert deployments
    for dep in deployments:
        (c,) = [c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == component(dep)]
        probe = c["startupProbe"]
        budget = probe["periodSeconds"] * probe["failureThreshold"]
        assert budget > start_bound(c) + 10, (dep["metadata"]["name"], budget, start_bound(c))


@pytest.mark.parametrize(
    "values",
    [
        {"probes": {"startup": {"failureThreshold": 30}}},  # 60 s: the bound's default, no room
        {"gateway": {"workerStartSeconds": 90}},  # the gateway's bound past the default budget (90 s)
        # another component's bound, given through its env (the chart sets it for the gateway alone)
        {"audit": {"env": {"WORKER_START_SECONDS": "85"}}},
    ],
    ids=["budget-at-the-default-bound", "gateway-bound-past-the-budget", "audit-env-bound-past-the-budget"],
)
def test_a_startup_budget_within_the_start_bound_is_refused(values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmError) as refused:
        render(deep_merge(MINIMAL, values))
    assert "probes.startup: periodSeconds x failureThreshold" in str(refused.value)
    if "audit" in values:  # the message names the value to look at
        assert "(85 s: audit.env.WORKER_START_SECONDS)" in str(refused.value)
    assert "raise probes.startup.failureThreshold" in str(refused.value)
    # with room for the start, the same bound renders
    assert app_deployments(
        render(deep_merge(MINIMAL, {**values, "probes": {"startup": {"failureThreshold": 60}}}))
    )


def test_a_start_bound_of_the_provider_not_run_is_not_held_against_the_budget() -> None:
    """With an external authorization server (``identity.enabled: false``) the bundled provider's
    values are left over, not a pod: its ``env`` bound does not refuse the release."""
    values = {"identity": {"enabled": False, "env": {"WORKER_START_SECONDS": "85"}}}
    assert "identity" not in {component(d) for d in app_deployments(render(deep_merge(MINIMAL, values)))}
    with pytest.raises(helm.HelmError, match=r"85 s: identity\.env\.WORKER_START_SECONDS"):
        render(deep_merge(MINIMAL, {"identity": {"env": {"WORKER_START_SECONDS": "85"}}}))
