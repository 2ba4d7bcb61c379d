"""A request body in a content coding (``Content-Encoding`` other than ``identity``) is refused with
415 and ``Accept-Encoding: identity`` on every identity route that reads a body, as in every other
service (``svckit.body``): the provider decodes no coding, and reading the bytes as if the label were
absent would read another body than was sent (a gzip body as a garbled form, or a mislabelled plain
form as if it were fine). The OAuth endpoints answer in their own error shape (RFC 6749 §5.2), the
pages' form posts with a problem document."""

from __future__ import annotations

import gzip
import json
import secrets
from collections.abc import Mapping
from urllib.parse import urlencode

import aiohttp
import pytest
from identity.app import build_app
from identity.settings import IdentitySettings
from starlette.routing import Route
from svckit.settings import load_settings

from testkit.fixtures import new_identity_keys
from testkit.oidc import BATCH_SECRET

pytestmark = pytest.mark.usefixtures("identity_service")

#: Routes whose contract is OAuth: a refusal is ``{"error": ..., "error_description": ...}`` JSON.
OAUTH_BODY_ROUTES = ("/oauth/token", "/oauth/revoke")
#: The pages' form posts: a refusal is a problem document, like the kit's 413 on the same routes.
FORM_BODY_ROUTES = (
    "/authorize",
    "/authorize/decision",
    "/login",
    "/oidc/logout",
    "/v2/logout",
    "/account/consents/revoke",
)
#: POST routes that read no body: /userinfo takes its token from the Authorization header only.
NO_BODY_ROUTES = ("/userinfo",)

BATCH_FORM = {
    "grant_type": "client_credentials",
    "client_id": "timesheets-batch",
    "client_secret": BATCH_SECRET,
}


def test_every_route_that_takes_a_body_is_covered_here() -> None:
    """The routes above are all the provider's POST routes: a new one is added to a list (and so to
    the tests below) or the list of routes that read no body, by decision."""
    env = {
        "IDENTITY_KEY_ENCRYPTION_KEY": secrets.token_urlsafe(32),
        "IDENTITY_SESSION_SECRET": secrets.token_urlsafe(32),
        "IDENTITY_KEYS_IDENTITY_TO_AUDIT": new_identity_keys("identity-audit-1"),  # its denials' relay
    }
    app = build_app(load_settings(IdentitySettings, env=env))
    posts = {
        route.path for route in app.routes if isinstance(route, Route) and "POST" in (route.methods or ())
    }
    assert posts == {*OAUTH_BODY_ROUTES, *FORM_BODY_ROUTES, *NO_BODY_ROUTES}


async def post(
    http: aiohttp.ClientSession, url: str, body: bytes, content_type: str, coding: str | None
) -> tuple[int, Mapping[str, str], bytes]:
    headers = {"Content-Type": content_type}
    if coding is not None:
        headers["Content-Encoding"] = coding
    async with http.post(url, data=body, headers=headers) as response:
        return response.status, response.headers, await response.read()


def assert_oauth_415(status: int, headers: Mapping[str, str], body: bytes) -> None:
    assert status == 415, body[:300]
    assert headers["Accept-Encoding"] == "identity"
    assert headers["Content-Type"].startswith("application/json")
    assert headers["Cache-Control"] == "no-store"
    document = json.loads(body)
    assert document["error"] == "invalid_request"
    assert "Content-Encoding" in document["error_description"]


@pytest.mark.parametrize("path", OAUTH_BODY_ROUTES)
@pytest.mark.parametrize("coding", ["gzip", "br", "GZIP", "identity, gzip", "deflate"])
async def test_a_plain_form_labelled_with_a_coding_is_refused_not_read(
    http: aiohttp.ClientSession, base_url: str, path: str, coding: str
) -> None:
    """The body is a valid plain form (a client credentials grant that would succeed): with a coding
    label it is not what the client says it sent, so it is refused rather than read."""
    body = urlencode({**BATCH_FORM, "token": "some-token"}).encode()
    assert_oauth_415(*await post(http, base_url + path, body, "application/x-www-form-urlencoded", coding))


@pytest.mark.parametrize("path", OAUTH_BODY_ROUTES)
async def test_a_gzip_form_is_refused_with_415(http: aiohttp.ClientSession, base_url: str, path: str) -> None:
    body = gzip.compress(urlencode({**BATCH_FORM, "token": "some-token"}).encode())
    assert_oauth_415(*await post(http, base_url + path, body, "application/x-www-form-urlencoded", "gzip"))


async def test_a_gzip_json_body_is_refused_with_415(http: aiohttp.ClientSession, base_url: str) -> None:
    body = gzip.compress(json.dumps(BATCH_FORM).encode())
    assert_oauth_415(*await post(http, base_url + "/oauth/token", body, "application/json", "gzip"))


@pytest.mark.parametrize("coding", [None, "identity", "Identity"])
@pytest.mark.parametrize("media_type", ["application/x-www-form-urlencoded", "application/json"])
async def test_identity_coding_is_read(
    http: aiohttp.ClientSession, base_url: str, coding: str | None, media_type: str
) -> None:
    body = json.dumps(BATCH_FORM) if media_type == "application/json" else urlencode(BATCH_FORM)
    status, _, answer = await post(http, base_url + "/oauth/token", body.encode(), media_type, coding)
    assert status == 200, answer[:300]
    assert json.loads(answer)["token_type"] == "Bearer"


@pytest.mark.parametrize("path", FORM_BODY_ROUTES)
async def test_a_coded_form_post_to_a_page_is_a_415_problem(
    http: aiohttp.ClientSession, base_url: str, path: str
) -> None:
    body = gzip.compress(b"csrf_token=x&username=alice&password=demo&decision=allow")
    status, headers, answer = await post(
        http, base_url + path, body, "application/x-www-form-urlencoded", "gzip"
    )
    assert status == 415, answer[:300]
    assert headers["Accept-Encoding"] == "identity"
    assert headers["Content-Type"].startswith("application/problem+json")
    assert json.loads(answer)["status"] == 415
