"""What a caller can make a service's ``/metrics`` grow by: label values come from fixed sets.

The HTTP parser (llhttp) takes 34 request methods — WebDAV's, SUBSCRIBE, PURGE, QUERY... — and each
one a route answers (405, or its handler) was a ``method`` label value of its own, on every route
template: ``http_request_duration_seconds`` alone is 16 series per (route, method), so a service of 15
routes could be made to export ~10,000 more series by 510 anonymous requests. Found by a 25-minute soak
whose hostile clients sent a dozen methods (identity: 199 → 1,377 series).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from svckit.app import create_service_app
from svckit.metricfiles import compact_dead_processes
from svckit.metrics import render_metrics
from svckit.settings import ServiceSettings, load_settings

from testkit.fixtures import HTTP_PARSER_METHODS, METHOD_LABELS, Caller, receiver_env, serve_app, user

ROUTE = "/label-probe/{id}"


async def probe(request: Request) -> Response:
    return JSONResponse({"ok": True})


@pytest.fixture(scope="module")
async def service(identity_keys: dict[str, str]) -> AsyncIterator[str]:
    settings = load_settings(ServiceSettings, env=receiver_env(identity_keys))
    async with serve_app(create_service_app(settings, [Route(ROUTE, probe, methods=["GET"])])) as url:
        yield url


def method_values(route: str) -> set[str]:
    names = ("http_requests_total", "http_request_duration_seconds_count")
    return {
        sample.labels["method"]
        for family in REGISTRY.collect()
        for sample in family.samples
        if sample.name in names and sample.labels.get("route") == route
    }


async def test_methods_a_caller_picks_are_not_label_values(service: str, caller: Caller) -> None:
    """Every parsed method, signed (to the route: 200 or 405) and anonymous (refused before any
    route: ``unmatched``): the labels name the usual methods and ``other`` (fails on main: 34 method
    values on each)."""
    async with aiohttp.ClientSession() as http:
        for method in HTTP_PARSER_METHODS:
            url = service + "/label-probe/1"
            signed = caller.headers(user("alice"), method, url)
            for headers in (signed, {}):
                async with http.request(method, url, headers=headers) as response:
                    await response.read()
                    assert response.status in (200, 401, 405), (method, response.status)
    for route in (ROUTE, "unmatched"):
        values = method_values(route)
        assert values <= METHOD_LABELS, sorted(values - METHOD_LABELS)
        assert "other" in values


@pytest.mark.unit
def test_method_label() -> None:
    from svckit.metrics import METRIC_METHODS, OTHER_METHOD, method_label

    assert METRIC_METHODS | {OTHER_METHOD} == METHOD_LABELS
    assert {method_label(m) for m in HTTP_PARSER_METHODS} == METRIC_METHODS | {OTHER_METHOD}
    assert method_label("GET") == "GET"
    assert method_label("PROPFIND") == OTHER_METHOD


#: label values a request could carry if one ever reached a label: quotes, backslashes, newlines, a
#: forged closing brace and a second sample, other line breaks, control and non-ASCII characters
HOSTILE_VALUES = (
    'a"b',
    "a\\b",
    "a\nb",
    '"} 1e9\nforged{route="x"} 1\n#',
    "\\n literally",
    "a\rb\x0bc\x0cd\x1ce\x85f\u2028g",
    "\x00\x1f\x7f",
    "é😀",
    "",
    "x" * 2000,
)

EXPOSER = """
import json, sys
from prometheus_client import Counter
from svckit.metrics import render_metrics

probe = Counter("hostile_probe_total", "Label values from a hostile caller.", ["value"])
for value in json.loads(sys.argv[1]):
    probe.labels(value).inc()
sys.stdout.buffer.write(render_metrics()[0])
"""


def hostile_samples(shown: str) -> list[str]:
    """The probe's label values as ``/metrics`` showed them; each must be one line and one sample."""
    families = list(text_string_to_metric_families(shown))
    assert "forged" not in {family.name for family in families}
    samples = [
        sample for family in families for sample in family.samples if sample.name == "hostile_probe_total"
    ]
    assert all(sample.value == 1 for sample in samples)
    lines = [line for line in shown.split("\n") if line.startswith("hostile_probe_total")]
    assert len(lines) == len(samples), lines
    return sorted(sample.labels["value"] for sample in samples)


@pytest.mark.unit
@pytest.mark.parametrize("multiprocess", [False, True], ids=["one process", "multiprocess directory"])
def test_label_values_cannot_break_the_exposition_or_add_series(
    multiprocess: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No label value may come from a request (docs/CONTRACTS.md "Metrics"); should one ever, it must
    still come back out of ``/metrics`` as the one value it was: escaped, not a line or a series of its
    own — as one process renders it, as the gateway renders its workers' files, and once a dead
    worker's files were merged into the directory's archives (:mod:`svckit.metricfiles`)."""
    env = {key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    if multiprocess:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path)
    shown = subprocess.run(
        [sys.executable, "-c", EXPOSER, json.dumps(HOSTILE_VALUES)],
        env=env,
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout.decode()
    assert hostile_samples(shown) == sorted(HOSTILE_VALUES)
    if multiprocess:
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
        assert compact_dead_processes(str(tmp_path))  # the exposer is gone: its files become archives
        assert hostile_samples(render_metrics()[0].decode()) == sorted(HOSTILE_VALUES)
