"""What a caller can make a service's ``/metrics`` grow by: label values come from fixed sets.

The HTTP parser (llhttp) takes 34 request methods — WebDAV's, SUBSCRIBE, PURGE, QUERY... — and each
one a route answers (405, or its handler) was a ``method`` label value of its own, on every route
template: ``http_request_duration_seconds`` alone is 16 series per (route, method), so a service of 15
routes could be made to export ~10,000 more series by 510 anonymous requests. Found by a 25-minute soak
whose hostile clients sent a dozen methods (identity: 199 → 1,377 series).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client import REGISTRY
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from svckit.app import create_service_app
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
