"""A component's extra environment cannot undo what the chart sets, nor put a secret in plain sight.

`<component>.env` and `<component>.extraEnv` are for a service's own tuning settings. A second entry
of a name the chart already sets wins in the container (the later one), so a PORT the probes do not
probe, a METRICS_PORT the ServiceMonitor does not scrape, or a DATABASE_URL / pair key as a plain
value in the Deployment would all render and install. The render refuses a name the chart sets, and
the schema refuses a secret's name as a plain value.
"""

from __future__ import annotations

import collections
from typing import Any

import helm_python as helm
import pytest

from tests.packaging.support import CHART, MINIMAL, Obj, deep_merge, pod_spec, render


def container_env(objects: list[Obj], component: str) -> list[dict[str, Any]]:
    for obj in objects:
        if (
            obj["kind"] == "Deployment"
            and obj["metadata"]["labels"]["app.kubernetes.io/component"] == component
        ):
            spec = pod_spec(obj)
            assert spec is not None
            (main,) = [
                c for c in spec["containers"] if c.get("command", [])[:3] == ["python", "-m", component]
            ]
            env: list[dict[str, Any]] = main["env"]
            return env
    raise AssertionError(f"no Deployment for {component}")


def env_of(values: dict[str, Any], component: str) -> dict[str, str]:
    """The plain entries of the component's Deployment container rendered from ``values`` (Secret
    references left out)."""
    return {e["name"]: str(e["value"]) for e in container_env(render(values), component) if "value" in e}


def schema_refuses(values: dict[str, Any]) -> str:
    with helm.Chart.load(CHART) as chart:
        try:
            chart.validate_schema(values)
        except helm.HelmValuesError as refused:
            return str(refused)
    return ""


@pytest.mark.parametrize(
    ("component", "field", "entry"),
    [
        ("gateway", "env", {"PORT": "9999"}),  # the probes, Service and NetworkPolicy use 8080
        ("timesheets", "env", {"METRICS_PORT": "9999"}),  # the ServiceMonitor scrapes 9101
        ("approvals", "env", {"TIMESHEETS_URL": "http://elsewhere:8101"}),
        ("audit", "extraEnv", [{"name": "REDIS_KEY_PREFIX", "value": "other:"}]),
        ("gateway", "extraEnv", [{"name": "IDENTITY_KEYS_GATEWAY_TO_AUDIT", "value": "k1:" + "s" * 43}]),
    ],
)
def test_a_variable_the_chart_sets_is_refused_when_rendering(component: str, field: str, entry: Any) -> None:
    values = deep_merge(MINIMAL, {component: {field: entry}})
    name = next(iter(entry)) if isinstance(entry, dict) else entry[0]["name"]
    with pytest.raises(helm.HelmError) as refused:
        render(values)
    assert f"the chart sets {name} for this container" in str(refused.value)


@pytest.mark.parametrize(
    ("component", "name"),
    [
        ("audit", "DATABASE_URL"),
        ("gateway", "DATABASE_URL"),  # not set for the gateway: a secret all the same
        ("gateway", "REDIS_URL"),
        ("gateway", "IDENTITY_KEYS_GATEWAY_TO_AUDIT"),
        ("identity", "IDENTITY_SESSION_SECRET"),
        ("identity", "BATCH_CLIENT_SECRET"),
        ("timesheets", "DB_RUNTIME_PASSWORD"),
        ("audit", "AUDIT_CHECKPOINT_KEYS"),
        ("identity", "IDENTITY_KEY_ENCRYPTION_KEY"),
    ],
)
def test_a_secrets_name_as_a_plain_value_is_refused_by_the_schema(component: str, name: str) -> None:
    refused = schema_refuses(deep_merge(MINIMAL, {component: {"env": {name: "hunter2-hunter2"}}}))
    assert f"invalid propertyName '{name}'" in refused, refused


def test_tuning_settings_still_pass_once_and_after_what_the_chart_sets() -> None:
    """The guard refuses only what it should: a service's own tuning setting renders, once."""
    values = deep_merge(
        MINIMAL,
        {
            "timesheets": {
                "env": {"REDIS_TIMEOUT_SECONDS": 0.5},
                "extraEnv": [
                    {"name": "EXTRA_FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}
                ],
            }
        },
    )
    assert not schema_refuses(values)
    env = container_env(render(values), "timesheets")
    names = [e["name"] for e in env]
    assert [n for n, count in collections.Counter(names).items() if count > 1] == []
    assert {"name": "REDIS_TIMEOUT_SECONDS", "value": "0.5"} in env
    assert names.index("REDIS_TIMEOUT_SECONDS") > names.index("PORT")
    assert "EXTRA_FROM_SECRET" in names


def test_the_code_limits_window_is_a_chart_value_of_its_own() -> None:
    """``identity.authorizeCodeWindowSeconds`` is AUTHORIZE_CODE_WINDOW_SECONDS (900 by default, the
    sign-in window's value, which the code limit shared before); the limit itself stays a tuning
    setting (``identity.env``)."""
    default = env_of(MINIMAL, "identity")
    assert default["AUTHORIZE_CODE_WINDOW_SECONDS"] == "900"
    values = deep_merge(
        MINIMAL,
        {"identity": {"authorizeCodeWindowSeconds": 60, "env": {"AUTHORIZE_MAX_CODES_PER_USER": 20}}},
    )
    assert not schema_refuses(values)
    env = env_of(values, "identity")
    assert (env["AUTHORIZE_CODE_WINDOW_SECONDS"], env["AUTHORIZE_MAX_CODES_PER_USER"]) == ("60", "20")
    assert "authorizeCodeWindowSeconds" in schema_refuses(
        deep_merge(MINIMAL, {"identity": {"authorizeCodeWindowSeconds": 0}})
    )


def test_the_in_flight_limit_is_passed_on_and_held_below_the_pool() -> None:
    """``gateway.maxInFlightPerSubject`` reaches the gateway; the schema keeps it below the 256 pooled
    connections per service the chart runs the gateway with (at or above them, one user's slow
    readers could hold every connection again: docs/runbook.md, "Requests refused for being in
    flight")."""
    env = {entry["name"]: entry.get("value") for entry in container_env(render(MINIMAL), "gateway")}
    assert env["GATEWAY_MAX_IN_FLIGHT_PER_SUBJECT"] == "64"
    custom = deep_merge(MINIMAL, {"gateway": {"maxInFlightPerSubject": 0}})
    env = {entry["name"]: entry.get("value") for entry in container_env(render(custom), "gateway")}
    assert env["GATEWAY_MAX_IN_FLIGHT_PER_SUBJECT"] == "0"
    assert "maxInFlightPerSubject" in schema_refuses(
        deep_merge(MINIMAL, {"gateway": {"maxInFlightPerSubject": 256}})
    )
    assert schema_refuses(deep_merge(MINIMAL, {"gateway": {"maxInFlightPerSubject": -1}}))


def test_the_token_failure_budget_is_a_chart_value() -> None:
    """``identity.tokenMaxFailuresPerAddress`` / ``identity.tokenFailureWindowSeconds`` are
    TOKEN_MAX_FAILURES_PER_ADDRESS / TOKEN_FAILURE_WINDOW_SECONDS (300 / 300 by default, the
    provider's own); the schema refuses a budget of 0 (every token request from an address refused)."""
    default = env_of(MINIMAL, "identity")
    assert (default["TOKEN_MAX_FAILURES_PER_ADDRESS"], default["TOKEN_FAILURE_WINDOW_SECONDS"]) == (
        "300",
        "300",
    )
    values = deep_merge(
        MINIMAL, {"identity": {"tokenMaxFailuresPerAddress": 2000, "tokenFailureWindowSeconds": 600}}
    )
    assert not schema_refuses(values)
    env = env_of(values, "identity")
    assert (env["TOKEN_MAX_FAILURES_PER_ADDRESS"], env["TOKEN_FAILURE_WINDOW_SECONDS"]) == ("2000", "600")
    assert "tokenMaxFailuresPerAddress" in schema_refuses(
        deep_merge(MINIMAL, {"identity": {"tokenMaxFailuresPerAddress": 0}})
    )


def test_the_sign_in_password_check_admission_is_a_chart_value() -> None:
    """``identity.passwordHashMaxWaiting`` / ``identity.passwordHashMaxWaitSeconds`` are
    PASSWORD_HASH_MAX_WAITING / PASSWORD_HASH_MAX_WAIT_SECONDS (256 / 10 by default, the provider's
    own); the schema refuses no admission at all and a wait past what the provider accepts (60 s)."""
    default = env_of(MINIMAL, "identity")
    assert (default["PASSWORD_HASH_MAX_WAITING"], default["PASSWORD_HASH_MAX_WAIT_SECONDS"]) == ("256", "10")
    values = deep_merge(
        MINIMAL, {"identity": {"passwordHashMaxWaiting": 64, "passwordHashMaxWaitSeconds": 5.5}}
    )
    assert not schema_refuses(values)
    env = env_of(values, "identity")
    assert (env["PASSWORD_HASH_MAX_WAITING"], env["PASSWORD_HASH_MAX_WAIT_SECONDS"]) == ("64", "5.5")
    assert "passwordHashMaxWaiting" in schema_refuses(
        deep_merge(MINIMAL, {"identity": {"passwordHashMaxWaiting": 0}})
    )
    assert "passwordHashMaxWaitSeconds" in schema_refuses(
        deep_merge(MINIMAL, {"identity": {"passwordHashMaxWaitSeconds": 61}})
    )
