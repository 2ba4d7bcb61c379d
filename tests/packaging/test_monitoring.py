"""The SRE kit: alert and SLO rules scoped to their release (rendered by the chart, promtool-checked and
unit-tested, including against other releases' series), runbook sections, the local Prometheus
configuration, the ServiceMonitors, and the Grafana dashboard (every query filtered by namespace and
release, units that match what is plotted)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.packaging.support import (
    APP_COMPONENTS,
    CHART,
    DASHBOARD_FILE,
    MINIMAL,
    PROMETHEUS_DIR,
    REPO,
    RULES_FILE,
    RULES_SOURCE,
    Obj,
    alerts,
    dashboard,
    dashboard_panels,
    deep_merge,
    expand_variables,
    load_rules,
    metric_names,
    recorded_names,
    render,
    rendered_scenario,
    selectors,
)

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool comes from the Debian package 'prometheus'"
)
TEST_FILE = PROMETHEUS_DIR / "tests" / "timesheets-alerts.test.yml"
ISOLATION_TEST = "series of other namespaces and other releases never fire this release's alerts"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL
    return subprocess.run(
        [PROMTOOL, *args], cwd=REPO, capture_output=True, text=True, check=False, timeout=180
    )


def rule_groups(values: dict[str, Any], *, release: str = "ts", namespace: str = "timesheets") -> Any:
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values, name=release, namespace=namespace, is_install=True)
    (rule,) = [
        doc
        for name, text in rendered.items()
        if name.endswith("prometheusrule.yaml")
        for doc in [yaml.safe_load(text)]
        if doc
    ]
    return rule["spec"]["groups"]


WITH_RULES = deep_merge(MINIMAL, {"metrics": {"prometheusRule": {"enabled": True}}})


def all_rules(groups: Any) -> list[Obj]:
    return [rule for group in groups for rule in group["rules"]]


# --- the rendered rule file --------------------------------------------------------------------


def test_the_rule_file_is_the_charts_output() -> None:
    """deploy/prometheus/rules/ is the chart's PrometheusRule for release and namespace "timesheets"
    (`make chart-docs`); what promtool tests is what a cluster gets."""
    result = subprocess.run(
        [sys.executable, str(REPO / "charts" / "generate_rules.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert not RULES_FILE.is_symlink()


@needs_promtool
def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(load_rules())} rules found" in result.stdout


def unit_test_parts() -> tuple[str, list[tuple[Obj, str]]]:
    """The unit test file's text cut at its test groups: the head (``rule_files``, the interval, up
    to ``tests:``), then each group as parsed with its own lines, unchanged.

    Why: promtool spends about 0.2 s on each of the file's groups (~9 s in all) on one core; the
    whole file is run in parts at once (:func:`test_promtool_unit_tests_pass`), and a guard runs
    only the groups that test what it broke (~0.5 s). Cut as text, not re-serialised, so promtool
    reads the groups exactly as written. Nothing is lost: promtool runs every group of a file, so a
    file passes exactly when each of its groups does, and fails with each failing group's message.
    """
    text = TEST_FILE.read_text()
    head, tests_line, body = text.partition("\ntests:\n")
    lead, *chunks = re.split(r"(?m)^(?=  - name: )", body)
    groups = yaml.safe_load(text)["tests"]
    assert tests_line, "the file has a 'tests:' list"
    assert len(chunks) == len(groups), "every test group starts with '  - name: '"
    for group, chunk in zip(groups, chunks, strict=True):
        assert group["name"] in chunk.splitlines()[0], (group["name"], chunk[:200])
    return head + tests_line + lead, list(zip(groups, chunks, strict=True))


def groups_selected(keep: Callable[[Obj], bool], *, rule_file: Path | None = None) -> str:
    """The unit test file with only the test groups ``keep`` selects (at least one); with
    ``rule_file``, that file in place of the relative ``../rules/`` one."""
    head, parts = unit_test_parts()
    chosen = [chunk for group, chunk in parts if keep(group)]
    assert chosen, "no test group selected"
    if rule_file is not None:
        relative = "- ../rules/timesheets-alerts.yml\n"
        assert relative in head
        head = head.replace(relative, f"- {rule_file}\n")
    return head + "".join(chosen)


@needs_promtool
def test_promtool_unit_tests_pass(tmp_path: Path) -> None:
    """Every test group of the file passes against the rendered rules: the groups in as many parts
    as there are cores (up to 4), run at once (:func:`unit_test_parts`)."""
    _, parts = unit_test_parts()
    names = [group["name"] for group, _ in parts]
    assert len(set(names)) == len(names), "test group names are unique"
    count = max(1, min(4, os.cpu_count() or 1))
    files = []
    for index in range(count):
        files.append(tmp_path / f"part{index}.test.yml")
        files[-1].write_text(groups_selected(named(set(names[index::count])), rule_file=RULES_FILE))
    assert PROMTOOL
    running = [
        subprocess.Popen(
            [PROMTOOL, "test", "rules", str(path)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for path in files
    ]
    for process in running:
        out, err = process.communicate(timeout=180)
        assert process.returncode == 0, out + err
        assert "SUCCESS" in out


def named(names: set[str]) -> Callable[[Obj], bool]:
    return lambda group: group["name"] in names


def checks_alert(alertname: str) -> Callable[[Obj], bool]:
    return lambda group: any(case["alertname"] == alertname for case in group.get("alert_rule_test", []))


def run_tests_against(
    rules_text: str, tmp_path: Path, keep: Callable[[Obj], bool]
) -> subprocess.CompletedProcess[str]:
    """promtool's unit tests (the groups ``keep`` selects: :func:`groups_selected`) against
    ``rules_text`` in place of the rendered rule file."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "timesheets-alerts.yml").write_text(rules_text)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / TEST_FILE.name).write_text(groups_selected(keep))
    return promtool("test", "rules", str(tmp_path / "tests" / TEST_FILE.name))


@needs_promtool
def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """Guard: with a rule's threshold changed, the unit tests must notice."""
    text = RULES_FILE.read_text()
    changed = text.replace(
        "(outbox_oldest_event_age_seconds{", "(outbox_oldest_event_age_seconds{", 1
    ).replace('"}) > 300', '"}) > 3000')
    assert changed != text
    result = run_tests_against(changed, tmp_path, checks_alert("TimesheetsOutboxBacklogTooOld"))
    assert result.returncode != 0
    assert "TimesheetsOutboxBacklogTooOld" in result.stdout + result.stderr


@needs_promtool
def test_unscoped_rules_would_fail_the_other_releases_test(tmp_path: Path) -> None:
    """Guard: rules that select by job name only (what the chart shipped before: `job="gateway"`,
    no namespace) fire on other releases' series, and the isolation test catches it."""
    text = RULES_FILE.read_text().replace('namespace="timesheets",', "")
    text = re.sub(r'job="timesheets-(\w+)"', r'job=~".*\1"', text)
    text = text.replace('job=~"timesheets-(', 'job=~".*(')
    result = run_tests_against(text, tmp_path, named({ISOLATION_TEST}))
    assert result.returncode != 0
    assert ISOLATION_TEST in result.stdout + result.stderr


@needs_promtool
def test_local_prometheus_config_is_valid_and_loads_the_rendered_rules() -> None:
    config_path = PROMETHEUS_DIR / "prometheus-local.yml"
    result = promtool("check", "config", str(config_path))
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(config_path.read_text())
    rule_files = sorted(PROMETHEUS_DIR.glob(config["rule_files"][0]))
    assert [p.resolve() for p in rule_files] == [RULES_FILE.resolve()]
    jobs = {
        job["job_name"]: (job["static_configs"][0]["targets"], job["static_configs"][0]["labels"])
        for job in config["scrape_configs"]
    }
    # The jobs and namespace of the release "timesheets" in namespace "timesheets", scraped on the
    # local metrics ports (devstack.SERVICES).
    from devstack import SERVICES

    assert jobs == {
        f"timesheets-{spec.name}": ([f"127.0.0.1:{spec.metrics_port}"], {"namespace": "timesheets"})
        for spec in SERVICES
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


def test_every_alert_is_checked_against_other_releases() -> None:
    (case,) = [c for c in yaml.safe_load(TEST_FILE.read_text())["tests"] if c["name"] == ISOLATION_TEST]
    checked = {check["alertname"] for check in case["alert_rule_test"] if check["exp_alerts"] == []}
    assert checked == {a["alert"] for a in alerts()}
    foreign = {
        (labels.get("namespace"), labels.get("job") or labels.get("pod"))
        for series in case["input_series"]
        for labels in [dict(re.findall(r'(\w+)="([^"]*)"', series["series"]))]
    }
    namespaces = {ns for ns, _ in foreign}
    assert {"timesheets", "staging", "payments"} <= namespaces
    assert any(str(who).startswith("staging-timesheets-") for ns, who in foreign if ns == "timesheets")


def test_each_slo_tier_is_shown_firing() -> None:
    names = [c["name"] for c in yaml.safe_load(TEST_FILE.read_text())["tests"]]
    for slo in ("availability", "latency"):
        for tier in ("page tier 1", "page tier 2", "ticket tier 1", "ticket tier 2"):
            assert any(n.startswith(f"{slo} {tier}") for n in names), f"{slo} {tier}"
        assert any(n.startswith(f"{slo} within budget") for n in names)


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
        assert anchor.startswith(github_anchor(re.sub(r"(Page|Ticket|CrashLooping)$", "", name)))


def test_the_promised_alerts_are_all_there() -> None:
    """What issues 7 and 16 promise, by what the alerts watch."""
    exprs = {a["alert"]: a["expr"] for a in alerts()}
    assert 'slo="availability"' in exprs["TimesheetsAvailabilitySLOBurnPage"]
    assert 'slo="latency"' in exprs["TimesheetsLatencySLOBurnTicket"]
    assert "by (namespace, job, reason)" in exprs["TimesheetsAuthFailureSpike"]
    assert "gateway_jwks_fetch_total" in exprs["TimesheetsJWKSRefreshFailing"]
    assert "gateway_jwks_key_age_seconds" in exprs["TimesheetsJWKSKeysTooOld"]
    assert "outbox_oldest_event_age_seconds" in exprs["TimesheetsOutboxBacklogTooOld"]
    assert "audit_chain" in exprs["TimesheetsAuditChainBroken"]
    grace = "audit_checkpoint_unknown_key_since_timestamp_seconds"
    assert grace in exprs["TimesheetsAuditCheckpointKeyUnknown"]
    assert "process_start_time_seconds" in exprs["TimesheetsPodRestarting"]
    assert exprs["TimesheetsTargetMissing"].count("absent(up{") == len(APP_COMPONENTS)
    assert (
        'audit_listings_refused_total{namespace="timesheets",job="timesheets-audit",reason="busy"}'
        in (exprs["TimesheetsAuditListingsBusy"])
    )
    # the identity provider has an outbox and writes denial records too: its job is watched
    for name in ("TimesheetsOutboxBacklogTooOld", "TimesheetsDenialRecordsDropped"):
        (jobs,) = re.findall(r'job=~"timesheets-\(([^)]*)\)"', exprs[name])
        assert "identity" in jobs.split("|"), name


BURN_TIERS = {
    "Page": [("1h", "5m", "14.4"), ("6h", "30m", "6")],
    "Ticket": [("1d", "2h", "3"), ("3d", "6h", "1")],
}


def test_burn_rate_alerts_are_the_workbooks_multiwindow_tiers() -> None:
    exprs = {a["alert"]: a["expr"] for a in alerts()}
    budgets = {"availability": "0.001", "latency": "0.01"}
    for slo, budget in budgets.items():
        for tier, windows in BURN_TIERS.items():
            expr = exprs[f"Timesheets{slo.capitalize()}SLOBurn{tier}"]
            for long, short, factor in windows:
                for window in (long, short):
                    selector = (
                        f'timesheets:slo_errors:ratio_rate{window}{{namespace="timesheets",'
                        f'job="timesheets-gateway",slo="{slo}"}} / {budget} > {factor}'
                    )
                    assert selector in expr, (slo, tier, window)
    recorded = {(r["record"], r.get("labels", {}).get("slo")) for r in load_rules() if "record" in r}
    for slo in budgets:
        for window in ("5m", "30m", "1h", "2h", "6h", "1d", "3d", "30d"):
            assert (f"timesheets:slo_errors:ratio_rate{window}", slo) in recorded
        assert ("timesheets:slo_error_budget:remaining_ratio", slo) in recorded


# --- scoped to the release ----------------------------------------------------------------------


def release_scope_violations(groups: Any, release: str, namespace: str) -> list[str]:
    """Every vector selector must name the release's namespace exactly and select only the release's
    jobs (or, for kube-state-metrics, its pods)."""
    full = f"{release}-timesheets" if "timesheets" not in release else release
    problems = []
    for rule in all_rules(groups):
        for name, matchers in selectors(rule["expr"]):
            where = f"{rule.get('alert') or rule.get('record')}: {name}"
            if matchers.get("namespace") != ("=", namespace):
                problems.append(f"{where} without namespace={namespace!r}")
            job, pod = matchers.get("job"), matchers.get("pod")
            if job is not None:
                op, value = job
                ok = (op == "=" and re.fullmatch(rf"{full}-({'|'.join(APP_COMPONENTS)})", value)) or (
                    op == "=~" and value.startswith(f"{full}-(")
                )
            elif pod is not None:
                ok = pod[0] == "=~" and pod[1].startswith(f"{full}-(")
            else:
                ok = False
            if not ok:
                problems.append(f"{where} does not select the release's jobs: {matchers}")
    return problems


@pytest.mark.parametrize(
    ("release", "namespace", "extra"),
    [
        ("timesheets", "timesheets", {}),
        ("acme", "prod-eu", {}),
        ("ts-staging", "shared", {"identity": {"enabled": False}}),
    ],
)
def test_every_selector_of_every_rule_is_scoped_to_the_release(
    release: str, namespace: str, extra: dict[str, Any]
) -> None:
    groups = rule_groups(deep_merge(WITH_RULES, extra), release=release, namespace=namespace)
    assert all_rules(groups)
    assert release_scope_violations(groups, release, namespace) == []


def test_the_scope_check_notices_an_unscoped_selector() -> None:
    groups = [{"name": "x", "rules": [{"alert": "A", "expr": 'up{job="gateway"} == 0'}]}]
    assert len(release_scope_violations(groups, "ts", "timesheets")) == 2


def test_without_the_bundled_identity_provider_no_rule_expects_it() -> None:
    groups = rule_groups(deep_merge(WITH_RULES, {"identity": {"enabled": False}}))
    text = json.dumps(groups)
    assert "ts-timesheets-identity" not in text
    assert "identity|" not in text


@needs_promtool
def test_kube_prometheus_stack_style_values(tmp_path: Path) -> None:
    values = deep_merge(
        WITH_RULES,
        {
            "metrics": {
                "prometheusRule": {
                    "runbookUrl": "https://wiki.abc.example/timesheets/runbook/",
                    "additionalRuleLabels": {"team": "platform", "severity": "overridden?"},
                    "additionalRuleAnnotations": {
                        "dashboard": "https://grafana.abc.example/d/timesheets-overview"
                    },
                    "disabled": {"TimesheetsAuthFailureSpike": True, "TimesheetsTargetMissing": True},
                    "extraGroups": [
                        {
                            "name": "team.extra",
                            "rules": [
                                {
                                    "alert": "TeamGatewaySlow",
                                    "expr": "histogram_quantile(0.9, sum by (le) "
                                    "(rate(gateway_request_duration_seconds_bucket{<<gateway>>}[5m]))) > 1",
                                    "labels": {"severity": "info"},
                                }
                            ],
                        }
                    ],
                }
            }
        },
    )
    groups = rule_groups(values)
    rules = {r.get("alert") or r["record"]: r for r in all_rules(groups)}
    assert "TimesheetsAuthFailureSpike" not in rules
    assert "TimesheetsTargetMissing" not in rules
    for rule in rules.values():
        if "alert" not in rule:
            assert "labels" not in rule or "team" not in rule["labels"], "recording rules keep their labels"
            continue
        assert rule["labels"]["team"] == "platform"
        assert rule["annotations"]["dashboard"].startswith("https://grafana.abc.example/")
        if rule["alert"].startswith("Timesheets"):
            assert rule["annotations"]["runbook_url"].startswith(
                "https://wiki.abc.example/timesheets/runbook#"
            )
            assert rule["labels"]["severity"] in {"critical", "warning"}, "a rule's own severity wins"
    extra = rules["TeamGatewaySlow"]
    assert 'namespace="timesheets",job="ts-timesheets-gateway"' in extra["expr"]
    assert release_scope_violations(groups, "ts", "timesheets") == []
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": groups}))
    result = promtool("check", "rules", str(tmp_path / "rules.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_slo_objectives_come_from_values() -> None:
    values = deep_merge(
        WITH_RULES,
        {
            "metrics": {
                "slo": {
                    "availability": {"objectivePercent": 99.5},
                    "latency": {"objectivePercent": 95, "thresholdSeconds": "1.0"},
                    "pageSeverity": "page",
                }
            }
        },
    )
    rules = {
        (r.get("alert") or r["record"], r.get("labels", {}).get("slo")): r
        for r in all_rules(rule_groups(values))
    }
    assert " / 0.005 > 14.4" in rules[("TimesheetsAvailabilitySLOBurnPage", None)]["expr"]
    assert " / 0.05 > 14.4" in rules[("TimesheetsLatencySLOBurnPage", None)]["expr"]
    assert rules[("TimesheetsLatencySLOBurnPage", None)]["labels"]["severity"] == "page"
    assert 'le="1.0"' in rules[("timesheets:slo_errors:ratio_rate5m", "latency")]["expr"]
    assert rules[("timesheets:slo_objective:ratio", "availability")]["expr"].endswith("* 0 + 0.995")
    assert "95% within 1.0 s" in rules[("TimesheetsLatencySLOBurnTicket", None)]["annotations"]["description"]
    off = rule_groups(deep_merge(WITH_RULES, {"metrics": {"slo": {"enabled": False}}}))
    assert not [g for g in off if g["name"].startswith("timesheets.slo")]
    assert not [r for r in all_rules(off) if "SLO" in r.get("alert", "")]


@pytest.mark.parametrize(
    ("bad", "complaint"),
    [
        (
            {"metrics": {"slo": {"latency": {"thresholdSeconds": "0.3"}}}},
            "/metrics/slo/latency/thresholdSeconds",
        ),
        ({"metrics": {"slo": {"availability": {"objectivePercent": 100}}}}, "objectivePercent"),
        (
            {"metrics": {"prometheusRule": {"disabled": {"TimesheetsAuthFailurSpike": True}}}},
            "TimesheetsAuthFailurSpike",
        ),
        ({"metrics": {"prometheusRule": {"runbookUrl": "wiki"}}}, "runbookUrl"),
    ],
)
def test_the_schema_refuses_values_that_would_silently_not_work(bad: dict[str, Any], complaint: str) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError) as refused:
        chart.validate_schema(deep_merge(WITH_RULES, bad))
    assert complaint in str(refused.value)


def test_the_disabled_schema_lists_every_alert() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    names = schema["properties"]["metrics"]["properties"]["prometheusRule"]["properties"]["disabled"]
    assert set(names["propertyNames"]["enum"]) == {a["alert"] for a in alerts()}
    assert "<<" in RULES_SOURCE.read_text(), "the source keeps its placeholders"


# --- chart objects -----------------------------------------------------------------------------


def test_service_monitors_scrape_the_metrics_port_under_the_service_name() -> None:
    objects = rendered_scenario("dev+everything")
    monitors = [o for o in objects if o["kind"] == "ServiceMonitor"]
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    assert {m["metadata"]["labels"]["app.kubernetes.io/component"] for m in monitors} == set(APP_COMPONENTS)
    for monitor in monitors:
        spec = monitor["spec"]
        assert "jobLabel" not in spec, "the job is the Service name: unique per release and namespace"
        (endpoint,) = spec["endpoints"]
        assert endpoint["path"] == "/metrics"
        assert endpoint["port"] == "metrics"
        service = services[monitor["metadata"]["name"]]
        assert "metrics" in {p["name"] for p in service["spec"]["ports"]}
        labels = service["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in spec["selector"]["matchLabels"].items())
        assert spec["namespaceSelector"] == {"matchNames": ["timesheets"]}


def test_service_monitor_relabelings_pass_through() -> None:
    relabel = [{"action": "replace", "targetLabel": "cluster", "replacement": "eu-1"}]
    drop = [{"action": "drop", "sourceLabels": ["__name__"], "regex": "python_gc_.*"}]
    values = deep_merge(
        MINIMAL,
        {"metrics": {"serviceMonitor": {"enabled": True, "relabelings": relabel, "metricRelabelings": drop}}},
    )
    for monitor in [o for o in render(values) if o["kind"] == "ServiceMonitor"]:
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["relabelings"] == relabel
        assert endpoint["metricRelabelings"] == drop


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
    "JWKS renewal lease by outcome": ("gateway_jwks_lease_total", "by (outcome)"),
    "upstream latency per service": ("gateway_upstream_duration_seconds_bucket", "by (le, service)"),
    "database pool use": ("db_pool_connections", 'state="in_use"'),
    "outbox backlog": ("outbox_pending_events", "by (service)"),
    "outbox backlog of the identity provider too": ("outbox_pending_events", "identity|"),
    "HTTP-layer refusals by status (connection cap 503s)": ("http_refused_total", "by (job, status)"),
    "HTTP-layer send timeouts": ("http_send_timeouts_total", "by (job)"),
    "audit listings refused by reason": ("audit_listings_refused_total", "by (reason)"),
    "audit verifications refused by reason": ("audit_verifications_refused_total", "by (reason)"),
    "audit checkpoints under an unknown key, per replica": (
        "audit_checkpoint_unknown_key_since_timestamp_seconds",
        "by (instance)",
    ),
    "denial records written by service": ("audit_denials_written_total", "by (service)"),
    "denial records dropped by service": ("audit_denials_dropped_total", "by (service)"),
    "denials of the identity provider too": ("audit_denials_dropped_total", "identity|"),
    "approval refusals by reason": ("approvals_refusals_total", "by (reason)"),
    "timesheets refusals by reason and source": ("timesheets_refusals_total", "by (reason, source)"),
    "identity DPoP binding refusals": ("identity_dpop_binding_refusals_total", "by (binding)"),
    "identity DPoP proof refusals": ("identity_dpop_proof_refusals_total", "by (reason)"),
    "identity /userinfo refusals": ("identity_userinfo_refusals_total", "by (reason)"),
    "identity /authorize code limit": ("identity_authorize_throttled_total", "rate("),
    "SLI over 30 days": ("timesheets:slo_errors:ratio_rate30d", "1 - "),
    "error budget left": ("timesheets:slo_error_budget:remaining_ratio", ""),
    "burn rate": ("timesheets:slo_objective:ratio", "ratio_rate1h"),
    "CPU": ("container_cpu_usage_seconds_total", "by (pod)"),
    "memory": ("container_memory_working_set_bytes", "by (pod)"),
    "restarts": ("kube_pod_container_status_restarts_total", "increase("),
    "HPA replicas": ("kube_horizontalpodautoscaler_status_current_replicas", "by (horizontalpodautoscaler)"),
}


@pytest.mark.parametrize("what", sorted(REQUIRED_PANELS))
def test_dashboard_shows(what: str) -> None:
    metric, fragment = REQUIRED_PANELS[what]
    queries = [expand_variables(t["expr"]) for p in dashboard_panels() for t in p.get("targets", [])]
    assert any(metric in q and fragment in q for q in queries), what


RELEASE_LABELS = ("job", "pod", "horizontalpodautoscaler")


def filter_problems(expr: str) -> list[str]:
    """Every selector of a dashboard query must pick the selected namespace exactly and select only the
    selected release's jobs, pods or HPAs."""
    problems = []
    for name, matchers in selectors(expand_variables(expr)):
        if matchers.get("namespace") != ("=", "SELECTED_NS"):
            problems.append(f"{name}: namespace {matchers.get('namespace')}")
        scoped = [
            (label, matchers[label])
            for label in RELEASE_LABELS
            if label in matchers and matchers[label][1].startswith("SELECTED_RELEASE-")
        ]
        if not scoped or any(op not in ("=", "=~") for _, (op, _value) in scoped):
            problems.append(f"{name}: not filtered by the selected release: {matchers}")
    return problems


def test_every_dashboard_query_is_filtered_by_namespace_and_release() -> None:
    problems = {
        f"{panel['title']} / {target['refId']}": filter_problems(target["expr"])
        for panel in dashboard_panels()
        for target in panel.get("targets", [])
    }
    assert {k: v for k, v in problems.items() if v} == {}


def test_the_filter_check_notices_a_query_of_everybody() -> None:
    """Guard: the old "All" namespace regex and a query without a release filter are both caught."""
    assert filter_problems('sum(rate(gateway_requests_total{namespace=~"$namespace"}[5m]))')
    assert filter_problems('up{namespace="$namespace",job="gateway"}')
    assert filter_problems('up{namespace="$namespace",job!~"$release-.*"}')
    assert filter_problems('up{namespace="$namespace",job="$release-gateway"}') == []


def expected_unit(expr: str) -> str:
    """The unit a query's values have, from the metric's base unit and what is done to it."""
    names = metric_names(expand_variables(expr))
    if "slo_objective" in expr and " / " in expr:
        return "suffix:\u00d7"  # an error ratio divided by the budget: a burn rate, "14.4 times"
    if "histogram_quantile(" in expr:
        assert all(n.endswith("_seconds_bucket") for n in names), expr
        return "s"
    if " / " in expr or any(n.endswith("_ratio") or ":ratio" in n for n in names):
        return "percentunit"
    if 'resource="memory"' in expr or any(n.endswith("_bytes") for n in names):
        return "bytes"
    if 'resource="cpu"' in expr or any(n.endswith("_seconds_total") for n in names):
        return "short"  # CPU seconds per second: cores
    if "increase(" in expr or "changes(" in expr:
        return "short"  # a count per window
    if "rate(" in expr:
        return "reqps"
    if any(n.endswith("_seconds") for n in names):
        return "s"
    if any(n.endswith("_ok") for n in names):
        return "none"  # a 0/1 state, shown through value mappings
    return "short"


def test_every_panels_unit_is_the_unit_of_every_one_of_its_queries() -> None:
    wrong = {}
    for panel in dashboard_panels():
        unit = panel["fieldConfig"]["defaults"]["unit"]
        overrides = panel["fieldConfig"].get("overrides", [])
        assert overrides == [], f"{panel['title']}: one unit per panel, no per-query overrides"
        for target in panel["targets"]:
            if expected_unit(target["expr"]) != unit:
                wrong[f"{panel['title']} / {target['refId']}"] = (unit, expected_unit(target["expr"]))
    assert wrong == {}


def test_the_unit_check_notices_seconds_and_counts_in_one_panel() -> None:
    """Guard: the two wrong panels of before — key age (seconds) plotted with fetch counts, the oldest
    outbox event (seconds) with the number of pending events — are caught."""
    assert expected_unit('max by (issuer) (gateway_jwks_key_age_seconds{namespace="$namespace"})') == "s"
    assert expected_unit("sum by (issuer) (increase(gateway_jwks_fetch_total[5m]))") == "short"
    assert expected_unit("max(outbox_oldest_event_age_seconds)") == "s"
    assert expected_unit("sum(outbox_pending_events)") == "short"


def test_dashboard_variables_select_one_namespace_and_one_release() -> None:
    board = dashboard()
    assert board["uid"] == "timesheets-overview"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for name in ("namespace", "release"):
        variable = variables[name]
        assert variable["includeAll"] is False, "'All' pulls in other applications' metrics"
        assert variable["multi"] is False
    assert 'namespace="$namespace"' in variables["release"]["definition"]
    match = re.fullmatch(variables["release"]["regex"].strip("/"), "acme-timesheets-gateway")
    assert match is not None
    assert match.group(1) == "acme-timesheets"


def test_dashboard_panels_are_described_and_use_the_datasource_variable() -> None:
    ids = [p["id"] for p in dashboard()["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard_panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel.get("description"), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert metric_names(expand_variables(target["expr"])), target["expr"]  # parses


def test_dashboard_panels_do_not_overlap() -> None:
    """Two branches each adding a panel at the same free place merged into one drawn over the other
    (Grafana keeps both, one hidden); every grid cell holds one panel at most, within 24 columns."""
    taken: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] <= grid["x"] + grid["w"] <= 24, panel["title"]
        for y in range(grid["y"], grid["y"] + grid["h"]):
            for x in range(grid["x"], grid["x"] + grid["w"]):
                assert (x, y) not in taken, f"{panel['title']!r} is drawn over {taken[(x, y)]!r}"
                taken[(x, y)] = panel["title"]


def test_dashboard_uses_only_recording_rules_that_exist() -> None:
    used = set().union(
        *(metric_names(expand_variables(t["expr"])) for p in dashboard_panels() for t in p["targets"])
    )
    assert {n for n in used if ":" in n} <= recorded_names()


# --- gauges of shared state, reported by every replica ------------------------------------------

#: Gauges whose value each replica reads from the one database all replicas share (the outbox table,
#: the pending decisions): two replicas report the same number, so a query must take one of them
#: (max/min), never add them up (the "outbox backlog" panel summed them: twice the backlog with the
#: chart's two replicas, three times with three).
SHARED_STATE_GAUGES = (
    "outbox_pending_events",
    "outbox_oldest_event_age_seconds",
    "approvals_decisions_pending",
    "approvals_oldest_pending_decision_age_seconds",
)
SHARED_VALUE = 400  # above every threshold an alert on these gauges has


def shared_state_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every dashboard query and rule that reads a shared-state gauge, with the
    dashboard's variables set to release "ts" in namespace "timesheets"."""
    found = []
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            expr = str(target["expr"])
            if any(name in metric_names(expand_variables(expr)) for name in SHARED_STATE_GAUGES):
                concrete = expand_variables(expr).replace("SELECTED_NS", "timesheets")
                found.append((f"panel {panel['title']!r}", concrete.replace("SELECTED_RELEASE", "ts")))
    for rule in load_rules():
        if any(name in metric_names(rule["expr"]) for name in SHARED_STATE_GAUGES):
            found.append((f"rule {rule.get('alert') or rule.get('record')}", rule["expr"]))
    return found


def replica_series(expr: str) -> list[dict[str, str]]:
    """Two replicas (pods) of the job each selector of ``expr`` reads, both reporting SHARED_VALUE."""
    series = []
    for name, matchers in selectors(expr):
        if name not in SHARED_STATE_GAUGES:
            continue
        op, job = matchers["job"]
        if op == "=~":  # "ts-(identity|timesheets|...)": take one of the alternatives
            job = re.sub(r"\(([^|)]+)[^)]*\)", r"\1", job)
        service = job.rsplit("-", 1)[1]
        namespace = matchers["namespace"][1]
        for pod in ("a", "b"):
            labels = f'namespace="{namespace}",job="{job}",pod="{job}-{pod}",service="{service}"'
            series.append({"series": f"{name}{{{labels}}}", "values": f"{SHARED_VALUE}x10"})
    return series


@needs_promtool
def test_gauges_of_shared_state_are_not_added_up_across_replicas(tmp_path: Path) -> None:
    queries = shared_state_queries()
    assert any(where.startswith("panel") for where, _ in queries)
    (tmp_path / "none.yml").write_text("groups: []\n")
    tests = []
    for where, expr in queries:
        tests.append(
            {
                "name": where,
                "interval": "1m",
                "input_series": replica_series(expr),
                "promql_expr_test": [
                    # one answer per service, and it is the value every replica reported
                    {"expr": f"count({expr})", "eval_time": "5m", "exp_samples": [{"value": 1}]},
                    {"expr": f"({expr}) != {SHARED_VALUE}", "eval_time": "5m", "exp_samples": []},
                ],
            }
        )
    (tmp_path / "shared.test.yml").write_text(yaml.safe_dump({"rule_files": ["none.yml"], "tests": tests}))
    result = promtool("test", "rules", str(tmp_path / "shared.test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
