"""Every rendered object is valid for the oldest and the newest Kubernetes the chart supports.

Strict mode of ``kubernetes-validate`` refuses unknown fields, so a misspelt key fails here instead
of being silently dropped by the API server. The Prometheus Operator kinds (ServiceMonitor,
PrometheusRule) are not in that package: they are validated, just as strictly, against the JSON
schemas of their CRDs vendored under ``schemas/`` (source and licence in ``schemas/README.md``).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import kubernetes_validate.utils
import pytest
import yaml

from tests.packaging.support import CHART, MINIMAL, Obj, deep_merge, render

# The package re-reads and re-parses its (multi-megabyte) definitions file for every object; the
# files never change, so memoise the reads — same results, a fraction of the time.
kubernetes_validate.utils.schema_contents = functools.lru_cache(maxsize=None)(
    kubernetes_validate.utils.schema_contents
)

OLDEST = "1.29"
NEWEST = "1.37"
SCHEMAS = Path(__file__).parent / "schemas"
OPERATOR_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SCHEMAS
    / "monitoring.coreos.com"
    / "servicemonitor_v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): SCHEMAS
    / "monitoring.coreos.com"
    / "prometheusrule_v1.json",
}


@functools.cache
def operator_validator(kind: tuple[str, str]) -> jsonschema.Draft7Validator:
    # No check_schema: the CRDs' patterns are Go (RE2) expressions, and one of them
    # (partial_response_strategy's inline "(?i)") is not a Python one; the chart never sets that field.
    return jsonschema.Draft7Validator(json.loads(OPERATOR_KINDS[kind].read_text()))


def operator_errors(obj: Obj) -> list[str]:
    clean = {k: v for k, v in obj.items() if k != "__template__"}
    validator = operator_validator((clean["apiVersion"], clean["kind"]))
    return [
        f"{clean['kind']}/{clean['metadata']['name']}: {'.'.join(str(p) for p in e.path)}: {e.message}"
        for e in validator.iter_errors(clean)
    ]


def test_supported_range_matches_chart_kube_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == f">={OLDEST}.0-0"
    assert kubernetes_validate.latest_version().startswith(NEWEST)


@pytest.mark.parametrize("version", [OLDEST, NEWEST])
def test_every_object_validates_strictly(objects: list[Obj], version: str) -> None:
    errors = []
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in OPERATOR_KINDS:
            continue
        clean = {k: v for k, v in obj.items() if k != "__template__"}
        if not clean["metadata"].get("annotations"):
            clean["metadata"].pop("annotations", None)
        try:
            kubernetes_validate.validate(clean, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {path}: {exc.message}")
    assert errors == []


def test_operator_objects_validate_strictly_against_their_crd_schemas(objects: list[Obj]) -> None:
    errors = [
        e
        for obj in objects
        if (obj["apiVersion"], obj["kind"]) in OPERATOR_KINDS
        for e in operator_errors(obj)
    ]
    assert errors == []


def test_every_operator_kind_is_rendered_and_checked() -> None:
    """With every extension point in use, both kinds render and pass (relabelings, extra rules)."""
    values: dict[str, Any] = deep_merge(
        MINIMAL,
        {
            "metrics": {
                "serviceMonitor": {
                    "enabled": True,
                    "labels": {"release": "kube-prometheus-stack"},
                    "relabelings": [{"action": "replace", "targetLabel": "cluster", "replacement": "eu-1"}],
                    "metricRelabelings": [
                        {"action": "drop", "sourceLabels": ["__name__"], "regex": "python_gc_.*"}
                    ],
                },
                "prometheusRule": {
                    "enabled": True,
                    "additionalRuleLabels": {"team": "platform"},
                    "extraGroups": [
                        {
                            "name": "extra",
                            "interval": "1m",
                            "rules": [{"record": "x:up:sum", "expr": "sum(up{<<services>>})"}],
                        }
                    ],
                },
            }
        },
    )
    objects = render(values)
    kinds = {(o["apiVersion"], o["kind"]) for o in objects}
    assert set(OPERATOR_KINDS) <= kinds
    errors = [
        e
        for obj in objects
        if (obj["apiVersion"], obj["kind"]) in OPERATOR_KINDS
        for e in operator_errors(obj)
    ]
    assert errors == []


def test_crd_validation_really_refuses_misspelt_fields() -> None:
    """Guard: a misspelt endpoint or rule field must fail, as with `kubectl apply --validate=strict`."""
    monitor = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "x"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "endpoints": [{"prot": "metrics", "interval": "30s"}],
        },
    }
    assert any("'prot' was unexpected" in e for e in operator_errors(monitor))
    rule: dict[str, Any] = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "x"},
        "spec": {"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "up == 0", "fro": "5m"}]}]},
    }
    assert any("'fro' was unexpected" in e for e in operator_errors(rule))
    rule["spec"]["groups"][0]["rules"][0] = {"alert": "A", "expr": "up == 0", "for": "5 minutes"}
    assert any("does not match" in e for e in operator_errors(rule))


def test_validation_really_refuses_a_misspelt_field() -> None:
    """Guard against a validator that passes everything: strict mode must catch an unknown key."""
    bad = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"ports": [{"port": 80, "targetPort": "http", "protocl": "TCP"}]},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, NEWEST, strict=True)
