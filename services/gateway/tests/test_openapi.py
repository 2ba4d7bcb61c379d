"""The client-facing OpenAPI document: generated from routes.yaml and the contracts, public at
``GET /api/openapi.json``, describing every enforced constraint and nothing internal."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from gateway import openapi
from gateway.routes import load_routes
from openapi_spec_validator import validate
from pydantic import BaseModel
from svckit.contracts import approvals, timesheets
from svckit.contracts.operations import SERVICES

ROUTES_FILE = Path(openapi.__file__).parent / "routes.yaml"


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return openapi.document(load_routes(ROUTES_FILE, frozenset(SERVICES)))


def schema_of(doc: dict[str, Any], fragment: dict[str, Any]) -> dict[str, Any]:
    """A schema fragment with the document's components, so that $refs resolve."""
    return {**fragment, "components": doc["components"]}


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, item in doc["paths"].items() for method, op in item.items()]


@pytest.mark.unit
def test_every_route_is_documented_with_its_scopes_and_both_token_kinds(doc: dict[str, Any]) -> None:
    validate(doc)
    table = load_routes(ROUTES_FILE, frozenset(SERVICES))
    documented = {(path, method.upper()) for path, method, _ in operations(doc)}
    assert documented == {(route.template, route.method) for route in table.routes}
    for route in table.routes:
        op = doc["paths"][route.template][route.method.lower()]
        scopes = sorted(route.scopes)
        assert op["security"] == [{"bearer": scopes}, {"dpop": scopes, "dpopProof": []}]
        assert op["responses"]["401"]["headers"]["WWW-Authenticate"]
        assert "429" in op["responses"]
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert schemes["dpop"]["scheme"] == "dpop"
    assert schemes["dpopProof"] == {**schemes["dpopProof"], "type": "apiKey", "in": "header", "name": "DPoP"}


@pytest.mark.unit
def test_nothing_internal_is_described(doc: dict[str, Any]) -> None:
    text = json.dumps(doc).lower()
    assert "x-identity" not in text
    assert "gatewayidentity" not in text
    assert not [path for path in doc["paths"] if "/internal" in path]
    assert "ApplyDecision" not in doc["components"]["schemas"]


@pytest.mark.unit
def test_the_enforced_constraints_are_published(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    entry_in = schemas["EntryIn"]["properties"]
    assert entry_in["hours"] | {"description": ""} == {
        "type": "number",
        "exclusiveMinimum": 0,
        "maximum": 24,
        "multipleOf": 0.25,
        "description": "",
    }
    assert entry_in["project"]["minLength"] == 1
    assert entry_in["project"]["maxLength"] == 100
    assert entry_in["date"]["format"] == "date"
    assert "2000-01-01 to 2099-12-31" in entry_in["date"]["description"]
    assert not re.fullmatch(entry_in["date"]["pattern"], "9999-12-31")
    notes = entry_in["notes"]["anyOf"][0]
    assert notes["maxLength"] == 2000
    assert re.fullmatch(notes["pattern"], "two\nlines\tand a tab")
    assert not re.fullmatch(notes["pattern"], "bell\x07")
    assert not re.fullmatch(entry_in["project"]["pattern"], "   ")
    comment = schemas["DecisionIn"]["properties"]["comment"]["anyOf"][0]
    assert not re.fullmatch(comment["pattern"], "nul\x00")
    assert schemas["UploadIn"]["properties"]["entries"]["maxItems"] == timesheets.MAX_UPLOAD_ENTRIES

    create = doc["paths"]["/api/timesheets"]["post"]
    [key] = [p for p in create["parameters"] if p["name"] == "Idempotency-Key"]
    assert key["in"] == "header"
    assert key["schema"]["maxLength"] == 255
    assert re.fullmatch(key["schema"]["pattern"], "order-2026-11-23/7")
    assert not re.fullmatch(key["schema"]["pattern"], "with space")
    listing = {p["name"]: p["schema"] for p in doc["paths"]["/api/timesheets"]["get"]["parameters"]}
    assert (listing["limit"]["minimum"], listing["limit"]["maximum"]) == (1, 100)
    assert listing["cursor"]["pattern"] == "^[A-Za-z0-9_-]+$"
    audit = {p["name"]: p["schema"] for p in doc["paths"]["/api/audit/events"]["get"]["parameters"]}
    assert audit["cursor"]["maxLength"] == 64
    assert audit["from"]["format"] == "date-time"


@pytest.mark.unit
def test_errors_are_problem_documents_with_examples_that_fit(doc: dict[str, Any]) -> None:
    problem = schema_of(doc, {"$ref": "#/components/schemas/Problem"})
    for path, method, op in operations(doc):
        for status, answer in op["responses"].items():
            if int(status) < 400:
                continue
            [(media, content)] = answer["content"].items()
            assert media == "application/problem+json", (path, method, status)
            jsonschema.validate(content["example"], problem, cls=jsonschema.Draft202012Validator)
            assert content["example"]["status"] == int(status)


@pytest.mark.unit
def test_request_and_response_examples_fit_their_schemas_and_models(doc: dict[str, Any]) -> None:
    models: dict[str, type[BaseModel]] = {
        "EntryIn": timesheets.EntryIn,
        "UploadIn": timesheets.UploadIn,
        "DecisionIn": approvals.DecisionIn,
    }
    seen = 0
    for _path, _method, op in operations(doc):
        body = op.get("requestBody")
        if body is not None:
            media = body["content"]["application/json"]
            name = media["schema"]["$ref"].rsplit("/", 1)[1]
            for example in media["examples"].values():
                jsonschema.validate(example["value"], schema_of(doc, media["schema"]))
                models[name].model_validate(example["value"])  # the service accepts it too
                seen += 1
        for answer in op["responses"].values():
            content = answer.get("content", {}).get("application/json")
            if content is not None:
                validator = jsonschema.Draft202012Validator(
                    schema_of(doc, content["schema"]), format_checker=jsonschema.FormatChecker()
                )
                validator.validate(content["example"])
                seen += 1
    assert seen >= 10


@pytest.mark.unit
def test_stateful_links_chain_create_read_delete_and_the_approvals_flow(doc: dict[str, Any]) -> None:
    ids = {op["operationId"] for _, _, op in operations(doc)}
    created = doc["paths"]["/api/timesheets"]["post"]["responses"]["201"]["links"]
    assert {link["operationId"] for link in created.values()} == {"getEntry", "deleteEntry"}
    queue = doc["paths"]["/api/approvals"]["get"]["responses"]["200"]["links"]
    assert [link["operationId"] for link in queue.values()] == ["decide"]
    for _, _, op in operations(doc):
        for answer in op["responses"].values():
            for link in answer.get("links", {}).values():
                assert link["operationId"] in ids


async def test_served_publicly_by_the_gateway(api: Any, gateway: str) -> None:
    status, headers, body = await api("GET", gateway + "/api/openapi.json")  # no token
    assert status == 200
    assert headers["content-type"].startswith("application/json")
    served = body if isinstance(body, dict) else json.loads(body)
    assert served == openapi.document(load_routes(ROUTES_FILE, frozenset(SERVICES)))
    # Any other /api path still needs a token.
    status, _, _ = await api("GET", gateway + "/api/openapi.yaml")
    assert status in (401, 404)
