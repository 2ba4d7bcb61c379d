"""Client authentication at the token and revocation endpoints (RFC 6749 §2.3.1): ``client_secret_basic``
credentials are form-urlencoded (Appendix B: ``+`` is a space, ``%XX`` a byte of UTF-8) before they
go into Basic, and are decoded so; malformed ones are an ``invalid_client`` answer in JSON, never a
500."""

from __future__ import annotations

import base64
import socket
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

import aiohttp
import asyncpg
import pytest
from identity import store
from identity.models import Client
from identity.passwords import hash_secret

from testkit.oidc import BATCH_SECRET

pytestmark = pytest.mark.usefixtures("identity_service")

#: Authorization header values whose credentials are not base64 of UTF-8 text.
MALFORMED_BASIC = [
    "Basic " + base64.b64encode(b"\xff\xfe:\xfd").decode(),  # base64 of bytes that are not UTF-8
    "Basic " + base64.b64encode(b"\xff\xfe\xfd").decode(),  # the same without a colon
]


@pytest.mark.parametrize("path", ["/oauth/token", "/oauth/revoke"])
@pytest.mark.parametrize("authorization", MALFORMED_BASIC)
async def test_basic_credentials_that_are_not_utf8_are_invalid_client(
    http: aiohttp.ClientSession, base_url: str, path: str, authorization: str
) -> None:
    data = {"grant_type": "client_credentials", "token": "some-token"}
    async with http.post(base_url + path, data=data, headers={"Authorization": authorization}) as response:
        assert response.status == 401, await response.text()
        assert response.headers["Content-Type"].startswith("application/json")
        assert (await response.json())["error"] == "invalid_client"


def _raw_post(base_url: str, path: str, authorization: bytes) -> bytes:
    """A token request whose Authorization header holds bytes aiohttp would not send (latin-1)."""
    url = urlsplit(base_url)
    assert url.hostname is not None
    assert url.port is not None
    body = b"grant_type=client_credentials"
    request = (
        (
            f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\nConnection: close\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\n"
        ).encode()
        + b"Authorization: "
        + authorization
        + b"\r\n\r\n"
        + body
    )
    with socket.create_connection((url.hostname, url.port), timeout=10) as conn:
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize("path", ["/oauth/token", "/oauth/revoke"])
def test_basic_credentials_that_are_not_ascii_are_invalid_client(base_url: str, path: str) -> None:
    answer = _raw_post(base_url, path, b"Basic \xe9\xe9\xe9\xe9")
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 401 Unauthorized", answer[:300]
    assert b"content-type: application/json" in rest.lower()
    assert b'"error":"invalid_client"' in rest


#: A client whose id and secret hold what form-urlencoding changes: spaces, ``+``, ``%``, ``&``, ``:``,
#: ``/``, ``=`` and characters beyond ASCII (RFC 6749 Appendix B's own example is `` %&+£€``).
ODD_ID = "basic client+1"
ODD_SECRET = "s3cret with+plus %&:/=£€ and%20not-an-escape"


@pytest.fixture
async def odd_client(db: asyncpg.Connection) -> AsyncIterator[None]:
    await store.upsert_client(
        db,
        Client(
            client_id=ODD_ID,
            name="Form-encoded credentials",
            first_party=True,
            secret_hash=hash_secret(ODD_SECRET),
            redirect_uris=(),
            post_logout_redirect_uris=(),
            web_origins=(),
            grant_types=("client_credentials",),
            response_types=(),
            allowed_scopes=("batch:upload",),
        ),
    )
    yield
    await db.execute("DELETE FROM clients WHERE client_id = $1", ODD_ID)


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


async def authenticate(http: aiohttp.ClientSession, base_url: str, path: str, authorization: str) -> int:
    """The status of a client credentials grant (``/oauth/token``) or a revocation of an unknown token
    (``/oauth/revoke``: 200 once the client authenticated, RFC 7009 §2.2)."""
    data = {"grant_type": "client_credentials", "token": "unknown-token"}
    async with http.post(base_url + path, data=data, headers={"Authorization": authorization}) as response:
        body = await response.json()
        if response.status != 200:
            assert response.status == 401, body
            assert body["error"] == "invalid_client"
        return response.status


@pytest.mark.usefixtures("odd_client")
@pytest.mark.parametrize("path", ["/oauth/token", "/oauth/revoke"])
@pytest.mark.parametrize(
    "encode",
    [
        pytest.param(quote_plus, id="form-urlencoded"),  # space as '+', as Appendix B writes it
        pytest.param(lambda text: quote(text, safe=""), id="percent-encoded"),  # space as %20
    ],
)
async def test_form_urlencoded_basic_credentials_authenticate(
    http: aiohttp.ClientSession, base_url: str, path: str, encode: Any
) -> None:
    assert await authenticate(http, base_url, path, basic(encode(ODD_ID), encode(ODD_SECRET))) == 200


@pytest.mark.usefixtures("odd_client")
@pytest.mark.parametrize("path", ["/oauth/token", "/oauth/revoke"])
async def test_raw_basic_credentials_are_decoded_as_form_urlencoded(
    http: aiohttp.ClientSession, base_url: str, path: str
) -> None:
    """Sent raw, where the encoding matters (a '+' is a space once decoded), they are other
    credentials: refused. client_secret_post carries the same secret unchanged."""
    encoded_id = quote(ODD_ID, safe="")
    assert await authenticate(http, base_url, path, basic(ODD_ID, ODD_SECRET)) == 401
    assert await authenticate(http, base_url, path, basic(encoded_id, ODD_SECRET)) == 401
    # only '%' escaped: the raw '+' decodes to a space, so this is another secret
    assert await authenticate(http, base_url, path, basic(encoded_id, ODD_SECRET.replace("%", "%25"))) == 401
    data = {"grant_type": "client_credentials", "client_id": ODD_ID, "client_secret": ODD_SECRET}
    async with http.post(base_url + "/oauth/token", data=data) as response:
        assert response.status == 200, await response.text()


@pytest.mark.parametrize("path", ["/oauth/token", "/oauth/revoke"])
async def test_secrets_that_encoding_leaves_alone_authenticate_raw_or_encoded(
    http: aiohttp.ClientSession, base_url: str, path: str
) -> None:
    """Generated secrets (``secrets.token_urlsafe``: letters, digits, '-' and '_') read the same either
    way: clients that send them raw keep working."""
    assert quote_plus(BATCH_SECRET) == BATCH_SECRET
    authorization = aiohttp.encode_basic_auth("timesheets-batch", BATCH_SECRET)
    assert await authenticate(http, base_url, path, authorization) == 200


@pytest.mark.usefixtures("odd_client")
@pytest.mark.parametrize("path", ["/oauth/token", "/oauth/revoke"])
@pytest.mark.parametrize("secret", ["%FF%FE", "%C3", "s3cret%"])
async def test_percent_escapes_that_are_not_utf8_are_invalid_client(
    http: aiohttp.ClientSession, base_url: str, path: str, secret: str
) -> None:
    assert await authenticate(http, base_url, path, basic(quote_plus(ODD_ID), secret)) == 401


# --- one method per request (RFC 6749 §2.3.1) ----------------------------------------------------

BATCH_BODY = {"client_id": "timesheets-batch", "client_secret": BATCH_SECRET}


def _basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": aiohttp.encode_basic_auth(client_id, secret)}


#: (Authorization header, body credentials, expected status, expected error); a wrong Basic secret
#: beside right body credentials was ignored (200: a token issued), and Basic naming another client
#: beside the batch client's body credentials issued a batch token
COMBINATIONS = [
    pytest.param(
        _basic("timesheets-batch", "WRONG"), BATCH_BODY, 400, "invalid_request", id="basic-wrong+body"
    ),
    pytest.param(
        _basic("timesheets-batch", BATCH_SECRET), BATCH_BODY, 400, "invalid_request", id="basic+body"
    ),
    pytest.param(_basic("timesheets-spa", "x"), BATCH_BODY, 400, "invalid_request", id="basic-other+body"),
    pytest.param(_basic("no-such-client", "x"), BATCH_BODY, 400, "invalid_request", id="basic-unknown+body"),
    pytest.param(
        {"Authorization": MALFORMED_BASIC[0]}, BATCH_BODY, 400, "invalid_request", id="basic-bad+body"
    ),
    pytest.param(
        {}, {**BATCH_BODY, "client_assertion": "a.b.c"}, 400, "invalid_request", id="body+assertion"
    ),
    pytest.param(_basic("timesheets-batch", "WRONG"), {}, 401, "invalid_client", id="basic-wrong"),
    pytest.param({}, {**BATCH_BODY, "client_secret": "WRONG"}, 401, "invalid_client", id="body-wrong"),
]


@pytest.mark.parametrize("path", ["/oauth/token", "/oauth/revoke"])
@pytest.mark.parametrize(("headers", "body", "status", "error"), COMBINATIONS)
async def test_one_client_authentication_method_per_request(
    http: aiohttp.ClientSession,
    base_url: str,
    path: str,
    headers: dict[str, str],
    body: dict[str, str],
    status: int,
    error: str,
) -> None:
    """A request presenting credentials by more than one method is refused (400 invalid_request), and
    a failed method is never passed over for another: 401 invalid_client, with a Basic challenge when
    Basic was used (RFC 6749 §5.2). Fails before the fix: the first three and the malformed Basic
    were 200 (a token issued, a revocation done)."""
    data = {"grant_type": "client_credentials", "token": "unknown-token", **body}
    async with http.post(base_url + path, data=data, headers=headers) as response:
        document = await response.json()
        assert (response.status, document["error"]) == (status, error), document
        assert response.headers["Cache-Control"] == "no-store"
        if status == 401 and "Authorization" in headers:
            assert response.headers["WWW-Authenticate"].startswith("Basic")


async def test_a_failed_basic_authentication_is_not_passed_over_for_a_public_client_id(
    http: aiohttp.ClientSession, base_url: str
) -> None:
    """A wrong Basic secret beside a public client's ``client_id`` (method ``none``) was passed over
    and the request went on as the public client (here: 400 invalid_grant for the made-up refresh
    token). Now the failed Basic attempt is the answer: 401 invalid_client."""
    data = {"grant_type": "refresh_token", "refresh_token": "made-up", "client_id": "timesheets-spa"}
    headers = _basic("timesheets-batch", "WRONG")
    async with http.post(base_url + "/oauth/token", data=data, headers=headers) as response:
        document = await response.json()
        assert (response.status, document["error"]) == (401, "invalid_client"), document
        assert response.headers["WWW-Authenticate"].startswith("Basic")
