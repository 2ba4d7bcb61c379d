"""The provider reads its form posts only as ``application/x-www-form-urlencoded``.

OAuth 2.0 (RFC 6749 §4.1.3, §3.2; RFC 7009 §2.1), OIDC's form-encoded ``/authorize`` POST and RP-initiated
logout, and the provider's own HTML forms all send that one media type. Starlette's ``request.form()``
also parses ``multipart/form-data`` (python_multipart), and that parser logs a WARNING line for each
malformed body: a stranger could fill the provider's log at the rate of its requests. Every form post
therefore refuses any other body before reading it: the HTML form posts with the kit's 415 problem
document (``Accept: application/x-www-form-urlencoded``, as the kit answers a JSON route sent another
media type), ``/oauth/token`` and ``/oauth/revoke`` with RFC 6749 §5.2's ``invalid_request`` 400 (what they
answered already for any media type but a form or JSON).
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from testkit.fixtures import ServiceProcess

pytestmark = pytest.mark.usefixtures("identity_service")

HTML_FORMS = (
    "/authorize",
    "/authorize/decision",
    "/login",
    "/oidc/logout",
    "/v2/logout",
    "/account/consents/revoke",
)
OAUTH_FORMS = ("/oauth/token", "/oauth/revoke")
FORM = "application/x-www-form-urlencoded"
#: bodies python_multipart logs a WARNING for ("Expected boundary character …", "Did not find …")
MALFORMED = (
    b"no boundary here\r\n",
    b'--B\r\nContent-Disposition: form-data; name="a"\r\n\r\nx\r\n--Bz',
)
#: well-formed, with a field each form reads: refused all the same (the body is never parsed)
WELL_FORMED = (
    b'--B\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\nx\r\n'
    b'--B\r\nContent-Disposition: form-data; name="grant_type"\r\n\r\nclient_credentials\r\n--B--\r\n'
)


async def _post(
    http: aiohttp.ClientSession, url: str, content_type: str | None, body: bytes
) -> tuple[int, dict[str, str], str]:
    headers = {} if content_type is None else {"Content-Type": content_type}
    skip = ("Content-Type",) if content_type is None else ()  # aiohttp would say application/octet-stream
    async with http.post(
        url, data=body, headers=headers, skip_auto_headers=skip, allow_redirects=False
    ) as response:
        return response.status, dict(response.headers), await response.text()


async def _new_log(process: ServiceProcess, offset: int) -> str:
    await asyncio.sleep(0.3)  # the process writes its lines as it goes; let them land
    with process.log_path.open("rb") as log:
        log.seek(offset)
        return log.read().decode("utf-8", "replace")


@pytest.mark.parametrize("path", HTML_FORMS)
@pytest.mark.parametrize("body", [*MALFORMED, WELL_FORMED], ids=["no-boundary", "cut-short", "well-formed"])
async def test_a_multipart_body_at_a_page_form_is_415_unparsed(
    http: aiohttp.ClientSession, base_url: str, identity_service: ServiceProcess, path: str, body: bytes
) -> None:
    offset = identity_service.log_path.stat().st_size
    status, headers, text = await _post(http, base_url + path, "multipart/form-data; boundary=B", body)
    assert status == 415, text
    assert headers["Content-Type"].startswith("application/problem+json"), text
    assert headers["Accept"] == FORM
    assert "application/x-www-form-urlencoded" in text
    assert "python_multipart" not in await _new_log(identity_service, offset)


@pytest.mark.parametrize("path", HTML_FORMS)
@pytest.mark.parametrize("content_type", ["application/json", "text/plain", None])
async def test_any_other_body_at_a_page_form_is_415(
    http: aiohttp.ClientSession, base_url: str, path: str, content_type: str | None
) -> None:
    """A JSON or plain-text body (or one without a Content-Type) was read as an empty form: a CSRF
    failure page, or for /oidc/logout the confirmation page, as if nothing had been sent."""
    status, headers, text = await _post(http, base_url + path, content_type, b'{"csrf_token": "x"}')
    assert status == 415, text
    assert headers["Accept"] == FORM


@pytest.mark.parametrize("content_type", [None, "text/plain", "multipart/form-data; boundary=B"])
async def test_a_post_without_a_body_is_still_an_empty_form(
    http: aiohttp.ClientSession, base_url: str, content_type: str | None
) -> None:
    """RP-initiated logout by POST may carry no parameter at all: no body, nothing to refuse (nor to
    parse, whatever the Content-Type says)."""
    status, headers, text = await _post(http, base_url + "/oidc/logout", content_type, b"")
    assert status == 200, text
    assert headers["Content-Type"].startswith("text/html")


@pytest.mark.parametrize("path", OAUTH_FORMS)
@pytest.mark.parametrize("body", [*MALFORMED, WELL_FORMED], ids=["no-boundary", "cut-short", "well-formed"])
async def test_a_multipart_body_at_the_oauth_endpoints_is_invalid_request_unparsed(
    http: aiohttp.ClientSession, base_url: str, identity_service: ServiceProcess, path: str, body: bytes
) -> None:
    offset = identity_service.log_path.stat().st_size
    status, headers, text = await _post(http, base_url + path, "multipart/form-data; boundary=B", body)
    assert status == 400, text
    assert headers["Content-Type"].startswith("application/json"), text
    assert headers["Cache-Control"] == "no-store"
    document = json.loads(text)
    assert document["error"] == "invalid_request"
    assert "python_multipart" not in await _new_log(identity_service, offset)
