"""Helpers for the identity tests: a scripted browser, PKCE, HTML form scraping.

Shared by the identity tests and by other suites' end-to-end tests, which sign in against a running
identity service the way a browser does.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import subprocess
from dataclasses import dataclass, field
from html import unescape
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import aiohttp

from testkit.clihost import CliHost, run_module

DEMO_PASSWORD = "demo-" + secrets.token_hex(4)
BATCH_SECRET = "batch-" + secrets.token_urlsafe(24)
SPA = "http://localhost:8080"
API = "https://timesheets.abc.example/api"


def run_cli(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return run_module("identity", env, *args, stdin=stdin)


def hosted_cli(
    host: CliHost, env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """:func:`run_cli` run in the session's command host (:mod:`testkit.clihost`): for a setup step
    or a case of a command's corpus, where the interpreter's start is not what the test is about."""
    return host.run("identity", env, *args, stdin=stdin)


# --- a scripted browser + SDK ------------------------------------------------------------------


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def code_request(challenge: str | None = None, **params: str) -> dict[str, str]:
    """Authorization-request parameters of the SPA's code flow (PKCE S256 when ``challenge`` is given)."""
    request = {
        "response_type": "code",
        "client_id": "timesheets-spa",
        "redirect_uri": f"{SPA}/callback",
        "scope": "openid read:timesheets",
        "state": "st-" + secrets.token_hex(4),
        "audience": API,
    }
    if challenge:
        request.update(code_challenge=challenge, code_challenge_method="S256")
    request.update(params)
    return request


async def exchange_code(
    http: aiohttp.ClientSession,
    base_url: str,
    code: str,
    verifier: str,
    *,
    client_id: str = "timesheets-spa",
    redirect_uri: str = f"{SPA}/callback",
) -> tuple[int, dict[str, Any]]:
    """``POST /oauth/token`` with an authorization code; returns (status, JSON body)."""
    data = {
        "grant_type": "authorization_code",
        "client_id": client_id,
        "code": code,
        "code_verifier": verifier,
        "redirect_uri": redirect_uri,
    }
    async with http.post(base_url + "/oauth/token", data=data) as response:
        body: dict[str, Any] = await response.json()
        return response.status, body


async def sign_in_tokens(
    browser: Browser, http: aiohttp.ClientSession, base_url: str, username: str = "alice", **params: str
) -> dict[str, Any]:
    """The whole code flow: sign in, authorize with PKCE, exchange the code; returns the token response."""
    verifier, challenge = pkce_pair()
    request = code_request(challenge, **params)
    response = await browser.sign_in_and_authorize(username, **request)
    assert response.status == 302, browser.last_html
    code = params_of(response.headers["Location"])["code"]
    status, body = await exchange_code(
        http, base_url, code, verifier, client_id=request["client_id"], redirect_uri=request["redirect_uri"]
    )
    assert status == 200, body
    return body


async def refresh(
    http: aiohttp.ClientSession, base_url: str, token: str, **extra: str
) -> tuple[int, dict[str, Any]]:
    """A refresh-token grant as the SPA sends it (``extra`` adds or overrides parameters)."""
    data = {"grant_type": "refresh_token", "client_id": "timesheets-spa", "refresh_token": token, **extra}
    async with http.post(base_url + "/oauth/token", data=data) as response:
        body: dict[str, Any] = await response.json()
        return response.status, body


def hidden_field(html: str, name: str) -> str:
    match = re.search(rf'name="{re.escape(name)}" value="([^"]*)"', html)
    assert match, f"no hidden field {name} in page"
    return unescape(match.group(1))


def params_of(location: str) -> dict[str, str]:
    parts = urlsplit(location)
    return dict(parse_qsl(parts.fragment or parts.query, keep_blank_values=True))


@dataclass
class Browser:
    """A cookie-keeping HTTP client that follows our own redirects step by step."""

    base: str
    session: aiohttp.ClientSession
    last_html: str = ""
    trail: list[str] = field(default_factory=list)

    async def get(self, url: str, **kwargs: Any) -> aiohttp.ClientResponse:
        full = url if url.startswith("http") else self.base + url
        response = await self.session.get(full, allow_redirects=False, **kwargs)
        self.last_html = await response.text()
        return response

    async def post(self, url: str, data: Any, **kwargs: Any) -> aiohttp.ClientResponse:
        full = url if url.startswith("http") else self.base + url
        response = await self.session.post(full, data=data, allow_redirects=False, **kwargs)
        self.last_html = await response.text()
        return response

    async def login(
        self, username: str, password: str = DEMO_PASSWORD, return_to: str = ""
    ) -> aiohttp.ClientResponse:
        query = "?" + urlencode({"return_to": return_to}) if return_to else ""
        page = await self.get("/login" + query)
        assert page.status == 200, self.last_html
        token = hidden_field(self.last_html, "csrf_token")
        ret = hidden_field(self.last_html, "return_to")
        return await self.post(
            "/login", {"username": username, "password": password, "csrf_token": token, "return_to": ret}
        )

    async def authorize(self, **params: str) -> aiohttp.ClientResponse:
        """GET /authorize and follow redirects that stay on the identity server."""
        response = await self.get("/authorize?" + urlencode(params))
        while response.status in (302, 303) and response.headers["Location"].startswith(("/", self.base)):
            location = response.headers["Location"]
            if location.startswith("/login"):
                return response
            response = await self.get(location)
        return response

    async def sign_in_and_authorize(self, username: str, **params: str) -> aiohttp.ClientResponse:
        first = await self.authorize(**params)
        if first.status == 302 and first.headers["Location"].startswith("/login"):
            login_page = await self.get(first.headers["Location"])
            assert login_page.status == 200
            token = hidden_field(self.last_html, "csrf_token")
            ret = hidden_field(self.last_html, "return_to")
            done = await self.post(
                "/login",
                {"username": username, "password": DEMO_PASSWORD, "csrf_token": token, "return_to": ret},
            )
            assert done.status == 303, self.last_html
            return await self.authorize_location(done.headers["Location"])
        return first

    async def authorize_location(self, location: str) -> aiohttp.ClientResponse:
        response = await self.get(location)
        while response.status in (302, 303) and response.headers["Location"].startswith("/"):
            response = await self.get(response.headers["Location"])
        return response
