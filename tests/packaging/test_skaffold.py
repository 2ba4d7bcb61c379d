"""skaffold.yaml builds every image from the one Dockerfile (SERVICE build argument) and deploys the
chart with the dev values (prod in its profile); in the dev profile edited Python sources are synced
into the running pods; and what it sets on the chart is accepted by the chart."""

from __future__ import annotations

import json
import re
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.packaging.support import CHART, REPO, Obj, deep_merge, load_values, parse_manifests

SERVICES = ("gateway", "identity", "timesheets", "approvals", "audit")


def skaffold() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "skaffold.yaml").read_text())
    return data


def release(config: dict[str, Any]) -> dict[str, Any]:
    (rel,) = config["deploy"]["helm"]["releases"]
    result: dict[str, Any] = rel
    return result


def profile(name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(p for p in skaffold()["profiles"] if p["name"] == name)
    return found


def template_name(image: str) -> str:
    """Skaffold's variable suffix for an image: every non-alphanumeric character becomes '_'."""
    return re.sub(r"[^A-Za-z0-9]", "_", image)


def test_one_artifact_per_service_built_from_the_one_dockerfile() -> None:
    config = skaffold()
    assert config["apiVersion"].startswith("skaffold/v4")
    artifacts = {a["image"]: a for a in config["build"]["artifacts"]}
    assert set(artifacts) == {f"abc-inc/timesheets-{s}" for s in SERVICES}
    for service in SERVICES:
        artifact = artifacts[f"abc-inc/timesheets-{service}"]
        assert artifact["context"] == "."
        docker = artifact["docker"]
        assert docker["dockerfile"] == "Dockerfile"
        assert (REPO / docker["dockerfile"]).exists()
        args = docker["buildArgs"]
        assert args["SERVICE"] == service
        assert args["VERSION"] == "{{.IMAGE_TAG}}", "the OCI version label is the image's tag"
        assert ".REVISION" in args["REVISION"], "the OCI revision label from REVISION (git rev-parse HEAD)"
    dockerfile = (REPO / "Dockerfile").read_text()
    for arg in ("SERVICE", "VERSION", "REVISION"):
        assert re.search(rf"^ARG {arg}\b", dockerfile, re.M), arg


def apply_patches(config: dict[str, Any], patches: list[dict[str, Any]]) -> dict[str, Any]:
    """JSON-patch ``add`` operations, as skaffold applies a profile's patches."""
    import copy

    result = copy.deepcopy(config)
    for patch in patches:
        assert patch["op"] == "add"
        *parents, leaf = [p.replace("~1", "/").replace("~0", "~") for p in patch["path"].split("/")[1:]]
        node: Any = result
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[leaf] = patch["value"]
    return result


def test_dev_profile_syncs_python_sources_into_the_running_pods() -> None:
    """skaffold dev copies an edited .py file into /opt/dev-app of the pods (the chart's
    devMode.sourceSync makes that a writable copy of the image's /opt/app, which the service runs and
    watches); every package an image holds is covered, and nothing else is synced."""
    dev = apply_patches(skaffold(), profile("dev")["patches"])
    for artifact in dev["build"]["artifacts"]:
        service = artifact["docker"]["buildArgs"]["SERVICE"]
        rules = {(r["src"], r["dest"], r["strip"]) for r in artifact["sync"]["manual"]}
        assert rules == {
            ("services/kit/svckit/**/*.py", "/opt/dev-app/svckit", "services/kit/svckit/"),
            (
                f"services/{service}/{service}/**/*.py",
                f"/opt/dev-app/{service}",
                f"services/{service}/{service}/",
            ),
        }
    assert release(dev)["setValues"]["devMode.sourceSync"] is True
    assert "sync" not in json.dumps(skaffold()["build"]), "only the dev profile syncs"
    objects = render_as_skaffold("dev")
    for dep in [o for o in objects if o["kind"] == "Deployment"]:
        comp = dep["metadata"]["labels"]["app.kubernetes.io/component"]
        if comp not in SERVICES:
            continue
        spec = dep["spec"]["template"]["spec"]
        (init,) = [c for c in spec["initContainers"] if c["name"] == "dev-source"]
        assert init["command"] == ["cp", "-a", "/opt/app/.", "/opt/dev-app/"]
        main = next(c for c in spec["containers"] if c["name"] == comp)
        env = {e["name"]: e.get("value") for e in main["env"]}
        assert env["PYTHONPATH"] == "/opt/dev-app"
        assert env["DEV_RELOAD"] == "true"
        assert {"name": "dev-app", "mountPath": "/opt/dev-app"} in main["volumeMounts"]
        assert main["securityContext"]["readOnlyRootFilesystem"] is True, "the copy is a volume"
    prod = [o for o in render_as_skaffold("prod") if o["kind"] == "Deployment"]
    assert not [d for d in prod if "dev-app" in json.dumps(d)]


@pytest.mark.parametrize(("name", "values_file"), [("dev", "values-dev.yaml"), ("prod", "values-prod.yaml")])
def test_profiles_deploy_the_chart_with_their_values(name: str, values_file: str) -> None:
    rel = release(profile(name)) if "deploy" in profile(name) else release(skaffold())
    assert (REPO / rel["chartPath"]).resolve() == CHART.resolve()
    assert rel["valuesFiles"] == [f"deploy/helm/{values_file}"]
    assert (REPO / rel["valuesFiles"][0]).exists()
    templates = rel["setValueTemplates"]
    for service in SERVICES:
        suffix = template_name(f"abc-inc/timesheets-{service}")
        assert templates[f"{service}.image.repository"] == f"{{{{.IMAGE_REPO_{suffix}}}}}"
        assert templates[f"{service}.image.tag"] == f"{{{{.IMAGE_TAG_{suffix}}}}}"
        if name == "prod":
            assert templates[f"{service}.image.digest"] == f"{{{{.IMAGE_DIGEST_{suffix}}}}}"


def test_dev_is_the_default_and_prod_pushes() -> None:
    assert {"command": "dev"} in profile("dev")["activation"]
    assert profile("prod")["build"]["local"]["push"] is True


def render_as_skaffold(profile_name: str) -> list[Obj]:
    config = apply_patches(skaffold(), profile(profile_name).get("patches", []))
    rel = release(profile(profile_name)) if "deploy" in profile(profile_name) else release(config)
    values = load_values(rel["valuesFiles"][0].rsplit("/", 1)[1])
    sets: dict[str, Any] = {}
    for key, template in {**rel.get("setValues", {}), **rel["setValueTemplates"]}.items():
        value: Any = str(template)
        value = re.sub(r"\{\{\.IMAGE_REPO_(\w+)\}\}", "registry.local:5000/abc-inc/img", value)
        value = value.replace("{{", "").replace("}}", "")
        if ".IMAGE_TAG_" in value:
            value = "3f9c2ab-dirty"
        if ".IMAGE_DIGEST_" in value:
            value = "sha256:" + "ab" * 32
        if isinstance(template, bool):
            value = template  # `--set key=true` is a boolean to Helm
        node = sets
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    merged = deep_merge(values, sets)
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(merged, name=rel["name"], namespace=rel["namespace"], is_install=True)
    return parse_manifests(rendered)


@pytest.mark.parametrize("profile_name", ["dev", "prod"])
def test_the_chart_accepts_what_skaffold_sets(profile_name: str) -> None:
    objects = render_as_skaffold(profile_name)
    images = {
        c["image"]
        for o in objects
        if o["kind"] == "Deployment"
        for c in o["spec"]["template"]["spec"]["containers"]
        if o["metadata"]["labels"]["app.kubernetes.io/component"] in SERVICES
    }
    expected = (
        {"registry.local:5000/abc-inc/img@sha256:" + "ab" * 32}
        if profile_name == "prod"
        else {"registry.local:5000/abc-inc/img:3f9c2ab-dirty"}
    )
    assert images == expected


def test_port_forwards_point_at_rendered_services() -> None:
    objects = render_as_skaffold("dev")
    services = {
        (o["metadata"]["name"], o["metadata"]["namespace"]): {p["port"] for p in o["spec"]["ports"]}
        for o in objects
        if o["kind"] == "Service"
    }
    forwards = skaffold()["portForward"]
    assert {f["localPort"] for f in forwards} == {8080, 9000}
    for forward in forwards:
        assert forward["resourceType"] == "service"
        assert forward["port"] in services[(forward["resourceName"], forward["namespace"])]
    assert profile("prod")["portForward"] == []
