"""OpenAPI 3.1 documents generated from the contracts (:mod:`svckit.contracts`).

Two kinds of document come out of :func:`build`:

- each service's internal ``/openapi.json`` (:func:`service_document`): its own operations, paths as
  the service routes them, the gateway-signed identity as the security scheme, and for each
  operation the scope (or service principal) its handler declares;
- the gateway's public ``/api/openapi.json`` (``gateway.openapi``): the operations ``routes.yaml``
  exposes, under ``/api``, with bearer and DPoP security and the route's scopes. It never mentions
  the internal identity headers.

Schemas are the pydantic models' own JSON Schemas (requests in validation mode, responses in
serialization mode); query parameters are the fields of the query models. Nothing here is written
by hand per operation except what :mod:`svckit.contracts.operations` says.

The checks tests run are here too: every route the app serves is documented, and nothing documented
is missing from the app (:func:`app_operations`, :func:`documented_operations`).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Route

from .contracts.operations import IDEMPOTENCY_KEY_PATTERN, Answer, Operation, operations_of, problem_answer
from .contracts.problem import Problem

OPERATIONAL_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})
METHODS = ("get", "put", "post", "delete", "patch")
REF = "#/components/schemas/{model}"
JSON = "application/json"
PROBLEM_JSON = "application/problem+json"
_PATH_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")

Mode = Literal["validation", "serialization"]

IDENTITY_SECURITY_SCHEME: dict[str, Any] = {
    "type": "apiKey",
    "in": "header",
    "name": "X-Identity-Signature",
    "description": (
        "The gateway-signed identity (X-Identity-* headers, HMAC over identity and request line; "
        "see docs/CONTRACTS.md). Requests without a verifying identity get 401."
    ),
}

IDEMPOTENCY_KEY_PARAMETER: dict[str, Any] = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": IDEMPOTENCY_KEY_PATTERN},
    "description": (
        "1-255 visible ASCII characters (the service also accepts the key as a quoted string). A retry "
        "with the same key and body replays the first answer (header Idempotent-Replayed: true) and "
        "creates nothing; the same key with a different body answers 422. Keys are per caller and "
        "remembered for 24 hours (IDEMPOTENCY_TTL_HOURS)."
    ),
    "example": "2f6c0e1c-4b7a-4d2e-9c55-6b0d3f8e1a27",
}


@dataclass(frozen=True)
class Placement:
    """An operation as one document shows it: at ``path``, with its security and extra answers."""

    operation: Operation
    path: str
    security: Sequence[Mapping[str, Sequence[str]]]
    answers: Sequence[Answer] = ()
    extensions: Mapping[str, Any] = field(default_factory=dict)


# ---- schemas -------------------------------------------------------------------------------------


class Schemas:
    """The models a document uses, turned into ``components.schemas`` in one pass (shared ``$defs``)."""

    def __init__(self) -> None:
        self._wanted: dict[tuple[type[BaseModel], Mode], None] = {(Problem, "serialization"): None}

    def want(self, model: type[BaseModel], mode: Mode) -> dict[str, str]:
        self._wanted[(model, mode)] = None
        return {"$ref": REF.format(model=model.__name__)}

    def components(self) -> dict[str, Any]:
        keys, top = models_json_schema(list(self._wanted), ref_template=REF)
        for (model, _mode), ref in keys.items():
            expected = REF.format(model=model.__name__)
            if ref.get("$ref") != expected:  # one name per model: same model in both modes must agree
                raise ValueError(f"{model.__name__} has different input and output schemas")
        schemas = dict(sorted(top.get("$defs", {}).items()))
        for schema in schemas.values():
            for prop in schema.get("properties", {}).values():
                prop.pop("title", None)  # pydantic's title is the field name again: noise in every client
        return schemas


def _examples(model: type[BaseModel]) -> list[Any]:
    extra = model.model_config.get("json_schema_extra")
    if isinstance(extra, dict):
        examples = extra.get("examples")
        if isinstance(examples, list):
            return list(examples)
    return []


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query field ``X | None = None``: the parameter is simply absent, never ``null``."""
    schema = copy.deepcopy(schema)
    schema.pop("title", None)
    if "default" in schema and schema["default"] is None:
        del schema["default"]
    branches = schema.get("anyOf")
    if isinstance(branches, list):
        rest = [b for b in branches if b != {"type": "null"}]
        if len(rest) == 1:
            del schema["anyOf"]
            inner = dict(rest[0])
            inner.update(schema)  # the field's description wins over the type's
            schema = inner
    return schema


def query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """One OpenAPI query parameter per field of a query model (aliases are the parameter names)."""
    schema = model.model_json_schema(by_alias=True, ref_template=REF, mode="validation")
    required = set(schema.get("required", ()))
    parameters = []
    for name, prop in schema.get("properties", {}).items():
        item = _without_null(prop)
        description = item.pop("description", None)
        parameter: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": item,
        }
        if description:
            parameter["description"] = description
        parameters.append(parameter)
    return parameters


def path_parameters(path: str) -> list[dict[str, Any]]:
    """Path variables: every ``{id}`` of the platform names an entry by its UUID."""
    parameters = []
    for name in _PATH_PARAM.findall(path):
        schema = {"type": "string", "format": "uuid"} if name == "id" else {"type": "string"}
        parameters.append(
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": schema,
                "description": "The entry's id (a UUID; anything else names no entry: 404)."
                if name == "id"
                else "A path segment.",
            }
        )
    return parameters


# ---- answers -------------------------------------------------------------------------------------


def _answer(answer: Answer, schemas: Schemas) -> dict[str, Any]:
    response: dict[str, Any] = {"description": answer.description}
    if answer.model is not None:
        media: dict[str, Any] = {"schema": schemas.want(answer.model, "serialization")}
        examples = _examples(answer.model)
        if examples:
            media["example"] = examples[0]
        response["content"] = {JSON: media}
    elif answer.problem is not None:
        response["content"] = {
            PROBLEM_JSON: {"schema": schemas.want(Problem, "serialization"), "example": dict(answer.problem)}
        }
    if answer.headers:
        response["headers"] = {name: dict(header) for name, header in answer.headers.items()}
    if answer.links:
        response["links"] = {
            name: {
                "operationId": link.operation_id,
                "parameters": {link.parameter: link.expression},
                **({"description": link.description} if link.description else {}),
            }
            for name, link in answer.links.items()
        }
    return response


def body_answers(operation: Operation) -> list[Answer]:
    """What the kit's body reader answers for any JSON body (svckit.body)."""
    if operation.body is None:
        return []
    return [
        problem_answer(
            400,
            "Bad Request",
            "The body is not JSON (or is empty, or nests too deeply), or a header is malformed.",
            "The body is not valid JSON: Expecting value: line 1 column 1 (char 0)",
        ),
        problem_answer(413, "Content Too Large", "The body is too large.", "The request body is too large."),
        problem_answer(
            415,
            "Unsupported Media Type",
            "The body is not application/json, or is in a content coding (a Content-Encoding other "
            "than identity: Accept-Encoding says so).",
            "Send the body as application/json.",
        ),
        problem_answer(
            422,
            "Unprocessable Content",
            "Invalid fields; errors[] names each one.",
            "The request has invalid fields.",
            errors=[
                {
                    "field": "hours",
                    "loc": ["hours"],
                    "message": "must be in quarter hours (a multiple of 0.25)",
                    "type": "value_error",
                }
            ],
        ),
    ]


def query_answers(operation: Operation) -> list[Answer]:
    if operation.query is None:
        # an operation without query parameters refuses any it is given (svckit.query.NoQuery)
        return [
            problem_answer(
                422,
                "Unprocessable Content",
                "The operation takes no query parameters: one given is refused (errors[] names it), "
                "and nothing is done.",
                "The query string has invalid parameters.",
                errors=[
                    {
                        "field": "dry_run",
                        "loc": ["query", "dry_run"],
                        "message": "this operation takes no query parameters",
                        "type": "extra_forbidden",
                    }
                ],
            )
        ]
    return [
        problem_answer(
            422,
            "Unprocessable Content",
            "A query parameter is invalid, unknown or repeated; errors[] names it.",
            "The query string has invalid parameters.",
            errors=[
                {
                    "field": "limit",
                    "loc": ["query", "limit"],
                    "message": "Input should be less than or equal to 100",
                    "type": "less_than_equal",
                }
            ],
        )
    ]


def _merged(placement: Placement) -> list[Answer]:
    """The operation's own answers win; then the document's; then those of its body and query."""
    merged: dict[int, Answer] = {}
    op = placement.operation
    for answer in (*op.answers, *placement.answers, *body_answers(op), *query_answers(op)):
        merged.setdefault(answer.status, answer)
    return [merged[status] for status in sorted(merged)]


# ---- the document --------------------------------------------------------------------------------


def _operation(placement: Placement, schemas: Schemas) -> dict[str, Any]:
    op = placement.operation
    document: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary}
    if op.description:
        document["description"] = op.description
    if op.tag:
        document["tags"] = [op.tag]
    parameters = path_parameters(placement.path)
    if op.query is not None:
        parameters += query_parameters(op.query)
    if op.idempotency_key:
        parameters.append(dict(IDEMPOTENCY_KEY_PARAMETER))
    if parameters:
        document["parameters"] = parameters
    if op.body is not None:
        media: dict[str, Any] = {"schema": schemas.want(op.body, "validation")}
        examples = _examples(op.body)
        if examples:
            media["examples"] = {f"example{n}": {"value": value} for n, value in enumerate(examples, 1)}
        document["requestBody"] = {"required": True, "content": {JSON: media}}
    for model in op.also:
        schemas.want(model, "validation")
    document["responses"] = {str(a.status): _answer(a, schemas) for a in _merged(placement)}
    document["security"] = [dict(requirement) for requirement in placement.security]
    document.update(placement.extensions)
    return document


def build(
    *,
    title: str,
    version: str,
    description: str,
    placements: Iterable[Placement],
    security_schemes: Mapping[str, Any],
    servers: Iterable[Mapping[str, str]] = ({"url": "/"},),
    tags: Iterable[Mapping[str, str]] = (),
) -> dict[str, Any]:
    schemas = Schemas()
    paths: dict[str, dict[str, Any]] = {}
    for placement in placements:
        item = paths.setdefault(placement.path, {})
        item[placement.operation.method.lower()] = _operation(placement, schemas)
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "servers": [dict(server) for server in servers],
        "paths": paths,
        "components": {"schemas": schemas.components(), "securitySchemes": dict(security_schemes)},
    }
    if tags:
        document["tags"] = [dict(tag) for tag in tags]
    return document


# ---- the services' own documents -------------------------------------------------------------------


def service_answers(operation: Operation) -> list[Answer]:
    """What the kit answers around any service handler."""
    forbidden = (
        "The caller is not a platform service allowed here."
        if operation.internal
        else "The identity lacks the operation's scope."
    )
    return [
        problem_answer(
            401,
            "Unauthorized",
            "No gateway-signed identity, or it does not verify.",
            "The request carries no gateway-signed identity.",
            reason="missing",
        ),
        problem_answer(403, "Forbidden", forbidden, "This operation needs the scope 'read:timesheets'."),
        Answer(
            503,
            "The database (or a peer service) is unreachable, has no connection slot free (reason"
            " `database_out_of_slots`), takes no writes (reason `database_read_only`, outcome"
            " `not_stored`: a failover), is out of disk space (reason `database_disk_full`: reads go"
            " on), holds the data the request needs locked by another session for longer than"
            " DB_LOCK_TIMEOUT_SECONDS (reason `database_busy`) or rolled the change back for a conflict"
            " with concurrent ones, still after the service ran it again (reason `database_conflict`);"
            " retry after Retry-After seconds.",
            problem={
                "type": "about:blank",
                "title": "Service Unavailable",
                "status": 503,
                "detail": "A backing service is unreachable; retry shortly.",
            },
            headers={"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}},
        ),
    ]


def _requirement(route: Route) -> dict[str, Any]:
    scope = getattr(route.endpoint, "required_scope", None)
    if scope is not None:
        return {"x-required-scope": scope}
    principal = getattr(route.endpoint, "required_service", None)
    if principal is True:
        return {"x-required-principal": "service"}
    if principal:
        return {"x-required-principal": " ".join(f"service:{name}" for name in sorted(principal))}
    return {"x-required-principal": "service"}  # checked inside the handler (require_service)


def service_document(
    service: str, routes: Sequence[BaseRoute], *, title: str, description: str, version: str = "1.0.0"
) -> dict[str, Any]:
    """A service's ``/openapi.json``: the catalogue's operations of ``service`` that ``routes`` serve."""
    placements = []
    served = {
        (route.path, method): route
        for route in routes
        if isinstance(route, Route)
        for method in (route.methods or ())
        if method != "HEAD"
    }
    for operation in operations_of(service):
        route = served.get((operation.path, operation.method))
        if route is None:
            raise ValueError(
                f"{service}: {operation.method} {operation.path} is in the catalogue, not served"
            )
        placements.append(
            Placement(
                operation,
                operation.path,
                [{"gatewayIdentity": []}],
                service_answers(operation),
                _requirement(route),
            )
        )
    return build(
        title=title,
        version=version,
        description=description,
        placements=placements,
        security_schemes={"gatewayIdentity": IDENTITY_SECURITY_SCHEME},
        servers=[{"url": "/", "description": "the service itself (through the gateway: /api)"}],
    )


# ---- checks ----------------------------------------------------------------------------------------


def app_operations(app: Starlette) -> set[tuple[str, str]]:
    """(path template, method) of every route the app serves, operational endpoints excluded."""
    found = set()
    for route in app.routes:
        if isinstance(route, Route) and route.path not in OPERATIONAL_PATHS:
            for method in route.methods or ():
                if method != "HEAD":
                    found.add((route.path, method.lower()))
    return found


def documented_operations(doc: Mapping[str, Any]) -> set[tuple[str, str]]:
    return {
        (path, method) for path, item in doc.get("paths", {}).items() for method in item if method in METHODS
    }


__all__ = [
    "IDEMPOTENCY_KEY_PARAMETER",
    "IDENTITY_SECURITY_SCHEME",
    "Placement",
    "app_operations",
    "build",
    "documented_operations",
    "path_parameters",
    "query_parameters",
    "service_answers",
    "service_document",
]
