"""The OpenAPI generator: documents from the contracts, and the route/document comparison that
catches drift in both directions."""

from __future__ import annotations

from typing import Any

import pytest
from openapi_spec_validator import validate
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from svckit.app import create_service_app
from svckit.contracts.operations import Answer, Link, Operation
from svckit.openapi import Placement, app_operations, build, documented_operations, query_parameters
from svckit.settings import ServiceSettings, load_settings

from testkit.fixtures import new_pair_keys

pytestmark = pytest.mark.unit


async def nothing(request: Request) -> Response:
    return Response()


class ThingQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: str | None = Field(None, alias="from", min_length=1, description="Where to start.")
    limit: int = Field(10, ge=1, le=20)


class Thing(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"id": "a", "size": 1}]})

    id: str
    size: int


OPERATION = Operation(
    "listThings",
    "things",
    "GET",
    "/things/{id}",
    "Things",
    (Answer(200, "Things.", Thing, links={"Again": Link("listThings", "id", "$response.body#/id")}),),
    query=ThingQuery,
)


def test_query_models_become_parameters_named_by_alias_without_null() -> None:
    parameters = {p["name"]: p for p in query_parameters(ThingQuery)}
    assert parameters["from"] == {
        "name": "from",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "minLength": 1},
        "description": "Where to start.",
    }
    assert parameters["limit"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 20, "default": 10}


def test_a_built_document_is_valid_openapi_with_models_answers_and_links() -> None:
    doc = build(
        title="t",
        version="1",
        description="d",
        placements=[Placement(OPERATION, "/api/things/{id}", [{"bearer": ["read:things"]}])],
        security_schemes={"bearer": {"type": "http", "scheme": "bearer"}},
    )
    validate(doc)  # a valid OpenAPI 3.1 document (responses need descriptions, and so on)
    operation: dict[str, Any] = doc["paths"]["/api/things/{id}"]["get"]
    assert operation["security"] == [{"bearer": ["read:things"]}]
    assert [p["name"] for p in operation["parameters"]] == ["id", "from", "limit"]
    ok = operation["responses"]["200"]
    assert ok["content"]["application/json"]["example"] == {"id": "a", "size": 1}
    assert ok["links"]["Again"] == {"operationId": "listThings", "parameters": {"id": "$response.body#/id"}}
    # a query model brings its 422 problem; the problem schema is always there
    assert operation["responses"]["422"]["content"]["application/problem+json"]["schema"] == {
        "$ref": "#/components/schemas/Problem"
    }
    assert {"Thing", "Problem", "FieldError"} <= set(doc["components"]["schemas"])


def test_route_and_document_comparison() -> None:
    settings = load_settings(ServiceSettings, env=new_pair_keys())
    doc = build(
        title="t",
        version="1",
        description="d",
        placements=[Placement(OPERATION, "/things/{id}", [])],
        security_schemes={},
    )
    app = create_service_app(
        settings,
        [Route("/things/{id}", nothing, methods=["GET"]), Route("/things/{id}", nothing, methods=["DELETE"])],
        openapi=doc,
    )
    assert app_operations(app) == {("/things/{id}", "get"), ("/things/{id}", "delete")}
    assert documented_operations(doc) == {("/things/{id}", "get")}
