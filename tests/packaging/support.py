"""Helpers of the packaging tests: the chart rendered by the real Helm engine (Helm's Go SDK through
``helm-python-sdk``), once per values scenario, as parsed Kubernetes objects.

No cluster is needed: ``Chart.render`` is what ``helm template`` does (schema validation included);
``lookup`` returns nothing offline, so every render is a first install.
"""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import helm_python as helm
import yaml

if TYPE_CHECKING:  # fakeapi imports this module
    from tests.packaging.fakeapi import FakeApiServer

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "timesheets"
VALUES_DIR = REPO / "deploy" / "helm"
RELEASE = "ts"
NAMESPACE = "timesheets"

Obj = dict[str, Any]


def load_values(name: str) -> dict[str, Any]:
    data = yaml.safe_load((VALUES_DIR / name).read_text())
    assert isinstance(data, dict)
    return data


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# Everything switched on at once, so that every template renders in at least one scenario.
EVERYTHING_ON = {
    "metrics": {
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "dashboard": {"enabled": True},
    },
    "gateway": {
        "ingress": {"enabled": True, "tls": True, "className": "nginx"},
        "dpop": {"policy": "required", "nonces": True},
    },
    "identity": {
        "ingress": {"enabled": True, "tls": True, "hostname": "id.timesheets.localtest.me"},
        "dpop": {"nonces": True},
    },
    "postgresql": {"persistence": {"enabled": True}},
}

# Every Bitnami-style extension point in use (on the timesheets service and the gateway), so that
# every rendering test — lint, strict schemas, Pod Security, policies — runs over them too.
EXTENSIONS: dict[str, Any] = {
    "timesheets": {
        "podAnnotations": {"example.com/team": "timesheets"},
        "podLabels": {"example.com/cost-centre": "cc-42"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "apps", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 50,
                        "preference": {
                            "matchExpressions": [{"key": "node-pool", "operator": "In", "values": ["apps"]}]
                        },
                    }
                ]
            }
        },
        "priorityClassName": "timesheets-high",
        "extraEnvVarsSecret": "timesheets-extra-env",
        "extraVolumes": [{"name": "extra-config", "configMap": {"name": "timesheets-extra"}}],
        "extraVolumeMounts": [{"name": "extra-config", "mountPath": "/etc/extra", "readOnly": True}],
        "initContainers": [
            {
                "name": "wait-for-vault",
                "image": "docker.io/library/busybox:1.36.1",
                "command": ["sh", "-c", "true"],
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "32Mi"}},
            }
        ],
        "sidecars": [
            {
                "name": "log-shipper",
                "image": "docker.io/fluent/fluent-bit:3.1.9",
                "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}},
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            }
        ],
    },
    "gateway": {"extraEnvVarsSecret": "gateway-extra-env"},
    "networkPolicy": {
        "extraIngress": [
            {
                "from": [
                    {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "linkerd-viz"}}}
                ],
                "ports": [{"port": 4191, "protocol": "TCP"}],
            }
        ],
        "extraEgress": [
            {
                "to": [{"ipBlock": {"cidr": "10.30.0.10/32"}}],
                "ports": [{"port": 4317, "protocol": "TCP"}],
            }
        ],
    },
    "metrics": {
        "serviceMonitor": {
            "enabled": True,
            "relabelings": [{"action": "replace", "targetLabel": "cluster", "replacement": "eu-1"}],
        },
        "prometheusRule": {"enabled": True},
    },
}

# The chart's defaults plus only what has no safe default (issuer, database by reference, and where
# the services' own database roles connect).
MINIMAL = {
    "oidc": {"issuers": ["https://login.example.com/"]},
    "externalDatabase": {"existingSecret": "db", "host": "db.internal", "database": "timesheets"},
    "externalRedis": {"existingSecret": "redis", "sharedCredential": False},
}


def scenarios() -> dict[str, dict[str, Any]]:
    """Values scenarios every rendering test runs over: the shipped files first."""
    dev = load_values("values-dev.yaml")
    prod = load_values("values-prod.yaml")
    return {
        "values-dev.yaml": dev,
        "values-prod.yaml": prod,
        "dev+everything": deep_merge(dev, EVERYTHING_ON),
        "prod+bundled-identity": deep_merge(
            prod, {"identity": {"enabled": True}, "oidc": {"issuers": ["https://id.abc.example/"]}}
        ),
        "minimal": MINIMAL,
        "prod+extensions": deep_merge(prod, EXTENSIONS),
        # chart-testing's install values (ct.yaml): rendered, linted and validated like the others
        **{
            f"ci/{path.name}": yaml.safe_load(path.read_text())
            for path in sorted((CHART / "ci").glob("*-values.yaml"))
        },
    }


SCENARIOS = scenarios()
#: libyaml's safe loader where PyYAML was built with it (the wheels are), else the pure-Python one
SAFE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_manifests(rendered: dict[str, str]) -> list[Obj]:
    """The rendered manifests as objects. Parsed with libyaml (PyYAML's C parser, the same safe
    constructors as ``yaml.safe_load_all``): the pure-Python parser took ~1 s a render, most of the
    packaging tests' time."""
    objects: list[Obj] = []
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt") or not text.strip():
            continue
        for doc in yaml.load_all(text, Loader=SAFE_LOADER):
            if doc:
                doc.setdefault("metadata", {}).setdefault("annotations", {})
                doc["__template__"] = template
                objects.append(doc)
    return objects


def render(values: dict[str, Any] | None = None) -> list[Obj]:
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return parse_manifests(rendered)


def render_notes(values: dict[str, Any]) -> str:
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return next(text for name, text in rendered.items() if name.endswith("NOTES.txt"))


_CACHE: dict[str, list[Obj]] = {}


def rendered_scenario(name: str) -> list[Obj]:
    if name not in _CACHE:
        _CACHE[name] = render(SCENARIOS[name])
    return copy.deepcopy(_CACHE[name])


def pod_spec(obj: Obj) -> Obj | None:
    kind = obj["kind"]
    if kind in {"Deployment", "StatefulSet", "Job", "DaemonSet", "ReplicaSet"}:
        spec: Obj = obj["spec"]["template"]["spec"]
        return spec
    if kind == "CronJob":
        spec = obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        return spec
    if kind == "Pod":
        spec = obj["spec"]
        return spec
    return None


def component(obj: Obj) -> str:
    return str(obj["metadata"].get("labels", {}).get("app.kubernetes.io/component", ""))


APP_COMPONENTS = ("gateway", "identity", "timesheets", "approvals", "audit")


# --- upgrades over a live Secret (tests/packaging/fakeapi.py) -------------------------------------

#: the Secret the chart generates (dev values) and, on an upgrade, reads back with ``lookup``
GENERATED_SECRET = f"{RELEASE}-timesheets-generated"


def set_live_secret(api: FakeApiServer, data: dict[str, str]) -> None:
    """Make ``data`` (plain text) the live generated Secret that the next render looks up."""
    api.live(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": GENERATED_SECRET, "namespace": NAMESPACE},
            "type": "Opaque",
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        }
    )


def upgrade_over(api: FakeApiServer, live: dict[str, str], values: dict[str, Any]) -> list[Obj]:
    """``helm upgrade`` with ``values`` against a cluster whose generated Secret holds ``live``."""
    set_live_secret(api, live)
    return parse_manifests(api.render(values, upgrade=True))


def secret_data(objects: list[Obj]) -> dict[str, str]:
    """The one Secret among ``objects``, decoded."""
    (secret,) = [o for o in objects if o["kind"] == "Secret"]
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def pod_annotations(objects: list[Obj], component: str) -> dict[str, str]:
    """The pod template annotations of ``component``'s Deployment (what rolls its pods)."""
    (deployment,) = [
        o
        for o in objects
        if o["kind"] == "Deployment" and o["metadata"]["name"] == f"{RELEASE}-timesheets-{component}"
    ]
    annotations: dict[str, str] = deployment["spec"]["template"]["metadata"]["annotations"]
    return annotations


# --- monitoring artefacts ------------------------------------------------------------------------

RULES_SOURCE = CHART / "files" / "prometheus" / "timesheets-alerts.yml"
DASHBOARD_FILE = CHART / "files" / "grafana" / "timesheets-overview.json"
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
# The chart's PrometheusRule rendered for the release "timesheets" in namespace "timesheets"
# (charts/generate_rules.py): what the local Prometheus loads and promtool tests.
RULES_FILE = PROMETHEUS_DIR / "rules" / "timesheets-alerts.yml"


def load_rules() -> list[Obj]:
    """Every rule (alerting and recording) of the rendered rule file."""
    groups = yaml.safe_load(RULES_FILE.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def alerts() -> list[Obj]:
    return [rule for rule in load_rules() if "alert" in rule]


def dashboard() -> Obj:
    import json

    data: Obj = json.loads(DASHBOARD_FILE.read_text())
    return data


def dashboard_panels() -> list[Obj]:
    panels = []
    for panel in dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return [p for p in panels if p.get("type") != "row"]


# Grafana's variables, replaced by what they expand to, so a query parses as PromQL. The selected
# namespace and release become sentinels that the filter tests look for.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1h",
    "${namespace}": "SELECTED_NS",
    "$namespace": "SELECTED_NS",
    "${release}": "SELECTED_RELEASE",
    "$release": "SELECTED_RELEASE",
}


def expand_variables(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def dashboard_queries() -> list[str]:
    return [
        expand_variables(str(target["expr"]))
        for panel in dashboard_panels()
        for target in panel.get("targets", [])
    ]


def selectors(expr: str) -> list[tuple[str, dict[str, tuple[str, str]]]]:
    """Every vector selector of a PromQL expression: (metric name, {label: (operator, value)})."""
    import promql_parser

    found: list[tuple[str, dict[str, tuple[str, str]]]] = []
    ops = (
        (promql_parser.MatchOp.Equal, "="),
        (promql_parser.MatchOp.NotEqual, "!="),
        (promql_parser.MatchOp.Re, "=~"),
        (promql_parser.MatchOp.NotRe, "!~"),
    )

    def op(value: Any) -> str:
        return next(text for known, text in ops if known == value)

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            matchers = {m.name: (op(m.op), m.value) for m in node.matchers.matchers}
            found.append((str(node.name or matchers.get("__name__", ("", ""))[1]), matchers))

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def metric_names(expr: str) -> set[str]:
    """Names of the series a PromQL expression selects, read from its syntax tree."""
    return {name for name, _ in selectors(expr) if name}


def recorded_names() -> set[str]:
    return {str(rule["record"]) for rule in load_rules() if "record" in rule}


def exported_name(series_name: str) -> str:
    """The metric family a series name belongs to (histogram/summary suffixes removed)."""
    for suffix in ("_bucket", "_count", "_sum"):
        if series_name.endswith(suffix):
            return series_name[: -len(suffix)]
    return series_name
