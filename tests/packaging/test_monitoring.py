"""The SRE kit: alert rules (promtool check + unit tests for every alert), runbook sections, the local
Prometheus configuration, the Grafana dashboard, and the chart objects that ship them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.packaging.support import (
    APP_COMPONENTS,
    DASHBOARD_FILE,
    PROMETHEUS_DIR,
    REPO,
    RULES_FILE,
    alerts,
    dashboard,
    dashboard_panels,
    dashboard_queries,
    load_rules,
    metric_names,
    recorded_names,
    rendered_scenario,
)

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool comes from the Debian package 'prometheus'"
)
TEST_FILE = PROMETHEUS_DIR / "tests" / "timesheets-alerts.test.yml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL
    return subprocess.run(
        [PROMTOOL, *args], cwd=REPO, capture_output=True, text=True, check=False, timeout=120
    )


@needs_promtool
def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(load_rules())} rules found" in result.stdout


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(TEST_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """Guard: with a rule's threshold changed, the unit tests must notice."""
    rules = RULES_FILE.read_text().replace(
        "max by (service) (outbox_oldest_event_age_seconds) > 300",
        "max by (service) (outbox_oldest_event_age_seconds) > 3000",
    )
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "timesheets-alerts.yml").write_text(rules)
    (tmp_path / "tests").mkdir()
    shutil.copy(TEST_FILE, tmp_path / "tests" / TEST_FILE.name)
    result = promtool("test", "rules", str(tmp_path / "tests" / TEST_FILE.name))
    assert result.returncode != 0
    assert "TimesheetsOutboxBacklogTooOld" in result.stdout + result.stderr


@needs_promtool
def test_local_prometheus_config_is_valid_and_loads_the_same_rules() -> None:
    config_path = PROMETHEUS_DIR / "prometheus-local.yml"
    result = promtool("check", "config", str(config_path))
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(config_path.read_text())
    rule_files = sorted((PROMETHEUS_DIR).glob(config["rule_files"][0]))
    assert [p.resolve() for p in rule_files] == [RULES_FILE.resolve()]
    jobs = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert jobs == {
        "gateway": ["127.0.0.1:9080"],
        "identity": ["127.0.0.1:9010"],
        "timesheets": ["127.0.0.1:9101"],
        "approvals": ["127.0.0.1:9102"],
        "audit": ["127.0.0.1:9103"],
    }


def unit_tested_alerts() -> tuple[set[str], set[str]]:
    tests = yaml.safe_load(TEST_FILE.read_text())["tests"]
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    return fired, quiet


def test_every_alert_has_a_unit_test_that_fires_it_and_one_that_keeps_it_quiet() -> None:
    names = {a["alert"] for a in alerts()}
    fired, quiet = unit_tested_alerts()
    assert names - fired == set(), "alerts never shown to fire"
    assert names - quiet == set(), "alerts never shown to stay quiet"
    assert (fired | quiet) - names == set(), "tests of alerts that do not exist"


def github_anchor(heading: str) -> str:
    slug = heading.strip().lower()
    slug = re.sub(r"[^\w\- ]", "", slug)
    return slug.replace(" ", "-")


def test_every_alert_is_documented_and_links_its_runbook_section() -> None:
    runbook = (REPO / "docs" / "runbook.md").read_text()
    anchors = {github_anchor(h) for h in re.findall(r"^#{2,3} (.+)$", runbook, re.M)}
    for alert in alerts():
        name = alert["alert"]
        annotations = alert["annotations"]
        assert annotations.get("summary"), name
        assert len(annotations.get("description", "")) > 40, name
        assert alert["labels"]["severity"] in {"critical", "warning"}, name
        url = annotations["runbook_url"]
        assert url.startswith("https://github.com/abc-inc/timesheets/blob/main/docs/runbook.md#")
        anchor = url.rsplit("#", 1)[1]
        assert anchor in anchors, f"{name}: no runbook section #{anchor}"
        assert anchor.startswith(github_anchor(re.sub(r"(Fast|Slow|CrashLooping)$", "", name)))


def test_issue_alerts_are_all_there() -> None:
    """The alerts the platform promises (issue 7), by what they watch."""
    exprs = {a["alert"]: a["expr"] for a in alerts()}
    assert 'status=~"5.."' in exprs["TimesheetsGatewayHighErrorRatio"]
    assert "by (reason)" in exprs["TimesheetsAuthFailureSpike"]
    assert "gateway_jwks_fetch_total" in exprs["TimesheetsJWKSRefreshFailing"]
    assert "gateway_jwks_key_age_seconds" in exprs["TimesheetsJWKSKeysTooOld"]
    assert "latency_slo_miss" in exprs["TimesheetsLatencySLOBurnFast"]
    assert "latency_slo_miss" in exprs["TimesheetsLatencySLOBurnSlow"]
    assert "outbox_oldest_event_age_seconds" in exprs["TimesheetsOutboxBacklogTooOld"]
    assert "audit_chain" in exprs["TimesheetsAuditChainBroken"]
    assert "process_start_time_seconds" in exprs["TimesheetsPodRestarting"]


def test_alert_job_selectors_name_the_components() -> None:
    for alert in alerts():
        for regex in re.findall(r'job=~"([^"]+)"', alert["expr"]):
            assert set(regex.split("|")) == set(APP_COMPONENTS), alert["alert"]


def test_deploy_prometheus_rules_are_the_charts_rules() -> None:
    linked = PROMETHEUS_DIR / "rules" / "timesheets-alerts.yml"
    assert linked.resolve() == RULES_FILE.resolve()


# --- chart objects ---------------------------------------------------------------------------


def test_prometheus_rule_object_carries_the_tested_rules_verbatim() -> None:
    objects = rendered_scenario("dev+everything")
    (rule,) = [o for o in objects if o["kind"] == "PrometheusRule"]
    assert rule["spec"]["groups"] == yaml.safe_load(RULES_FILE.read_text())["groups"]


def test_service_monitors_scrape_every_component_under_its_name() -> None:
    objects = rendered_scenario("dev+everything")
    monitors = [o for o in objects if o["kind"] == "ServiceMonitor"]
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    assert {m["metadata"]["labels"]["app.kubernetes.io/component"] for m in monitors} == set(APP_COMPONENTS)
    for monitor in monitors:
        spec = monitor["spec"]
        assert spec["jobLabel"] == "app.kubernetes.io/component"
        (endpoint,) = spec["endpoints"]
        assert endpoint["path"] == "/metrics"
        service = services[monitor["metadata"]["name"]]
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
        labels = service["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in spec["selector"]["matchLabels"].items())


def test_monitoring_objects_are_switchable() -> None:
    dev = rendered_scenario("values-dev.yaml")
    assert {"ServiceMonitor", "PrometheusRule"}.isdisjoint({o["kind"] for o in dev})
    assert not [o for o in dev if "grafana_dashboard" in o["metadata"]["labels"]]
    everything = rendered_scenario("dev+everything")
    kinds = [o["kind"] for o in everything]
    assert kinds.count("PrometheusRule") == 1
    assert kinds.count("ServiceMonitor") == len(APP_COMPONENTS)


def test_dashboard_config_map_carries_the_dashboard_with_the_sidecar_label() -> None:
    objects = rendered_scenario("dev+everything")
    (cm,) = [
        o for o in objects if o["kind"] == "ConfigMap" and "grafana_dashboard" in o["metadata"]["labels"]
    ]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    (content,) = cm["data"].values()
    assert json.loads(content) == json.loads(DASHBOARD_FILE.read_text())
    linked = REPO / "deploy" / "grafana" / "timesheets-overview.json"
    assert linked.resolve() == DASHBOARD_FILE.resolve()


# --- dashboard --------------------------------------------------------------------------------

REQUIRED_PANELS = {
    "traffic by route": ("gateway_requests_total", "by (route)"),
    "error ratio": ("gateway_requests_total", 'status=~"5.."'),
    "p50": ("gateway_request_duration_seconds_bucket", "histogram_quantile(0.50"),
    "p99": ("gateway_request_duration_seconds_bucket", "histogram_quantile(0.99"),
    "auth failures by reason": ("gateway_auth_failures_total", "by (reason)"),
    "JWKS cache hit ratio": ("gateway_jwks_cache_total", 'result="hit"'),
    "upstream latency per service": ("gateway_upstream_duration_seconds_bucket", "by (le, service)"),
    "database pool use": ("db_pool_connections", 'state="in_use"'),
    "outbox backlog": ("outbox_pending_events", "by (service)"),
}


@pytest.mark.parametrize("what", sorted(REQUIRED_PANELS))
def test_dashboard_shows(what: str) -> None:
    metric, fragment = REQUIRED_PANELS[what]
    assert any(metric in q and fragment in q for q in dashboard_queries()), what


def test_dashboard_queries_parse_and_use_the_datasource_variable() -> None:
    board = dashboard()
    assert board["uid"] == "timesheets-overview"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["namespace"]["allValue"] == ".*"
    ids = [p["id"] for p in dashboard_panels()]
    assert len(ids) == len(set(ids))
    for panel in dashboard_panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel.get("description"), panel["title"]
        for target in panel["targets"]:
            assert 'namespace=~"$namespace"' in target["expr"] or "gateway:" in target["expr"]
    for query in dashboard_queries():
        assert metric_names(query), query  # parses, and selects something


def test_dashboard_uses_only_recording_rules_that_exist() -> None:
    used = set().union(*(metric_names(q) for q in dashboard_queries()))
    assert {n for n in used if ":" in n} <= recorded_names()
