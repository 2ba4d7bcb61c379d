"""Every rendered object is valid for the oldest and the newest Kubernetes the chart supports.

Strict mode of ``kubernetes-validate`` refuses unknown fields, so a misspelt key fails here instead
of being silently dropped by the API server. Prometheus Operator kinds have no schema in that
package; their shape is checked by test_policies and test_monitoring.
"""

from __future__ import annotations

import functools

import kubernetes_validate
import kubernetes_validate.utils
import pytest
import yaml

from tests.packaging.support import CHART, Obj

# The package re-reads and re-parses its (multi-megabyte) definitions file for every object; the
# files never change, so memoise the reads — same results, a fraction of the time.
kubernetes_validate.utils.schema_contents = functools.lru_cache(maxsize=None)(
    kubernetes_validate.utils.schema_contents
)

OLDEST = "1.29"
NEWEST = "1.37"
OPERATOR_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}


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
