"""The route table: every API route against every scope, unknown routes, wrong methods, path tricks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from gateway.routes import RouteTableError, load_routes

from .conftest import Echo, Provider

ALL_SCOPES = [
    "read:timesheets",
    "create:timesheets",
    "delete:timesheets",
    "approve:timesheets",
    "read:audit",
    "batch:upload",
]
# (method, public path, upstream path, the one scope it needs)
ROUTES = [
    ("GET", "/api/timesheets", "/timesheets", "read:timesheets"),
    ("POST", "/api/timesheets", "/timesheets", "create:timesheets"),
    ("POST", "/api/timesheets/upload", "/timesheets/upload", "batch:upload"),
    ("GET", "/api/timesheets/5f0c", "/timesheets/5f0c", "read:timesheets"),
    ("DELETE", "/api/timesheets/5f0c", "/timesheets/5f0c", "delete:timesheets"),
    ("GET", "/api/approvals", "/approvals", "approve:timesheets"),
    ("PUT", "/api/approvals/5f0c", "/approvals/5f0c", "approve:timesheets"),
    ("GET", "/api/audit/events", "/audit/events", "read:audit"),
    ("GET", "/api/audit/verify", "/audit/verify", "read:audit"),
    ("GET", "/api/audit/checkpoints", "/audit/checkpoints", "read:audit"),
    ("GET", "/api/audit/checkpoint-keys", "/audit/checkpoint-keys", "read:audit"),
]


@pytest.mark.parametrize(("method", "path", "upstream_path", "needed"), ROUTES)
@pytest.mark.parametrize("granted", ALL_SCOPES)
async def test_scope_matrix(
    api: Any,
    gateway: str,
    provider: Provider,
    method: str,
    path: str,
    upstream_path: str,
    needed: str,
    granted: str,
) -> None:
    token = provider.scoped("openid", granted)
    kwargs: dict[str, Any] = {"json": {"x": 1}} if method in ("POST", "PUT") else {}
    status, headers, body = await api(method, gateway + path, token, **kwargs)
    if granted == needed:
        assert status == 200, body
        assert body["method"] == method
        assert body["path"] == upstream_path
    else:
        assert status == 403, body
        assert headers["WWW-Authenticate"] == (
            f'Bearer realm="timesheets", error="insufficient_scope", '
            f'error_description="The token lacks a required scope.", scope="{needed}"'
        )
        assert body["required_scope"] == needed
        assert headers["Content-Type"] == "application/problem+json"


async def test_all_scopes_pass_every_route(api: Any, gateway: str, provider: Provider) -> None:
    token = provider.scoped(*ALL_SCOPES)
    for method, path, _, _ in ROUTES:
        status, _, body = await api(
            method, gateway + path, token, json={} if method in ("POST", "PUT") else None
        )
        assert status == 200, (method, path, body)


@pytest.mark.parametrize(
    "path",
    [
        "/api/nope",
        "/api",
        "/api/",
        "/api/timesheets/1/2",
        "/api/internal/events",
        "/api/audit",
        "/api/audit/events/extra",
        "/api/Timesheets",
    ],
)
async def test_unknown_route_is_404_without_touching_upstreams(
    api: Any, gateway: str, provider: Provider, echo: Echo, path: str
) -> None:
    before = echo.requests
    status, headers, body = await api("GET", gateway + path, provider.scoped(*ALL_SCOPES))
    assert status == 404
    assert headers["Content-Type"] == "application/problem+json"
    assert body["status"] == 404
    assert echo.requests == before


async def test_unknown_route_is_404_even_without_token(api: Any, gateway: str) -> None:
    status, _, _ = await api("GET", gateway + "/api/internal/events")
    assert status == 404


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PATCH", "/api/timesheets", "GET, HEAD, POST"),
        ("DELETE", "/api/approvals", "GET, HEAD"),
        ("GET", "/api/approvals/1", "PUT"),
        ("POST", "/api/audit/events", "GET, HEAD"),
        ("GET", "/api/timesheets/upload", "POST"),
    ],
)
async def test_wrong_method_is_405(
    api: Any, gateway: str, provider: Provider, echo: Echo, method: str, path: str, allow: str
) -> None:
    before = echo.requests
    status, headers, body = await api(method, gateway + path, provider.scoped(*ALL_SCOPES))
    assert status == 405, body
    assert headers["Allow"] == allow
    assert echo.requests == before


@pytest.mark.parametrize(
    "raw",
    [
        "/api/timesheets/..%2Fapprovals",
        "/api/timesheets/%2e%2e",
        "/api/timesheets/a%2Fb",
        "/api/timesheets/a%5Cb",
        "/api//timesheets",
        "/api/timesheets/%00",
    ],
)
async def test_ambiguous_paths_are_refused(api: Any, gateway: str, provider: Provider, raw: str) -> None:
    import yarl

    url = yarl.URL(gateway + raw, encoded=True)
    status, _, body = await api("GET", url, provider.scoped(*ALL_SCOPES))
    assert status == 400, body
    assert "dot segments" in body["detail"]


@pytest.mark.parametrize(
    ("raw", "status", "detail"),
    [
        # issue 14: authorised as /api/timesheets, forwarded as "pi/timesheets" before
        ("/%61pi/timesheets", 400, "literally"),
        ("/%41PI/timesheets", 400, "literally"),
        ("/api%2Ftimesheets", 400, "literally"),
        ("/API/timesheets", 404, "No API route"),
        ("/Api/timesheets", 404, "No API route"),
        # routing reads the raw path too: an encoded letter in a literal segment is no route at all
        ("/api/time%73heets", 404, "No API route"),
        ("/api/%74imesheets/5f0c", 404, "No API route"),
    ],
)
async def test_targets_not_literally_under_api_are_refused_never_rewritten(
    api: Any, gateway: str, provider: Provider, echo: Echo, raw: str, status: int, detail: str
) -> None:
    import yarl

    before = echo.requests
    url = yarl.URL(gateway + raw, encoded=True)
    got, headers, body = await api("GET", url, provider.scoped(*ALL_SCOPES))
    assert got == status, body
    assert headers["Content-Type"] == "application/problem+json"
    assert detail in body["detail"]
    assert echo.requests == before  # nothing reached an upstream


async def test_percent_encoded_id_is_forwarded_verbatim(api: Any, gateway: str, provider: Provider) -> None:
    import yarl

    url = yarl.URL(gateway + "/api/timesheets/caf%C3%A9?x=%20y", encoded=True)
    status, _, body = await api("GET", url, provider.scoped("read:timesheets"))
    assert status == 200, body  # the echo verified the signature over the raw path
    assert body["raw_path"] == "/timesheets/caf%C3%A9"
    assert body["query"] == "x=%20y"


ROUTE_X = 'routes: [{method: GET, path: "/api/x", upstream: timesheets, '


@pytest.mark.unit
def test_route_table_errors_name_the_entry(tmp_path: Path) -> None:
    upstreams = frozenset({"timesheets"})
    cases = {
        "routes: []": "non-empty",
        "routes: [{method: GET, path: /x, upstream: timesheets}]": "route #1: path",
        'routes: [{method: BREW, path: "/api/x", upstream: timesheets}]': "route #1: method",
        'routes: [{method: GET, path: "/api/x", upstream: nowhere}]': "route #1: upstream",
        'routes: [{method: GET, path: "/api/x", upstream: timesheets, scopes: "a b"}]': "route #1: scopes",
        'routes: [{method: GET, path: "/api/x", upstream: timesheets, require: some}]': "route #1: require",
        ROUTE_X + "max_body_bytes: 16MiB}]": "route #1: max_body",
        ROUTE_X + "max_body_bytes: -1}]": "route #1: max_body",
        ROUTE_X + "max_body_bytes: true}]": "route #1: max_body",
        'routes: [{method: GET, path: "/api/{x}", upstream: timesheets},'
        ' {method: GET, path: "/api/{y}", upstream: timesheets}]': "duplicate",
    }
    for text, fragment in cases.items():
        path = tmp_path / "routes.yaml"
        path.write_text(text)
        with pytest.raises(RouteTableError, match=fragment):
            load_routes(path, upstreams)


async def test_any_of_scopes_and_route_file_override(
    api: Any, start_gateway: Any, provider: Provider, tmp_path: Path
) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        "routes:\n"
        '  - {method: GET, path: "/api/timesheets", upstream: timesheets,'
        " scopes: [read:timesheets, read:audit], require: any}\n"
        '  - {method: GET, path: "/api/approvals", upstream: approvals,'
        " scopes: [approve:timesheets, read:timesheets], require: all}\n"
    )
    async with start_gateway(gateway_routes_file=routes) as gateway:
        assert (await api("GET", gateway + "/api/timesheets", provider.scoped("read:audit")))[0] == 200
        assert (await api("GET", gateway + "/api/timesheets", provider.scoped("openid")))[0] == 403
        assert (await api("GET", gateway + "/api/approvals", provider.scoped("approve:timesheets")))[0] == 403
        both = provider.scoped("approve:timesheets", "read:timesheets")
        assert (await api("GET", gateway + "/api/approvals", both))[0] == 200
        assert (await api("GET", gateway + "/api/audit/events", both))[0] == 404
