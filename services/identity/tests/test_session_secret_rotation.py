"""IDENTITY_SESSION_SECRET rotating while the provider's pods roll (docs/runbook.md, "Rotate the
provider's session secret").

The secret keys the CSRF tokens of every form (sign-in, consent, sign-out, consents) and, derived
from it, the provider's DPoP nonces. A rolling update runs pods of two configurations side by side
behind one Service, so a form rendered by one pod is posted to another, and a nonce handed out by
one is presented to another. Each test runs two real provider processes on loopback, on one
database and one Redis, with the two values of one rotation step.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack

import aiohttp
import pytest
from multidict import CIMultiDictProxy

from testkit.dpop import DpopKey
from testkit.fixtures import ServiceProcess, free_port
from testkit.oidc import BATCH_SECRET, DEMO_PASSWORD, SPA, Browser, code_request, hidden_field, pkce_pair

OLD = secrets.token_urlsafe(32)
NEW = secrets.token_urlsafe(32)
#: IDENTITY_SESSION_SECRET through a rotation, in order: one secret as earlier releases take it (no
#: key id); the same key named, the new one added to verify only; the new one first; the old dropped
ROTATION = [OLD, f"old:{OLD},new:{NEW}", f"new:{NEW},old:{OLD}", f"new:{NEW}"]
STEPS = pytest.mark.parametrize("step", [1, 2, 3], ids=["new-key-added", "new-key-first", "old-key-dropped"])


@pytest.fixture(scope="module")
def issuer_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def pods(seeded: dict[str, str], issuer_port: int) -> Iterator[dict[str, str]]:
    """One provider process per value of ROTATION, one issuer (the pods of one Deployment), DPoP
    nonces on: value → its base URL. The first listens on the issuer's own port."""
    issuer = f"http://localhost:{issuer_port}/"
    with ExitStack() as stack:
        urls = {}
        for index, value in enumerate(ROTATION):
            port = issuer_port if index == 0 else free_port()
            env = {
                **seeded,
                "IDENTITY_ISSUER": issuer,
                "DPOP_NONCES": "true",
                "IDENTITY_SESSION_SECRET": value,
            }
            stack.enter_context(ServiceProcess("identity", env, port=port).start(wait_path="/readyz"))
            urls[value] = f"http://localhost:{port}"
        yield urls


@pytest.fixture
async def cookies() -> AsyncIterator[aiohttp.ClientSession]:
    """One browser: cookies are per host, not per port, so every pod sees the same cookies (as behind
    one Service)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


async def sign_in(session: aiohttp.ClientSession, form_from: str, post_to: str) -> int:
    """The sign-in form as one pod renders it, posted to another: the status of the post."""
    page = Browser(form_from, session)
    response = await page.get("/login")
    assert response.status == 200, page.last_html
    fields = {name: hidden_field(page.last_html, name) for name in ("csrf_token", "return_to")}
    post = Browser(post_to, session)
    done = await post.post("/login", {"username": "alice", "password": DEMO_PASSWORD, **fields})
    assert done.status in (303, 403), post.last_html
    return done.status


async def nonce_from(http: aiohttp.ClientSession, pod: str, issuer: str, key: DpopKey) -> str:
    status, body, headers = await client_credentials(http, pod, key.proof("POST", issuer + "oauth/token"))
    assert status == 400, body
    assert body["error"] == "use_dpop_nonce", body
    return headers["DPoP-Nonce"]


async def client_credentials(
    http: aiohttp.ClientSession, pod: str, proof: str
) -> tuple[int, dict[str, str], CIMultiDictProxy[str]]:
    data = {
        "grant_type": "client_credentials",
        "client_id": "timesheets-batch",
        "client_secret": BATCH_SECRET,
        "audience": "https://timesheets.abc.example/api",
    }
    async with http.post(pod + "/oauth/token", data=data, headers={"DPoP": proof}) as response:
        return response.status, await response.json(), response.headers


async def nonce_taken(http: aiohttp.ClientSession, pod: str, issuer: str, key: DpopKey, nonce: str) -> bool:
    status, body, _ = await client_credentials(
        http, pod, key.proof("POST", issuer + "oauth/token", nonce=nonce)
    )
    assert status == 200 or body["error"] == "use_dpop_nonce", body
    return status == 200


@STEPS
async def test_a_form_rendered_by_a_pod_of_either_side_of_a_step_posts_to_the_other(
    pods: dict[str, str], cookies: aiohttp.ClientSession, step: int
) -> None:
    """A sign-in form (its CSRF token) from the pods before a step, posted to a pod after it, and the
    other way round. With one key only, every rotation answered 403 to whoever's post reached a pod
    on the other secret while the Deployment rolled."""
    before, after = pods[ROTATION[step - 1]], pods[ROTATION[step]]
    for form_from, post_to in ((before, after), (after, before)):
        cookies.cookie_jar.clear()
        assert await sign_in(cookies, form_from, post_to) == 303, (form_from, post_to)


@STEPS
async def test_a_dpop_nonce_handed_out_by_a_pod_of_either_side_of_a_step_is_taken_by_the_other(
    pods: dict[str, str], http: aiohttp.ClientSession, issuer_port: int, step: int
) -> None:
    """The provider's DPoP nonces (their key derives from the session secret) cross a step both ways."""
    issuer = f"http://localhost:{issuer_port}/"
    before, after = pods[ROTATION[step - 1]], pods[ROTATION[step]]
    key = DpopKey()
    for minter, checker in ((before, after), (after, before)):
        nonce = await nonce_from(http, minter, issuer, key)
        assert await nonce_taken(http, checker, issuer, key, nonce), (minter, checker)


async def test_once_the_old_key_is_dropped_its_tokens_and_nonces_are_refused(
    pods: dict[str, str], cookies: aiohttp.ClientSession, http: aiohttp.ClientSession, issuer_port: int
) -> None:
    """Forms and nonces of the old key, named or the single value of before, are refused by a pod that
    holds the new key only, and taken by one that still verifies it. A new key put first without the
    pods first given it to verify is refused by a pod on the old key alone: why the runbook rotates in
    two rollouts."""
    issuer = f"http://localhost:{issuer_port}/"
    unnamed_old, named_old = pods[ROTATION[0]], pods[ROTATION[1]]
    new_first, new_only = pods[ROTATION[2]], pods[ROTATION[3]]
    key = DpopKey()
    for old in (unnamed_old, named_old):
        cookies.cookie_jar.clear()
        assert await sign_in(cookies, old, new_first) == 303
        cookies.cookie_jar.clear()
        assert await sign_in(cookies, old, new_only) == 403
        nonce = await nonce_from(http, old, issuer, key)
        assert await nonce_taken(http, new_first, issuer, key, nonce)
        assert not await nonce_taken(http, new_only, issuer, key, nonce)
    cookies.cookie_jar.clear()
    assert await sign_in(cookies, new_first, unnamed_old) == 403
    assert not await nonce_taken(
        http, unnamed_old, issuer, key, await nonce_from(http, new_first, issuer, key)
    )


async def test_a_signed_in_user_stays_signed_in_across_the_rotation(
    pods: dict[str, str], cookies: aiohttp.ClientSession
) -> None:
    """The session cookie is a random value looked up by its digest in the database, not signed with
    the secret: a user signed in at a pod on the old secret is still signed in at a pod on the new one
    alone (the code is issued without a sign-in page)."""
    assert await sign_in(cookies, pods[ROTATION[0]], pods[ROTATION[0]]) == 303
    _, challenge = pkce_pair()
    response = await Browser(pods[ROTATION[3]], cookies).authorize(**code_request(challenge))
    assert response.status == 302, response.headers
    assert response.headers["Location"].startswith(f"{SPA}/callback?code="), response.headers["Location"]
