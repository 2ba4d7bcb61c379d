"""The OpenAPI helpers: the route/document comparison catches both directions of drift."""

from __future__ import annotations

import pytest
from openapi_spec_validator import validate
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from svckit.app import create_service_app
from svckit.openapi import app_operations, document, documented_operations, json_body, problem
from svckit.settings import ServiceSettings, load_settings

from testkit.fixtures import new_identity_keys

pytestmark = pytest.mark.unit


async def nothing(request: Request) -> Response:
    return Response()


def test_route_and_document_comparison() -> None:
    settings = load_settings(ServiceSettings, env={"IDENTITY_KEYS": new_identity_keys()})
    doc = document(
        title="t",
        version="1",
        description="d",
        paths={
            "/things": {"get": {"responses": {"200": json_body({"type": "object"}), "404": problem("no")}}}
        },
        schemas={},
    )
    app = create_service_app(
        settings,
        [Route("/things", nothing, methods=["GET"]), Route("/things/{id}", nothing, methods=["DELETE"])],
        openapi=doc,
    )
    assert app_operations(app) == {("/things", "get"), ("/things/{id}", "delete")}
    assert documented_operations(doc) == {("/things", "get")}
    assert doc["openapi"] == "3.1.0"
    validate(doc)  # a valid OpenAPI 3.1 document (responses need descriptions, and so on)
    assert "Problem" in doc["components"]["schemas"]
