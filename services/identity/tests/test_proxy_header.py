"""The address the provider throttles and audits a request under, behind proxies that write RFC 7239
``Forwarded`` (``IDENTITY_PROXY_HEADER=forwarded``) or ``X-Forwarded-For`` (the default): only the
configured header is read, so a client cannot pick its own address — and with it a fresh sign-in and
token-failure budget per request — through the header its proxy passes on untouched."""

from __future__ import annotations

from typing import Any

import pytest
from identity.browser import client_address
from identity.settings import IdentitySettings
from starlette.requests import Request

pytestmark = pytest.mark.unit


def request_from(peer: str, headers: list[tuple[str, str]]) -> Request:
    return Request(
        {
            "type": "http",
            "method": "POST",
            "path": "/u/login",
            "headers": [(name.lower().encode(), value.encode()) for name, value in headers],
            "client": (peer, 40000),
        }
    )


REQUIRED: dict[str, Any] = {"identity_key_encryption_key": "k" * 40, "identity_session_secret": "s" * 40}


def address(header: str, peer: str, headers: list[tuple[str, str]]) -> str:
    settings = IdentitySettings(
        identity_trusted_proxies="10.0.0.0/8", identity_proxy_header=header, **REQUIRED
    )
    return client_address(
        request_from(peer, headers), settings.trusted_proxy_networks, settings.identity_proxy_header
    )


SENT = [("X-Forwarded-For", "6.6.6.6"), ("Forwarded", 'for="[2001:db8::7]:4711";proto=https')]


def test_behind_forwarded_proxies_the_forwarded_element_is_read() -> None:
    assert address("forwarded", "10.1.1.1", SENT) == "2001:db8::7"


def test_behind_x_forwarded_for_proxies_forwarded_is_the_clients_own() -> None:
    assert address("x-forwarded-for", "10.1.1.1", SENT) == "6.6.6.6"


def test_an_untrusted_peer_is_the_client_whatever_either_header_says() -> None:
    for header in ("forwarded", "x-forwarded-for"):
        assert address(header, "203.0.113.9", SENT) == "203.0.113.9"


def test_the_default_is_x_forwarded_for() -> None:
    assert IdentitySettings(**REQUIRED).identity_proxy_header == "x-forwarded-for"
    assert (
        IdentitySettings(identity_proxy_header="Forwarded", **REQUIRED).identity_proxy_header == "forwarded"
    )
