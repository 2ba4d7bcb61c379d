"""The gateway's ``method`` labels come from a fixed set, whatever method a caller sends.

``gateway_requests_total{route,method,status}`` took the request's method as it came: any of the 34
the HTTP parser knows, on each API route template and on ``unmatched`` — series any anonymous caller
could add (svckit.metrics.method_label; found by a soak whose hostile clients sent a dozen methods).
"""

from __future__ import annotations

import aiohttp
from gateway.metrics import requests_total

from testkit.fixtures import HTTP_PARSER_METHODS, METHOD_LABELS

from .conftest import StartGateway


async def test_methods_a_caller_picks_are_not_label_values(start_gateway: StartGateway) -> None:
    """Every parsed method, without a token, to an API route and to no route (fails on main: 34
    method values)."""
    async with start_gateway() as url, aiohttp.ClientSession() as http:
        for method in HTTP_PARSER_METHODS:
            for path in ("/api/timesheets/1", "/api/label-probe"):
                async with http.request(method, url + path) as response:
                    await response.read()
                    assert response.status < 500, (method, path, response.status)
    # the gateway adds its per-worker sums at shutdown (and every second)
    values = {sample.labels["method"] for sample in next(iter(requests_total.collect())).samples}
    assert values <= METHOD_LABELS, sorted(values - METHOD_LABELS)
    assert "other" in values
