"""The chart renders and lints with the real Helm engine, and its values schema refuses bad values."""

from __future__ import annotations

from pathlib import Path

import helm_python as helm
import pytest

from tests.packaging.support import (
    CHART,
    MINIMAL,
    SCENARIOS,
    Obj,
    deep_merge,
    parse_manifests,
    render,
    render_notes,
)

LINT_KUBE_VERSIONS = ("v1.29.0", "v1.37.0")


@pytest.mark.parametrize("kube_version", LINT_KUBE_VERSIONS)
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_helm_lint_strict_is_clean(name: str, kube_version: str) -> None:
    report = helm.lint(CHART, SCENARIOS[name], strict=True, kube_version=kube_version)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [], report["errors"]
    assert problems == [], problems


def test_every_scenario_renders_objects_with_names_and_namespace(objects: list[Obj]) -> None:
    assert objects
    for obj in objects:
        assert obj["apiVersion"], obj["__template__"]
        assert obj["kind"], obj["__template__"]
        name = obj["metadata"]["name"]
        assert len(name) <= 63, name
        assert name.startswith("ts-"), name
        if obj["kind"] not in {"ServiceMonitor", "PrometheusRule", "ConfigMap"}:
            assert obj["metadata"]["namespace"] == "timesheets"


def test_object_names_are_unique_per_kind(objects: list[Obj]) -> None:
    seen = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(seen) == len(set(seen)), sorted(seen)


@pytest.mark.parametrize(
    ("bad", "complaint"),
    [
        ({"gateway": {"replicaCount": "two"}}, "/gateway/replicaCount"),
        ({"timesheets": {"autoscaling": {"maxReplicas": "10"}}}, "/timesheets/autoscaling/maxReplicas"),
        ({"config": {"dbPoolMax": 0}}, "/config/dbPoolMax"),
        ({"bogus": True}, "additional properties 'bogus'"),
        ({"gateway": {"bogus": True}}, "additional properties 'bogus'"),
        ({"audit": {"image": {"tag": "latest"}}}, "/audit/image/tag"),
        ({"gateway": {"image": {"digest": "sha256:nothex"}}}, "/gateway/image/digest"),
        ({"containerSecurityContext": {"allowPrivilegeEscalation": True}}, "allowPrivilegeEscalation"),
        ({"podSecurityContext": {"runAsNonRoot": False}}, "runAsNonRoot"),
        ({"containerSecurityContext": {"capabilities": {"drop": ["NET_RAW"]}}}, "capabilities/drop"),
        ({"gateway": {"resources": {"requests": {"cpu": "lots"}}}}, "/gateway/resources/requests/cpu"),
        ({"gateway": {"resources": {"limits": None}}}, "/gateway/resources"),
        ({"config": {"logLevel": "verbose"}}, "/config/logLevel"),
        ({"oidc": {"issuers": ["not a url"]}}, "/oidc/issuers/0"),
        ({"oidc": {"issuers": ["https://YOUR_TENANT.eu.auth0.com/"]}}, "/oidc/issuers/0"),
        ({"oidc": {"issuers": ["https://TENANT.auth0.com/"]}}, "/oidc/issuers/0"),
        ({"oidc": {"audience": "<your API identifier>"}}, "/oidc/audience"),
        ({"oidc": {"audience": "https://REPLACE-ME/api"}}, "/oidc/audience"),
        ({"gateway": {"spa": {"clientId": "REPLACE-WITH-AUTH0-SPA-CLIENT-ID"}}}, "/gateway/spa/clientId"),
        ({"gateway": {"spa": {"clientId": "<client-id>"}}}, "/gateway/spa/clientId"),
        ({"gateway": {"spa": {"clientId": "changeme"}}}, "/gateway/spa/clientId"),
        ({"gateway": {"spa": {"clientId": "{{ .Values.id }}"}}}, "/gateway/spa/clientId"),
        ({"metrics": {"serviceMonitor": {"interval": 30}}}, "/metrics/serviceMonitor/interval"),
        ({"networkPolicy": {"egress": {"databasePort": 70000}}}, "databasePort"),
        ({"identity": {"trustedProxies": ["everyone"]}}, "/identity/trustedProxies/0"),
        ({"gateway": {"dpop": {"policy": "sometimes"}}}, "/gateway/dpop/policy"),
        ({"gateway": {"issuers": {"https://login.example.com/": {"dpop": "maybe"}}}}, "dpop"),
        ({"externalDatabase": {"sslMode": "strict"}}, "/externalDatabase/sslMode"),
        (
            {"externalDatabase": {"caBundle": {"secretName": "a", "configMapName": "b"}}},
            "/externalDatabase/caBundle",
        ),
        (
            {"externalRedis": {"caBundle": {"secretName": "a", "configMapName": "b"}}},
            "/externalRedis/caBundle",
        ),
        ({"externalRedis": {"tlsVerify": "none"}}, "/externalRedis/tlsVerify"),
    ],
)
def test_values_schema_refuses_bad_values(bad: dict[str, object], complaint: str) -> None:
    values = deep_merge(MINIMAL, bad)
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError) as refused:
        chart.validate_schema(values)
    assert complaint in str(refused.value)
    with pytest.raises(helm.HelmValuesError):
        render(values)


@pytest.mark.parametrize(
    "client_id", ["timesheets-spa", "5kQ2vXr9TmB7yLw3NcZ8pJd4HsA6fGe1", "0oa1b2c3d4E5F6g7H8i9", "spa.prod"]
)
def test_real_client_ids_pass_the_placeholder_check(client_id: str) -> None:
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(deep_merge(MINIMAL, {"gateway": {"spa": {"clientId": client_id}}}))


def test_values_schema_accepts_every_shipped_values_file() -> None:
    with helm.Chart.load(CHART) as chart:
        for values in SCENARIOS.values():
            chart.validate_schema(values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"oidc": {"issuers": ["https://a.example/"]}}, "externalDatabase.existingSecret"),
        (
            {"externalDatabase": MINIMAL["externalDatabase"], "externalRedis": MINIMAL["externalRedis"]},
            "oidc.issuers",
        ),
        (
            {
                "oidc": MINIMAL["oidc"],
                "externalDatabase": {"existingSecret": "db"},
                "externalRedis": MINIMAL["externalRedis"],
            },
            "set externalDatabase.host and externalDatabase.database",
        ),
        (deep_merge(MINIMAL, {"gateway": {"image": {"tag": "latest"}}}), "/gateway/image/tag"),
        # without a Redis the API services refuse every write while /readyz stays 200 (reads go on):
        # a release that installs "healthy" and cannot take a timesheet
        (
            {"oidc": MINIMAL["oidc"], "externalDatabase": MINIMAL["externalDatabase"]},
            "set redis.enabled=true (demo) or externalRedis.existingSecret",
        ),
    ],
)
def test_incomplete_values_fail_with_a_message_naming_the_value(
    values: dict[str, object], message: str
) -> None:
    with pytest.raises(helm.HelmError) as failed:
        render(values)
    assert message in str(failed.value)


def test_latest_is_refused_by_the_template_too_when_schema_is_bypassed() -> None:
    """The schema forbids 'latest'; the image helper refuses it as well (defence in depth)."""
    with helm.Chart.load(CHART) as chart:
        sources = {t["name"]: t["data"] for t in chart.templates}
    assert "image tag 'latest' is not allowed" in sources["templates/_helpers.tpl"]


def test_notes_tell_how_to_reach_the_app_and_where_secrets_are() -> None:
    notes = render_notes(SCENARIOS["values-dev.yaml"])
    assert "port-forward svc/ts-timesheets-gateway 8080:8080" in notes
    assert "ts-timesheets-generated" in notes
    assert "demo pod" in notes
    prod_notes = render_notes(SCENARIOS["values-prod.yaml"])
    assert "https://timesheets.abc.example/" in prod_notes
    assert "timesheets-app" in prod_notes


def test_packaged_chart_renders_like_the_directory(tmp_path: Path) -> None:
    """`helm package` keeps everything the templates read (files/, schema) and nothing else."""
    archive = helm.package(CHART, destination=tmp_path)
    with helm.Chart.load(archive) as packaged:
        names = {f["name"] for f in packaged.files}
        rendered = packaged.render(
            SCENARIOS["dev+everything"], name="ts", namespace="timesheets", is_install=True
        )
        assert packaged.schema is not None
    assert "files/prometheus/timesheets-alerts.yml" in names
    assert "files/grafana/timesheets-overview.json" in names
    assert not [n for n in names if n.endswith((".py", ".pyc")) or "__pycache__" in n]
    from_archive = {
        (o["kind"], o["metadata"]["name"]) for o in parse_manifests(rendered) if o["kind"] != "Secret"
    }
    from_dir = {
        (o["kind"], o["metadata"]["name"])
        for o in render(SCENARIOS["dev+everything"])
        if o["kind"] != "Secret"
    }
    assert from_archive == from_dir
