"""A page on another site cannot spend a signed-in person's ``/authorize`` budget.

``AUTHORIZE_MAX_CODES_PER_USER`` bounds the codes (rows) one user has issued per window. Any page the
person visits can navigate their browser to ``/authorize`` (a popup it re-navigates; the SameSite=Lax
session cookie goes along on top-level navigations), each time for a first-party client that needs no
consent: a code is issued and counted. With one budget per user such a page spent it in seconds, and the
provider then refused the person's own app (sign-in, silent renewal) with ``temporarily_unavailable``
for the rest of the window, again every window. Requests the browser marks
``Sec-Fetch-Site: cross-site`` now have a budget of their own.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlencode

import aiohttp
import asyncpg
import pytest
from identity import store
from identity.models import User
from identity.passwords import hash_secret

from testkit.oidc import Browser, code_request, params_of, pkce_pair

from .conftest import own_provider

LIMIT = 4


@pytest.fixture(scope="module")
def provider(seeded: dict[str, str]) -> Iterator[str]:
    with own_provider(seeded, AUTHORIZE_MAX_CODES_PER_USER=str(LIMIT)) as url:
        yield url


@pytest.fixture
async def victim(provider: str, db: asyncpg.Connection) -> AsyncIterator[Browser]:
    name = "pat" + secrets.token_hex(4)
    user = User(f"local|{name}", name, f"{name}@example.com", "Pat", ("employee",), hash_secret("pw-" + name))
    await store.upsert_user(db, user)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        browser = Browser(provider, session)
        assert (await browser.login(name, password="pw-" + name)).status == 303
        yield browser


async def authorize(browser: Browser, site: str) -> dict[str, str]:
    """One navigation of the person's browser to /authorize, as the browser marks it; the answer's
    parameters at the client's redirect URI."""
    query = urlencode(code_request(pkce_pair()[1]))
    headers = {"Sec-Fetch-Site": site, "Sec-Fetch-Mode": "navigate"}
    response = await browser.get("/authorize?" + query, headers=headers)
    assert response.status in (302, 303), browser.last_html
    return params_of(response.headers["Location"])


async def test_a_cross_site_page_cannot_spend_the_persons_own_budget(victim: Browser) -> None:
    attacker = [await authorize(victim, "cross-site") for _ in range(LIMIT + 2)]
    assert ["code" in answer for answer in attacker] == [True] * LIMIT + [False] * 2, attacker
    assert attacker[-1]["error"] == "temporarily_unavailable"
    # the person's own app, on the provider's site, still signs in and renews
    own = await authorize(victim, "same-site")
    assert "code" in own, own


async def test_the_persons_own_budget_still_holds(victim: Browser) -> None:
    answers = [await authorize(victim, "same-site") for _ in range(LIMIT + 1)]
    assert ["code" in answer for answer in answers] == [True] * LIMIT + [False], answers
    assert answers[-1]["error"] == "temporarily_unavailable"
