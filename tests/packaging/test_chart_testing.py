"""chart-testing's configuration: ct.yaml points at the chart, and every ci/*-values.yaml that
`ct install` installs is one of the scenarios every rendering test runs over (helm lint --strict on
two Kubernetes versions, strict schemas, Pod Security, policies, the services' own settings)."""

from __future__ import annotations

import yaml

from tests.packaging.support import CHART, REPO, SCENARIOS


def test_ct_config_names_the_chart_directory() -> None:
    config = yaml.safe_load((REPO / "ct.yaml").read_text())
    assert [(REPO / d).resolve() for d in config["chart-dirs"]] == [CHART.parent.resolve()]
    assert config["target-branch"] == "main"
    assert config["validate-chart-schema"] is True
    assert config["check-version-increment"] is True


def test_every_ci_values_file_is_a_rendering_scenario() -> None:
    files = sorted(p.name for p in (CHART / "ci").glob("*-values.yaml"))
    assert len(files) >= 2
    assert {f"ci/{name}" for name in files} <= set(SCENARIOS)
    assert "ci/" in (CHART / ".helmignore").read_text().split(), "ci/ stays out of the packaged chart"


def test_ci_installs_are_self_contained() -> None:
    """`ct install` runs on a bare cluster: the demo databases and the bundled provider, no Secret to
    create first, no Prometheus Operator CRDs needed."""
    for name in sorted(p.name for p in (CHART / "ci").glob("*-values.yaml")):
        values = SCENARIOS[f"ci/{name}"]
        assert values["postgresql"]["enabled"] is True, name
        assert values["redis"]["enabled"] is True, name
        assert values.get("identity", {}).get("enabled", True), name
        monitoring = values.get("metrics", {})
        assert not monitoring.get("serviceMonitor", {}).get("enabled"), name
        assert not monitoring.get("prometheusRule", {}).get("enabled"), name
