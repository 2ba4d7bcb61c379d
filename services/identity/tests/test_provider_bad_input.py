"""Bad input at the provider's own endpoints, answered in each endpoint's own error shape.

Found by fuzzing the running provider (``test_provider_fuzz.py``): each case here failed before its
fix. The token and revocation endpoints answer RFC 6749 §5.2 JSON (an ``error`` of the RFC's list, an
``error_description`` in the RFC's character set, status 400 unless the client failed to
authenticate); no route redirects to an address taken from the request's ``Host``.
"""

from __future__ import annotations

import re
import socket

import aiohttp
import asyncpg
import jwt
import pytest

from testkit.oidc import BATCH_SECRET

pytestmark = pytest.mark.usefixtures("identity_service")

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
#: RFC 6749 §5.2: error_description = 1*( %x20-21 / %x23-5B / %x5D-7E )
DESCRIPTION = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]+")


async def _oauth_error(response: aiohttp.ClientResponse) -> dict[str, str]:
    text = await response.text()
    assert response.headers["Content-Type"].startswith("application/json"), text
    assert response.headers["Cache-Control"] == "no-store"
    document: dict[str, str] = await response.json()
    assert DESCRIPTION.fullmatch(document["error"]), document
    assert DESCRIPTION.fullmatch(document.get("error_description", "-")), document
    return document


@pytest.mark.parametrize("path", ["/oauth/token", "/oauth/revoke"])
async def test_a_form_of_too_many_fields_is_an_oauth_error(
    http: aiohttp.ClientSession, base_url: str, path: str
) -> None:
    """Starlette refuses a form of more than 1,000 fields with its own 400, which the kit answered as
    a problem document: not the §5.2 shape an OAuth client reads."""
    body = "grant_type=client_credentials&token=t&" + "&".join(f"x{i}=1" for i in range(1001))
    async with http.post(base_url + path, data=body.encode(), headers=FORM) as response:
        document = await _oauth_error(response)
        assert response.status == 400
        assert document["error"] == "invalid_request"


@pytest.mark.parametrize(
    "hint", ["bogus", "id_token", "%FF", "access_token%20", "urn:ietf:params:oauth:token-type:access_token"]
)
async def test_an_unknown_token_type_hint_is_ignored(
    http: aiohttp.ClientSession, base_url: str, db: asyncpg.Connection, hint: str
) -> None:
    """RFC 7009 §2.1: the server may ignore the hint and search every type it revokes. Authlib refused
    an unknown one with a 401 ``unsupported_token_type`` (read by a client as failed authentication),
    and a 400 would still leave the token usable: a client sending a hint of another vocabulary (a
    token-type URN) could not revoke it. The token is revoked whatever the hint."""
    auth = {"Authorization": aiohttp.encode_basic_auth("timesheets-batch", BATCH_SECRET)}
    async with http.post(
        base_url + "/oauth/token", data={"grant_type": "client_credentials"}, headers=auth
    ) as r:
        assert r.status == 200
        token = (await r.json())["access_token"]
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    body = f"token={token}&token_type_hint={hint}"
    async with http.post(
        base_url + "/oauth/revoke", data=body.encode(), headers={**FORM, **auth}
    ) as response:
        assert response.status == 200, await response.text()
    assert await db.fetchval("SELECT revoked_at IS NOT NULL FROM issued_tokens WHERE jti = $1", jti)
    # an unknown token with an unknown hint: 200 as for any token it does not know (RFC 7009 §2.2)
    body = "token=abc&client_id=timesheets-spa&token_type_hint=bogus"
    async with http.post(base_url + "/oauth/revoke", data=body.encode(), headers=FORM) as response:
        assert response.status == 200, await response.text()


@pytest.mark.parametrize("path", ["/oauth/token", "/oauth/revoke"])
@pytest.mark.parametrize(
    "body",
    [
        "%22=1&%22=2",  # a quote
        "%5C%0A=1&%5C%0A=2",  # a backslash and a line feed
        "%FF=1&%FF=2",  # not UTF-8: U+FFFD
        "%E2%80%AE=%00&grant_type=client_credentials&token=t",  # right-to-left override, with a NUL value
        "a%00=%00&token=t",
    ],
)
async def test_a_parameter_name_is_never_quoted_outside_the_description_charset(
    http: aiohttp.ClientSession, base_url: str, path: str, body: str
) -> None:
    """The duplicate and NUL checks named the offending parameter verbatim in ``error_description``;
    its name is the client's input, so it is quoted the way every other echoed value is (``?`` for
    what the RFC's character set has not)."""
    async with http.post(base_url + path, data=body.encode(), headers=FORM) as response:
        document = await _oauth_error(response)
        assert response.status == 400
        assert document["error"] == "invalid_request"


def _raw_get(base_url: str, target: str, host: str) -> tuple[int, str | None]:
    """One request with a ``Host`` header of our choosing (clients derive it from the URL)."""
    port = int(base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    location = next(
        (line.split(":", 1)[1].strip() for line in head if line.lower().startswith("location:")), None
    )
    return int(head[0].split()[1]), location


@pytest.mark.parametrize(
    "target",
    ["/authorize/?client_id=timesheets-spa", "/login/", "/oauth/token/", "/.well-known/jwks.json/"],
)
def test_a_trailing_slash_is_not_redirected_to_the_host_header(base_url: str, target: str) -> None:
    """Starlette's ``redirect_slashes`` answered ``/authorize/`` with a 307 to ``http://<Host>/authorize``:
    an absolute URL built from the request's ``Host`` (any name a request or a poisoned cache sends) and
    ``http`` behind a TLS ingress; a 307 also replays a POST's body (a client secret) there. The provider
    has no route with a trailing slash: such a path is a 404 like any unknown path."""
    status, location = _raw_get(base_url, target, "evil.example")
    assert location is None
    assert status == 404


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/nowhere", 404),
        ("GET", "/oauth/token/", 404),
        ("POST", "/api/timesheets", 404),
        ("TRACE", "/", 404),
        ("GET", "/oauth/token", 405),
        ("PATCH", "/oauth/token", 405),
        ("DELETE", "/authorize", 405),
    ],
)
async def test_an_unknown_path_or_method_is_a_problem_that_says_so(
    http: aiohttp.ClientSession, base_url: str, method: str, path: str, status: int
) -> None:
    """Starlette's router refuses these with an ``HTTPException`` whose detail is only the status
    phrase, and the kit dropped it: a problem of type, title and status alone, where every other
    refusal names what was wrong (docs/CONTRACTS.md: every refusal has a ``detail``). A 405 also
    lists the methods the route takes in ``Allow`` (RFC 9110 §15.5.6)."""
    async with http.request(method, base_url + path) as response:
        document = await response.json(content_type=None)
        assert response.status == status
        assert response.headers["Content-Type"] == "application/problem+json"
        assert document["status"] == status
        assert document.get("detail"), document
        if status == 405:
            assert method not in response.headers["Allow"]
            assert method in document["detail"]
