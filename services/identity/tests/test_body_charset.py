"""A token or revocation request's body is read in the charset its Content-Type names, or refused —
never read in another.

A form is UTF-8 by default (RFC 6749 Appendix B), but HTTP libraries label forms with other charsets
(Apache HttpClient's ``UrlEncodedFormEntity`` sends ``charset=ISO-8859-1`` by default): a form in
ASCII, ISO-8859-1 or windows-1252 is read in it, any other charset refused with 415 ``invalid_request``.
A JSON body (accepted as Auth0 does) is UTF-8 only (RFC 8259 §8.1), as every service reads JSON
(``svckit.body.read_json``): another charset is a 415 ``invalid_request`` saying so. Before, both were
read as UTF-8 whatever the label said: a UTF-16 JSON body was "not valid JSON", an ASCII form labelled
UTF-16 was read as if unlabelled, and a Latin-1 form's "é" and "è" both became U+FFFD."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import aiohttp
import pytest

from testkit.oidc import BATCH_SECRET

pytestmark = pytest.mark.usefixtures("identity_service")

GRANT = {"grant_type": "client_credentials", "client_id": "timesheets-batch", "client_secret": BATCH_SECRET}


async def token_request(
    http: aiohttp.ClientSession, base_url: str, body: bytes, content_type: str
) -> tuple[int, dict[str, str], dict[str, str]]:
    async with http.post(
        base_url + "/oauth/token", data=body, headers={"Content-Type": content_type}
    ) as reply:
        return reply.status, dict(reply.headers), json.loads(await reply.read())


@pytest.mark.parametrize(
    ("charset", "encoding"), [("utf-16", "utf-16"), ("UTF-16LE", "utf-16-le"), ("latin-1", "latin-1")]
)
async def test_a_json_body_in_another_charset_is_refused_saying_why(
    http: aiohttp.ClientSession, base_url: str, charset: str, encoding: str
) -> None:
    body = json.dumps(GRANT).encode(encoding)
    status, headers, answer = await token_request(
        http, base_url, body, f"application/json; charset={charset}"
    )
    assert status == 415, answer
    assert answer["error"] == "invalid_request"
    assert "UTF-8" in answer["error_description"], answer
    assert headers["Cache-Control"] == "no-store"
    assert "access_token" not in answer


@pytest.mark.parametrize("charset", ["utf-8", "UTF-8", '"utf-8"', "utf8"])
async def test_a_json_body_labelled_utf8_is_read(
    http: aiohttp.ClientSession, base_url: str, charset: str
) -> None:
    body = json.dumps(GRANT).encode()
    status, _, answer = await token_request(http, base_url, body, f"application/json; charset={charset}")
    assert status == 200, answer
    assert answer["token_type"] == "Bearer"


@pytest.mark.parametrize("charset", ["utf-16", "shift_jis", "base64", "no-such-charset"])
async def test_a_form_in_a_charset_the_provider_does_not_read_is_refused(
    http: aiohttp.ClientSession, base_url: str, charset: str
) -> None:
    """An ASCII body labelled UTF-16 is not ASCII text: reading it as unlabelled would read another
    form than the one the label describes."""
    body = urlencode(GRANT).encode()
    content_type = f"application/x-www-form-urlencoded; charset={charset}"
    status, _, answer = await token_request(http, base_url, body, content_type)
    assert status == 415, answer
    assert answer["error"] == "invalid_request"
    assert "UTF-8" in answer["error_description"], answer


@pytest.mark.parametrize("charset", ["ISO-8859-1", "windows-1252", "US-ASCII", "utf-8"])
async def test_a_form_in_a_charset_the_provider_reads_is_read_in_it(
    http: aiohttp.ClientSession, base_url: str, charset: str
) -> None:
    """Two parameters whose names differ in one Latin-1 letter (0xE9 "é", 0xE8 "è"): read in the
    label's charset they are two parameters (unknown ones, ignored) and the grant succeeds; read as
    UTF-8 both were "x\\ufffd", one parameter sent twice, a 400."""
    body = urlencode(GRANT).encode()
    if charset != "US-ASCII":
        body += b"&x%E9=1&x%E8=2" if charset != "utf-8" else b"&x%C3%A9=1&x%C3%A8=2"
    content_type = f"application/x-www-form-urlencoded; charset={charset}"
    status, _, answer = await token_request(http, base_url, body, content_type)
    assert status == 200, answer
    assert answer["token_type"] == "Bearer"


async def test_a_form_that_is_not_in_its_charset_is_a_400(http: aiohttp.ClientSession, base_url: str) -> None:
    body = urlencode(GRANT).encode() + b"&x=%E9"
    status, _, answer = await token_request(
        http, base_url, body, "application/x-www-form-urlencoded; charset=us-ascii"
    )
    assert status == 400, answer
    assert answer["error"] == "invalid_request"


async def test_a_page_form_in_another_charset_is_a_415_problem(
    http: aiohttp.ClientSession, base_url: str
) -> None:
    """The sign-in page's form: a password read in another charset than it was sent in is another
    password; the page's refusal is the kit's problem document, as for a coded body."""
    body = b"csrf_token=x&username=alice&password=demo"
    headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-16"}
    async with http.post(base_url + "/login", data=body, headers=headers) as reply:
        assert reply.status == 415, await reply.text()
        assert reply.headers["Content-Type"].startswith("application/problem+json")
        assert "UTF-8" in (await reply.json(content_type=None))["detail"]
