"""The served OpenAPI document: open, 3.1, and covering every route the service answers."""

from __future__ import annotations

import jsonschema
from audit.api import routes

from testkit.client import SignedApi
from testkit.fixtures import scrape


async def test_document_is_served_without_identity_and_covers_every_route(api: SignedApi) -> None:
    reply = await api.call("GET", "/openapi.json", None)
    assert reply.status == 200
    document = reply.body
    assert document["openapi"].startswith("3.1")
    documented = {(path, method.upper()) for path, item in document["paths"].items() for method in item}
    served = {
        (route.path, method) for route in routes for method in (route.methods or ()) if method != "HEAD"
    }
    assert documented == served
    for schema in document["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)
    for item in document["paths"].values():
        for operation in item.values():
            assert operation["responses"]["401"]
            assert operation["operationId"]


async def test_operational_endpoints_answer_without_identity(api: SignedApi) -> None:
    assert (await api.call("GET", "/healthz", None)).status == 200
    ready = await api.call("GET", "/readyz", None)
    assert ready.status == 200, ready.text
    assert (await api.call("GET", "/metrics", None)).status == 404  # never on the public listener
    metrics = await scrape(api.base_url)
    assert "audit_events_ingested_total" in metrics
    assert "audit_ingest_lag_seconds_bucket" in metrics


async def test_the_listing_documents_its_own_refusals(api: SignedApi) -> None:
    """A listing too broad for the read timeout (422 ``query_too_broad``) and one that found every
    listing turn taken (503, Retry-After) are the listing's own answers, documented as such."""
    document = (await api.call("GET", "/openapi.json", None)).body
    answers = document["paths"]["/audit/events"]["get"]["responses"]
    too_broad = answers["422"]["content"]["application/problem+json"]["example"]
    assert too_broad["errors"][0]["type"] == "query_too_broad"
    assert "AUDIT_READ_CONCURRENCY" in answers["503"]["description"]
    assert "Retry-After" in answers["503"]["headers"]


async def test_verification_and_checkpoint_pages_document_their_own_refusals(api: SignedApi) -> None:
    """A walk stopped by its time limit (422 ``chain_too_long``), one refused for want of a turn and a
    checkpoint page past the read timeout (503, Retry-After) are documented where they happen."""
    paths = (await api.call("GET", "/openapi.json", None)).body["paths"]
    verify = paths["/audit/verify"]["get"]["responses"]
    too_long = verify["422"]["content"]["application/problem+json"]["example"]
    assert too_long["errors"][0]["type"] == "chain_too_long"
    assert "?from_checkpoint=latest" in too_long["detail"]  # the ranged form, which stays cheap
    parameters = {p["name"] for p in paths["/audit/verify"]["get"]["parameters"]}
    assert parameters == {"anchor", "from_checkpoint", "since", "until"}
    assert "AUDIT_VERIFY_CONCURRENCY" in verify["503"]["description"]
    assert "Retry-After" in verify["503"]["headers"]
    page = paths["/audit/checkpoints"]["get"]["responses"]
    assert "AUDIT_READ_TIMEOUT_SECONDS" in page["503"]["description"]
    assert "Retry-After" in page["503"]["headers"]
