"""skaffold.yaml builds every image with its Dockerfile and deploys the chart with the dev values
(prod in its profile), and what it sets on the chart is accepted by the chart."""

from __future__ import annotations

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


def test_one_artifact_per_service_built_from_its_dockerfile() -> None:
    config = skaffold()
    assert config["apiVersion"].startswith("skaffold/v4")
    artifacts = {a["image"]: a for a in config["build"]["artifacts"]}
    assert set(artifacts) == {f"abc-inc/timesheets-{s}" for s in SERVICES}
    for service in SERVICES:
        artifact = artifacts[f"abc-inc/timesheets-{service}"]
        assert artifact["context"] == "."
        dockerfile = artifact["docker"]["dockerfile"]
        assert dockerfile == f"services/{service}/Dockerfile"
        assert (REPO / dockerfile).exists()


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
    config = skaffold()
    rel = release(profile(profile_name)) if "deploy" in profile(profile_name) else release(config)
    values = load_values(rel["valuesFiles"][0].rsplit("/", 1)[1])
    sets: dict[str, Any] = {}
    for key, template in {**rel.get("setValues", {}), **rel["setValueTemplates"]}.items():
        value = str(template)
        value = re.sub(r"\{\{\.IMAGE_REPO_(\w+)\}\}", "registry.local:5000/abc-inc/img", value)
        value = value.replace("{{", "").replace("}}", "")
        if ".IMAGE_TAG_" in value:
            value = "3f9c2ab-dirty"
        if ".IMAGE_DIGEST_" in value:
            value = "sha256:" + "ab" * 32
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
