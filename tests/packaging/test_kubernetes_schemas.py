"""Every rendered object is valid for the oldest and the newest Kubernetes the chart supports.

Strict mode of ``kubernetes-validate`` refuses unknown fields, so a misspelt key fails here instead
of being silently dropped by the API server. The Prometheus Operator kinds (ServiceMonitor,
PrometheusRule) are not in that package: they are validated, just as strictly, against JSON schemas
derived from the operator's CRDs through ``cloudcoil-models-prometheus-operator`` (pydantic models
generated from the CRDs, a locked dev dependency), made strict here (see :func:`strict`).
"""

from __future__ import annotations

import functools
from typing import Any

import jsonschema
import kubernetes_validate
import kubernetes_validate.utils
import pytest
import yaml
from pydantic import BaseModel

from tests.packaging.support import CHART, MINIMAL, Obj, deep_merge, render

# The package re-reads and re-parses its (multi-megabyte) definitions file for every object; the
# files never change, so memoise the reads — same results, a fraction of the time.
kubernetes_validate.utils.schema_contents = functools.lru_cache(maxsize=None)(
    kubernetes_validate.utils.schema_contents
)

OLDEST = "1.29"
NEWEST = "1.37"
#: the operator's kinds the chart renders, and their models' names in the package's monitoring v1 module
OPERATOR_KINDS: dict[tuple[str, str], str] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "ServiceMonitor",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "PrometheusRule",
}


def operator_model(kind: tuple[str, str]) -> type[BaseModel]:
    """The pydantic model of an operator kind. Imported here, not at the top: the package builds
    ~4,000 models on import (~3 s of CPU), which every pytest-xdist worker would otherwise spend
    collecting this file, before any test starts, and only the worker running it needs."""
    from cloudcoil.models.prometheus_operator import v1 as monitoring_v1

    model: type[BaseModel] = getattr(monitoring_v1, OPERATOR_KINDS[kind])
    return model


def strict(schema: Any) -> Any:
    """Refuse unknown fields wherever the CRD lists an object's fields, as the API server's strict
    field validation (``kubectl apply --validate=strict``) does; free-form maps (labels,
    annotations: ``additionalProperties`` already given) stay free-form. Optional fields
    (pydantic's ``anyOf: [S, null]``) become ``S``, so that an error names the offending field
    instead of "not valid under any of the given schemas"."""
    if isinstance(schema, dict):
        options = schema.get("anyOf")
        if isinstance(options, list) and len(options) == 2 and {"type": "null"} in options:
            rest = {k: v for k, v in schema.items() if k not in {"anyOf", "default"}}
            schema = {**rest, **next(o for o in options if o != {"type": "null"})}
        schema = {key: strict(value) for key, value in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


@functools.cache
def operator_validator(kind: tuple[str, str]) -> jsonschema.Draft202012Validator:
    # No check_schema: the CRDs' patterns are Go (RE2) expressions; every one the chart's objects
    # meet is also a valid Python expression.
    schema = operator_model(kind).model_json_schema(by_alias=True, mode="validation")
    return jsonschema.Draft202012Validator(strict(schema))


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
