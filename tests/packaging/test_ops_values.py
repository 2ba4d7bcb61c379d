"""Values the schema accepts must not render a platform that is broken or leaks secrets into plain env."""

from __future__ import annotations

import collections
from typing import Any

import helm_python as helm
import pytest

from tests.packaging.support import CHART, MINIMAL, Obj, deep_merge, pod_spec, render


def main_containers(objects: list[Obj]) -> dict[str, Obj]:
    out = {}
    for obj in objects:
        if obj["kind"] != "Deployment":
            continue
        spec = pod_spec(obj)
        assert spec is not None
        for c in spec["containers"]:
            if c.get("command", [])[:2] == ["python", "-m"]:
                out[c["command"][2]] = c
    return out


def schema_accepts(values: dict[str, Any]) -> bool:
    with helm.Chart.load(CHART) as chart:
        try:
            chart.validate_schema(values)
        except helm.HelmValuesError:
            return False
    return True


@pytest.mark.parametrize(
    ("component", "name", "value"),
    [
        ("gateway", "PORT", "9999"),  # probes, Service and NetworkPolicy stay on the `http` port 8080
        ("timesheets", "METRICS_PORT", "9999"),  # the ServiceMonitor scrapes `metrics` (9101)
        ("audit", "DATABASE_URL", "postgresql://owner:hunter2@db.internal/timesheets"),  # a secret, inline
        ("gateway", "IDENTITY_KEYS_GATEWAY_TO_AUDIT", "k1:" + "s" * 43),  # a pair key, inline
    ],
)
def test_component_env_cannot_shadow_what_the_chart_sets(component: str, name: str, value: str) -> None:
    """`<component>.env` is for "extra plain environment variables, e.g. the service's own tuning
    settings". A name the chart already sets renders the container with that variable twice, the
    later (plain) entry winning: a PORT the probes do not probe, a METRICS_PORT the ServiceMonitor
    does not scrape, or a secret in the Deployment's plain env. The schema must refuse it."""
    values = deep_merge(MINIMAL, {component: {"env": {name: value}}})
    if not schema_accepts(values):
        return
    env = main_containers(render(values))[component]["env"]
    twice = [n for n, count in collections.Counter(e["name"] for e in env).items() if count > 1]
    pytest.fail(f"the schema accepts {component}.env.{name}; the container's env then has {twice} twice")


def test_a_render_without_redis_gives_every_api_service_a_redis_url() -> None:
    """The chart's own values say of Redis: "one of the two is needed: the API services share their
    replay memory of signed requests there and refuse writes without it". Yet the chart's minimal
    values (no redis.enabled, no externalRedis.existingSecret) render and install: timesheets,
    approvals and audit get no REDIS_URL, fall back to the default redis://127.0.0.1:6379/0 where
    nothing listens in a pod, and answer every write 503 replay_store_unavailable — while /readyz
    and `helm test` pass and NOTES.txt calls it "correct, but colder". Either the render refuses, or
    every API service gets a REDIS_URL."""
    with helm.Chart.load(CHART) as chart:
        try:
            rendered = chart.render(MINIMAL, name="ts", namespace="timesheets", is_install=True)
        except Exception:  # refused at render time, with a message: fine
            return
    notes = next(text for name, text in rendered.items() if name.endswith("NOTES.txt"))
    containers = main_containers(render(MINIMAL))
    without = sorted(
        service
        for service in ("timesheets", "approvals", "audit")
        if "REDIS_URL" not in {e["name"] for e in containers[service]["env"]}
    )
    assert without == [], (
        f"rendered without REDIS_URL for {without} (writes refused); NOTES.txt says: "
        + " ".join(line.strip() for line in notes.splitlines() if "Redis" in line or "colder" in line)
    )
