"""Scope/service requirements and query-string validation, over real HTTP."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from svckit.app import create_service_app
from svckit.authz import requires_scope, requires_service
from svckit.identity import Identity
from svckit.problems import Problem
from svckit.query import integer_parameters, parse_query
from svckit.settings import ServiceSettings, load_settings
from yarl import URL

from testkit.fixtures import Caller, receiver_env, serve_app, user


class Listing(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    limit: int = Field(default=50, ge=1, le=100)
    from_: dt.date | None = Field(default=None, alias="from")


@requires_scope("read:things")
async def list_things(request: Request) -> Response:
    query = parse_query(request, Listing)
    return JSONResponse({"limit": query.limit, "from": str(query.from_)})


@requires_service("approvals")
async def internal(request: Request) -> Response:
    return JSONResponse({"ok": True})


@pytest.fixture(scope="module")
async def base_url(identity_keys: dict[str, str]) -> AsyncIterator[str]:
    settings = load_settings(ServiceSettings, env=receiver_env(identity_keys))
    routes = [Route("/things", list_things), Route("/internal/x", internal)]
    async with serve_app(create_service_app(settings, routes)) as url:
        yield url


async def get(caller: Caller, identity: Identity, url: str) -> tuple[int, Any]:
    headers = caller.headers(identity, "GET", url)
    target = URL(url, encoded=True)  # byte for byte, as signed (aiohttp would re-quote "%zz")
    async with aiohttp.ClientSession() as session, session.get(target, headers=headers) as response:
        return response.status, await response.json(content_type=None)


@pytest.mark.unit
def test_requirements_are_readable_from_the_endpoint() -> None:
    assert list_things.required_scope == "read:things"  # type: ignore[attr-defined]
    assert internal.required_service == frozenset({"approvals"})  # type: ignore[attr-defined]


async def test_scope_missing_is_403_naming_it(base_url: str, caller: Caller) -> None:
    status, body = await get(caller, user("alice", "read:other"), f"{base_url}/things")
    assert status == 403
    assert body["required_scope"] == "read:things"
    status, body = await get(
        caller, user("alice", "read:things"), f"{base_url}/things?limit=5&from=2026-01-02"
    )
    assert (status, body) == (200, {"limit": 5, "from": "2026-01-02"})


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=abc", "limit"),
        ("from=yesterday", "from"),
        ("stauts=x", "stauts"),
        ("limit=1&limit=2", "limit"),
        # pydantic alone reads each of these as 10 (or 1): not an integer as the document writes one
        ("limit=1_0", "limit"),
        ("limit=%2010", "limit"),
        ("limit=10%20", "limit"),
        ("limit=%2B10", "limit"),
        ("limit=10.0", "limit"),
        ("limit=%D9%A1", "limit"),  # ARABIC-INDIC DIGIT ONE (pydantic refuses it too)
    ],
)
async def test_bad_query_names_the_parameter(base_url: str, caller: Caller, query: str, field: str) -> None:
    status, body = await get(caller, user("alice", "read:things"), f"{base_url}/things?{query}")
    assert status == 422
    assert [error["field"] for error in body["errors"]] == [field]
    assert body["errors"][0]["loc"][0] == "query"


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("limit=%zz", "percent-escape"),
        ("limit=5%", "percent-escape"),
        ("lim%2it=5", "percent-escape"),
        ("limit=%FF", "UTF-8"),
        ("limit=%ED%A0%80", "UTF-8"),  # a surrogate, in CESU-8
    ],
)
async def test_malformed_query_strings_are_400(base_url: str, caller: Caller, query: str, says: str) -> None:
    status, body = await get(caller, user("alice", "read:things"), f"{base_url}/things?{query}")
    assert status == 400, body
    assert says in body["detail"]


async def test_internal_route_only_for_named_services(base_url: str, caller: Caller) -> None:
    url = f"{base_url}/internal/x"
    assert (await get(caller, user("alice", "read:things"), url))[0] == 403
    assert (await get(caller, Identity.service("gateway"), url))[0] == 403
    assert (await get(caller, Identity.service("approvals"), url)) == (200, {"ok": True})


async def test_deeply_nested_body_is_400(identity_keys: dict[str, str], caller: Caller) -> None:
    from pydantic import BaseModel as Model
    from svckit.body import parse_body

    async def take(request: Request) -> Response:
        await parse_body(request, Model)
        return JSONResponse({})

    settings = load_settings(ServiceSettings, env=receiver_env(identity_keys))
    async with serve_app(create_service_app(settings, [Route("/x", take, methods=["POST"])])) as url:
        deep = b"[" * 100_000 + b"]" * 100_000
        headers = caller.headers(user("alice"), "POST", f"{url}/x", body=deep)
        headers["content-type"] = "application/json"
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{url}/x", data=deep, headers=headers) as response,
        ):
            assert response.status == 400
            assert "nests deeper than" in (await response.json(content_type=None))["detail"]


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: int = Field(default=50, ge=1, le=100)


@pytest.mark.unit
def test_integer_parameters_are_found_by_alias_and_name_whether_optional_or_not() -> None:
    class Paging(BaseModel):
        model_config = ConfigDict(populate_by_name=True)

        size: int = 5
        after: int | None = Field(default=None, alias="from")
        day: dt.date | None = None
        flag: bool = False

    assert integer_parameters(Paging) == {"size", "after", "from"}
    assert parse_query(request_with(b"size=010&from=-3"), Paging).model_dump() == {
        "size": 10,
        "after": -3,
        "day": None,
        "flag": False,
    }


def request_with(query: bytes) -> Request:
    return Request({"type": "http", "method": "GET", "path": "/", "query_string": query, "headers": []})


@pytest.mark.unit
def test_a_frozen_query_model_is_made_once_per_query_string_and_refusals_are_never_kept() -> None:
    first = parse_query(request_with(b"limit=7"), Frozen)
    assert first.limit == 7
    assert parse_query(request_with(b"limit=7"), Frozen) is first  # kept: it cannot change
    assert parse_query(request_with(b"limit=8"), Frozen).limit == 8
    for _ in range(2):
        with pytest.raises(Problem) as refused:
            parse_query(request_with(b"limit=0"), Frozen)
        assert refused.value.status == 422
    for _ in range(2):
        with pytest.raises(Problem):
            parse_query(request_with(b"limit=7&limit=7"), Frozen)
    # a model that is not frozen is made each time: a handler may change its copy
    mutable = parse_query(request_with(b"limit=7"), Listing)
    assert parse_query(request_with(b"limit=7"), Listing) is not mutable
