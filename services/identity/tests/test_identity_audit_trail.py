"""The provider's refusals are on the audit trail, like every other denial of the platform: a wrong
password at ``/login`` and a wrong client secret at the token and revocation endpoints each end up as
an aggregated ``access.denied`` record with source ``identity``, its reason, the route and the
caller's address, anonymous (the caller did not verify) and with nothing secret in it.

A real provider process (``python -m identity``, its own database, seeded) relays its outbox to a real
audit service (``testkit.inprocess.three_services``) through a proxy the test can cut: with the audit
service unreachable the records wait in the provider's outbox and arrive once it is back.

So are refused DPoP proofs (at the token endpoint and ``/userinfo``, each under its reason; not the
``use_dpop_nonce`` step: the provider here demands nonces), the tokens ``/userinfo`` refuses, and a
signed-in user's authorization requests beyond ``AUTHORIZE_MAX_CODES_PER_USER`` (named: the session
verified).
"""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import jwt
import pytest

from testkit.client import SignedApi
from testkit.clihost import CliHost
from testkit.dpop import DpopKey
from testkit.fixtures import (
    Caller,
    ServiceProcess,
    ServiceRedis,
    TcpProxy,
    create_database,
    drop_database,
    free_port,
    migrate_schema,
    runtime_env,
    scrape,
    user,
)
from testkit.inprocess import three_services
from testkit.oidc import (
    BATCH_SECRET,
    Browser,
    code_request,
    exchange_code,
    hosted_cli,
    params_of,
    pkce_pair,
    refresh,
    sign_in_tokens,
)

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "identity"
CAROL = user("carol", "read:audit")
WINDOW = "0.2"
ADDRESS = "127.0.0.1"  # the peer: the test client on loopback
#: (status, reason, method, route) of a record
Key = tuple[int, str, str, str]
WRONG_PASSWORD = "wrong-" + secrets.token_urlsafe(12)  # what must never be on the trail
WRONG_SECRET = "wrong-" + secrets.token_urlsafe(24)
#: codes (and implicit answers) a user may have issued per window at this provider
CODE_LIMIT = 3
#: refused proofs sent in a row
FLOOD = 30


@dataclass
class Provider:
    url: str
    issuer: str  # its issuer without the trailing slash: where a browser signs in
    dsn: str  # the provider's database, as its owner
    audit: SignedApi
    proxy: TcpProxy  # between the provider's relay and the audit service


@pytest.fixture(scope="module")
async def provider(
    identity_env: dict[str, str], caller: Caller, service_redis: ServiceRedis, cli_host: CliHost
) -> AsyncIterator[Provider]:
    keys = {name: value for name, value in identity_env.items() if name.startswith("IDENTITY_KEYS_")}
    async with three_services(keys, service_redis, "idtrail", poll_seconds=0.2) as urls:
        audit_port = urlsplit(urls["audit"]).port
        assert audit_port is not None
        proxy = TcpProxy("127.0.0.1", audit_port)
        await proxy.start()
        name = f"tsp_test_idtrail_{secrets.token_hex(4)}"
        dsn = await create_database(name)
        port = free_port()
        env = {
            **identity_env,
            "DATABASE_URL": dsn,
            "IDENTITY_ISSUER": f"http://localhost:{port}/",
            "AUDIT_URL": f"http://127.0.0.1:{proxy.port}",
            "AUDIT_DENIAL_WINDOW_SECONDS": WINDOW,
            "OUTBOX_POLL_INTERVAL_SECONDS": "0.2",
            "OUTBOX_MAX_BACKOFF_SECONDS": "0.5",
            # proofs must carry the provider's nonce: its use_dpop_nonce step is not a denial
            "DPOP_NONCES": "true",
            "AUTHORIZE_MAX_CODES_PER_USER": str(CODE_LIMIT),
        }
        process: ServiceProcess | None = None
        audit = SignedApi(urls["audit"], caller)
        try:
            await migrate_schema(dsn, "identity", PACKAGE_DIR)
            seeded = hosted_cli(cli_host, env, "seed")
            assert seeded.returncode == 0, seeded.stderr
            process = ServiceProcess("identity", runtime_env(env, "identity"), port=port)
            process.start(wait_path="/readyz")
            yield Provider(process.url, env["IDENTITY_ISSUER"].rstrip("/"), dsn, audit, proxy)
        finally:
            if process is not None:
                process.stop()
            await audit.close()
            await proxy.cut()
            await drop_database(name)


async def denials(provider: Provider, expected: dict[Key, int], timeout: float = 20.0) -> list[Any]:
    """The provider's ``access.denied`` records on the trail, once the counts of ``expected``'s keys
    have reached what it says."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        params = {"action": "access.denied", "source": "identity", "limit": "100"}
        reply = await provider.audit.call("GET", "/audit/events", CAROL, params=params)
        assert reply.status == 200, reply.text
        items: list[Any] = reply.body["items"]
        found = counts(items)
        if all(found[key] >= count for key, count in expected.items()):
            return items
        assert asyncio.get_running_loop().time() < deadline, items
        await asyncio.sleep(0.1)


def key_of(item: Any) -> Key:
    details = item["details"]
    return (details["status"], details["reason"], details["method"], details["route"])


def counts(items: list[Any]) -> Counter[Key]:
    tally: Counter[Key] = Counter()
    for item in items:
        tally[key_of(item)] += item["details"]["count"]
    return tally


async def wrong_password(session: aiohttp.ClientSession, base: str, username: str) -> int:
    async with session.get(base + "/login") as page:
        html = await page.text()
    marker = 'name="csrf_token" value="'
    token = html[html.index(marker) + len(marker) :].split('"', 1)[0]
    form = {"username": username, "password": WRONG_PASSWORD, "csrf_token": token, "return_to": ""}
    async with session.post(base + "/login", data=form, allow_redirects=False) as response:
        await response.read()
        return response.status


async def wrong_client_secret(session: aiohttp.ClientSession, base: str, path: str) -> int:
    form = {"grant_type": "client_credentials"} if path == "/oauth/token" else {"token": "x" * 20}
    headers = {"Authorization": aiohttp.encode_basic_auth("timesheets-batch", WRONG_SECRET)}
    async with session.post(base + path, data=form, headers=headers) as response:
        await response.read()
        return response.status


def assert_nothing_secret(items: list[Any], *values: str) -> None:
    text = str(items)
    for value in (WRONG_PASSWORD, WRONG_SECRET, BATCH_SECRET, *values):
        assert value not in text


async def test_a_wrong_password_and_a_wrong_client_secret_are_on_the_trail(provider: Provider) -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        for _ in range(3):
            assert await wrong_password(session, provider.url, "alice") == 401
        for _ in range(2):
            assert await wrong_client_secret(session, provider.url, "/oauth/token") == 401

    expected = {
        (401, "invalid_credentials", "POST", "/login"): 3,
        (401, "invalid_client", "POST", "/oauth/token"): 2,
    }
    items = [item for item in await denials(provider, expected) if key_of(item) in expected]
    assert counts(items) == expected
    for item in items:
        assert item["outcome"] == "denied"
        assert item["source"] == "identity"
        # the caller did not verify: neither the user name nor the client id it claimed is the actor
        assert (item["actor"]["kind"], item["actor"]["subject"], item["actor"]["issuer"]) == (
            "anonymous",
            "anonymous",
            "",
        )
        details = item["details"]
        assert item["resource"] == {"type": "route", "id": f"{details['method']} {details['route']}"}
        assert details["address"] == ADDRESS
        assert details["window_start"] < details["window_end"]
    assert_nothing_secret(items, "alice", "timesheets-batch")

    reply = await provider.audit.call("GET", "/audit/verify", CAROL)
    assert reply.status == 200, reply.text
    assert reply.body["ok"] is True, reply.body


async def test_with_the_audit_service_away_the_records_wait_in_the_outbox(provider: Provider) -> None:
    await provider.proxy.cut()
    async with aiohttp.ClientSession() as session:
        assert await wrong_client_secret(session, provider.url, "/oauth/revoke") == 401
    conn = await asyncpg.connect(provider.dsn)
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while not await conn.fetchval("SELECT count(*) FROM identity.outbox"):
            assert asyncio.get_running_loop().time() < deadline, "the record never reached the outbox"
            await asyncio.sleep(0.1)
        # the relay tries, and fails: the record stays, its attempts counted
        while not await conn.fetchval("SELECT count(*) FROM identity.outbox WHERE attempts > 0"):
            assert asyncio.get_running_loop().time() < deadline, "the relay never tried (and failed)"
            await asyncio.sleep(0.1)
    finally:
        await conn.close()

    await provider.proxy.start()
    revoke = (401, "invalid_client", "POST", "/oauth/revoke")
    items = await denials(provider, {revoke: 1})
    assert counts(items)[revoke] == 1
    assert_nothing_secret(items, "timesheets-batch")


async def test_a_replayed_code_and_a_reused_refresh_token_are_on_the_trail(provider: Provider) -> None:
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session,
        aiohttp.ClientSession() as http,
    ):
        browser = Browser(provider.issuer, session)
        verifier, challenge = pkce_pair()
        response = await browser.sign_in_and_authorize("alice", **code_request(challenge))
        assert response.status == 302, browser.last_html
        code = params_of(response.headers["Location"])["code"]
        assert (await exchange_code(http, provider.issuer, code, verifier))[0] == 200
        assert (await exchange_code(http, provider.issuer, code, verifier))[0] == 400  # replayed

        scope = "openid offline_access read:timesheets"
        first = (await sign_in_tokens(browser, http, provider.issuer, scope=scope))["refresh_token"]
        assert (await refresh(http, provider.issuer, first))[0] == 200
        assert (await refresh(http, provider.issuer, first))[0] == 400  # reused

    replay = (400, "code_replay", "POST", "/oauth/token")
    reuse = (400, "refresh_token_reuse", "POST", "/oauth/token")
    items = await denials(provider, {replay: 1, reuse: 1})
    assert counts(items)[replay] == 1
    assert counts(items)[reuse] == 1
    assert_nothing_secret(items, code, verifier, first, "alice", "timesheets-spa")


# --- DPoP proofs, /userinfo tokens and the per-user code limit -----------------------------------


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one series of a metrics exposition (0 when it is not there yet)."""
    wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        if series == wanted:
            return float(value)
    return 0.0


async def client_credentials(
    http: aiohttp.ClientSession, provider: Provider, proofs: list[str]
) -> tuple[int, dict[str, Any], str]:
    """The batch client's token request with these ``DPoP`` headers: (status, body, ``DPoP-Nonce``)."""
    headers = [("Authorization", aiohttp.encode_basic_auth("timesheets-batch", BATCH_SECRET))]
    headers += [("DPoP", proof) for proof in proofs]
    form = {"grant_type": "client_credentials"}
    async with http.post(provider.issuer + "/oauth/token", data=form, headers=headers) as response:
        return response.status, await response.json(), response.headers.get("DPoP-Nonce", "")


async def bound_token(provider: Provider, key: DpopKey, username: str) -> tuple[str, str]:
    """A DPoP-bound access token of ``username`` for ``/userinfo`` (code flow, proof with the
    provider's nonce); returns (token, the nonce to use next)."""
    token_url = provider.issuer + "/oauth/token"
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session,
        aiohttp.ClientSession() as http,
    ):
        browser = Browser(provider.issuer, session)
        verifier, challenge = pkce_pair()
        response = await browser.sign_in_and_authorize(username, **code_request(challenge))
        assert response.status == 302, browser.last_html
        code = params_of(response.headers["Location"])["code"]
        form = {
            "grant_type": "authorization_code",
            "client_id": "timesheets-spa",
            "code": code,
            "code_verifier": verifier,
            "redirect_uri": code_request()["redirect_uri"],
        }
        async with http.post(token_url, data=form, headers={"DPoP": key.proof("POST", token_url)}) as first:
            assert first.status == 400  # the nonce step
            assert (await first.json())["error"] == "use_dpop_nonce"
            nonce = first.headers["DPoP-Nonce"]
        proof = key.proof("POST", token_url, nonce=nonce)
        async with http.post(token_url, data=form, headers={"DPoP": proof}) as issued:
            body = await issued.json()
            assert issued.status == 200, body
            assert body["token_type"] == "DPoP"
            return body["access_token"], issued.headers["DPoP-Nonce"]


async def userinfo(
    http: aiohttp.ClientSession, provider: Provider, headers: dict[str, str]
) -> tuple[int, Any]:
    async with http.get(provider.issuer + "/userinfo", headers=headers) as response:
        return response.status, await response.json()


async def test_dpop_proof_refusals_are_on_the_trail_but_not_the_nonce_step(provider: Provider) -> None:
    key = DpopKey()
    token_url, userinfo_url = provider.issuer + "/oauth/token", provider.issuer + "/userinfo"
    async with aiohttp.ClientSession() as http:
        # a proof without the nonce: the protocol's nonce step, asked of every client — not a denial
        status, body, nonce = await client_credentials(http, provider, [key.proof("POST", token_url)])
        assert (status, body["error"]) == (400, "use_dpop_nonce")
        assert nonce
        # refused proofs: each a denial with its reason
        status, body, _ = await client_credentials(http, provider, [key.proof("GET", token_url, nonce=nonce)])
        assert (status, body["error"]) == (400, "invalid_dpop_proof"), body
        for _ in range(FLOOD):  # anyone can send these at request rate: counted, not one record each
            status, body, _ = await client_credentials(http, provider, ["not.a.proof"])
            assert (status, body["error"]) == (400, "invalid_dpop_proof"), body
        proofs = [key.proof("POST", token_url, nonce=nonce), key.proof("POST", token_url, nonce=nonce)]
        status, body, _ = await client_credentials(http, provider, proofs)
        assert (status, body["error"]) == (400, "invalid_dpop_proof"), body

        token, nonce = await bound_token(provider, key, "bob")
        headers = {
            "Authorization": f"DPoP {token}",
            "DPoP": key.proof("GET", userinfo_url, access_token=token),
        }
        status, body = await userinfo(http, provider, headers)
        assert (status, body["error"]) == (401, "use_dpop_nonce"), body  # the nonce step again
        proof = key.proof("GET", userinfo_url, access_token=token + "x", nonce=nonce)  # for another token
        status, body = await userinfo(http, provider, {"Authorization": f"DPoP {token}", "DPoP": proof})
        assert (status, body["error"]) == (401, "invalid_dpop_proof"), body
        proof = key.proof("GET", userinfo_url, access_token=token, nonce=nonce)
        status, body = await userinfo(http, provider, {"Authorization": f"DPoP {token}", "DPoP": proof})
        assert status == 200, body  # the same token with a good proof

    expected = {
        (400, "dpop_htm", "POST", "/oauth/token"): 1,
        (400, "dpop_malformed", "POST", "/oauth/token"): FLOOD,
        (400, "dpop_multiple", "POST", "/oauth/token"): 1,
        (401, "dpop_ath", "GET", "/userinfo"): 1,
    }
    items = await denials(provider, expected)
    assert {key: counts(items)[key] for key in expected} == expected
    assert not [item for item in items if item["details"]["reason"] == "dpop_nonce"]
    flood = [item for item in items if key_of(item) == (400, "dpop_malformed", "POST", "/oauth/token")]
    assert len(flood) < FLOOD / 3, flood  # one record per window (0.2 s), not per request
    for item in items:
        if key_of(item) in expected:
            assert item["actor"]["kind"] == "anonymous"
            assert item["details"]["address"] == ADDRESS
    assert_nothing_secret(items, token, nonce, "bob")


async def test_userinfo_token_refusals_are_on_the_trail_with_their_reasons(provider: Provider) -> None:
    before = await scrape(provider.url)
    key = DpopKey()
    token, _ = await bound_token(provider, key, "bob")
    foreign = jwt.encode(
        {"sub": "x", "iss": provider.issuer + "/", "exp": 2**31, "iat": 0, "jti": "j"},
        "a-key-of-somebody-else-entirely-32b",
        algorithm="HS256",
        headers={"kid": "not-ours"},
    )
    async with aiohttp.ClientSession() as http:
        sent = [
            ({}, "invalid_request"),  # no token
            ({"Authorization": "Bearer not-a-token"}, "invalid_token"),  # not a JWT
            ({"Authorization": f"Bearer {foreign}"}, "invalid_token"),  # signed by a key not ours
            ({"Authorization": f"Bearer {token}"}, "invalid_token"),  # a bound token as a bearer token
            ({"Authorization": f"DPoP {token}"}, "invalid_dpop_proof"),  # bound, without its proof
        ]
        for headers, error in sent:
            status, body = await userinfo(http, provider, headers)
            assert (status, body["error"]) == (401, error), (headers, body)

    reasons = ("missing_token", "malformed", "unknown_kid", "dpop_bound_bearer", "dpop_proof_missing")
    expected = {(401, reason, "GET", "/userinfo"): 1 for reason in reasons}
    items = await denials(provider, expected)
    assert {key: counts(items)[key] for key in expected} == expected
    assert_nothing_secret(items, token, foreign, "bob")
    after = await scrape(provider.url)
    for reason in reasons:
        name = "identity_userinfo_refusals_total"
        assert metric(after, name, reason=reason) - metric(before, name, reason=reason) == 1, reason


async def test_a_user_issuing_codes_at_request_rate_is_limited_and_on_the_trail(provider: Provider) -> None:
    before = await scrape(provider.url)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        browser = Browser(provider.issuer, session)
        _, challenge = pkce_pair()
        issued = [await browser.sign_in_and_authorize("carol", **code_request(challenge))]
        for _ in range(CODE_LIMIT - 1):
            issued.append(await browser.authorize(**code_request(challenge)))
        for response in issued:
            assert response.status == 302, browser.last_html
            assert "code" in params_of(response.headers["Location"])
        # one more: an OAuth error answer to the client's redirect URI (RFC 6749 §4.1.2.1), no code
        request = code_request(challenge)
        response = await browser.authorize(**request)
        assert response.status == 302, browser.last_html
        location = response.headers["Location"]
        assert location.startswith(request["redirect_uri"] + "?"), location
        answer = params_of(location)
        assert answer["error"] == "temporarily_unavailable", answer
        assert answer["state"] == request["state"]
        assert "code" not in answer
        # the implicit flow is held to the same limit
        implicit = {**request, "response_type": "id_token token", "nonce": "n-" + secrets.token_hex(4)}
        response = await browser.authorize(**implicit)
        assert params_of(response.headers["Location"])["error"] == "temporarily_unavailable"
        # silent renewal (prompt=none, web_message) gets the error in its message, not a code either
        renewal = await browser.authorize(**{**request, "prompt": "none", "response_mode": "web_message"})
        assert renewal.status == 200
        assert "temporarily_unavailable" in browser.last_html
        assert '"code"' not in browser.last_html

    conn = await asyncpg.connect(provider.dsn)
    try:
        subject = await conn.fetchval("SELECT subject FROM identity.users WHERE username = 'carol'")
        stored = await conn.fetchval(
            "SELECT count(*) FROM identity.authorization_codes WHERE subject = $1", subject
        )
    finally:
        await conn.close()
    assert stored == CODE_LIMIT

    limited = (429, "code_limit", "GET", "/authorize")
    items = [item for item in await denials(provider, {limited: 3}) if key_of(item) == limited]
    assert counts(items)[limited] == 3
    for item in items:  # the user's session verified: the record names the user
        assert (item["actor"]["kind"], item["actor"]["subject"]) == ("user", subject)
        assert item["details"]["address"] == ADDRESS
    after = await scrape(provider.url)
    name = "identity_authorize_throttled_total"
    assert metric(after, name) - metric(before, name) == 3


async def test_two_client_authentication_methods_and_a_wrong_basic_secret_are_on_the_trail(
    provider: Provider,
) -> None:
    """Basic beside a body secret (400 invalid_request, RFC 6749 §2.3.1) and a wrong Basic secret
    beside the right body credentials are refused client authentications, recorded as
    ``invalid_client`` with their status (fails before the fix: the wrong Basic secret beside the right
    body secret was 200, a token issued, and nothing recorded)."""
    two = (400, "invalid_client", "POST", "/oauth/token")
    before = counts(await denials(provider, {}))
    headers = {"Authorization": aiohttp.encode_basic_auth("timesheets-batch", WRONG_SECRET)}
    form = {
        "grant_type": "client_credentials",
        "client_id": "timesheets-batch",
        "client_secret": BATCH_SECRET,
    }
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            async with session.post(provider.url + "/oauth/token", data=form, headers=headers) as response:
                assert response.status == 400, await response.text()
    items = await denials(provider, {two: before[two] + 2})
    assert counts(items)[two] == before[two] + 2
    assert_nothing_secret(items)
