"""Client authentication at the token and revocation endpoints (RFC 6749 §2.3.1): malformed
``client_secret_basic`` credentials are an ``invalid_client`` answer in JSON, never a 500."""

from __future__ import annotations

import base64
import socket
from urllib.parse import urlsplit

import aiohttp
import pytest

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
