"""A stolen DPoP-bound refresh token cannot sign its owner out (RFC 9449 §5, RFC 9700 §4.14.2).

A public client's refresh tokens are bound to its DPoP key. An attacker who copied one out of the
browser, without the private key, presents it with a proof by a key of their own, or with none. Even
when the copy is an old one the owner has since rotated, that is not the owner reusing it: the
binding is checked before reuse detection, the request is refused (``invalid_grant`` for another
key, ``invalid_dpop_proof`` without a proof) and counted, and the family lives on. Reuse by the key
holder (the same key, an already rotated token) still revokes the family, as before.

The same holds for an authorization code bound to a key (``dpop_jkt``): a copy presented after its
use without that key is refused, not taken for a replay that revokes what the code issued."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import asyncpg
import jwt
import pytest

from testkit.dpop import DpopKey
from testkit.fixtures import ServiceProcess, scrape
from testkit.oidc import BATCH_SECRET, Browser

from .test_identity_dpop import authorize_code, code_grant, token_request

pytestmark = pytest.mark.usefixtures("identity_service")


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one series of a metrics exposition (0 when it is not there yet)."""
    wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        if series == wanted:
            return float(value)
    return 0.0


async def counts(base_url: str) -> tuple[float, float]:
    """(binding refusals of refresh tokens, refresh-token reuses) as the provider counts them."""
    text = await scrape(base_url)
    return (
        metric(text, "identity_dpop_binding_refusals_total", binding="refresh_token"),
        metric(text, "identity_refresh_token_reuse_total"),
    )


async def outbox_denials(
    db: asyncpg.Connection, reason: str, route: str, at_least: int
) -> list[dict[str, Any]]:
    """The ``access.denied`` records of ``reason`` at ``route`` in the provider's outbox (no audit
    service runs here), once their counts add up to ``at_least`` (the recorder writes them later)."""
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        records = [
            json.loads(row[0])
            for row in await db.fetch(
                """SELECT payload::text FROM outbox
                   WHERE payload->'details'->>'reason' = $1 AND payload->'details'->>'route' = $2""",
                reason,
                route,
            )
        ]
        if sum(record["details"]["count"] for record in records) >= at_least:
            return records
        assert asyncio.get_running_loop().time() < deadline, records
        await asyncio.sleep(0.1)


async def revoke(
    http: aiohttp.ClientSession,
    base_url: str,
    token: str,
    proof: str | None = None,
    hint: str = "refresh_token",
) -> tuple[int, dict[str, Any]]:
    """``POST /oauth/revoke`` as the SPA (a public client: its ``client_id`` is all it proves)."""
    headers = {"DPoP": proof} if proof is not None else {}
    data = {"client_id": "timesheets-spa", "token": token, "token_type_hint": hint}
    async with http.post(base_url + "/oauth/revoke", data=data, headers=headers) as response:
        text = await response.text()
        return response.status, json.loads(text) if text else {}


def refresh_grant(token: str) -> dict[str, str]:
    return {"grant_type": "refresh_token", "client_id": "timesheets-spa", "refresh_token": token}


async def userinfo(http: aiohttp.ClientSession, base_url: str, access_token: str, key: DpopKey) -> int:
    url = base_url + "/userinfo"
    headers = {
        "Authorization": f"DPoP {access_token}",
        "DPoP": key.proof("GET", url, access_token=access_token),
    }
    async with http.get(url, headers=headers) as response:
        return response.status


async def bound_session(
    browser: Browser, http: aiohttp.ClientSession, base_url: str, key: DpopKey
) -> dict[str, Any]:
    code, verifier = await authorize_code(browser)
    status, body, _ = await token_request(
        http, base_url, code_grant(code, verifier), key.proof("POST", base_url + "/oauth/token")
    )
    assert status == 200, body
    assert body["token_type"] == "DPoP"
    return body


async def test_a_stolen_refresh_token_without_the_key_leaves_the_family_alone(
    browser: Browser,
    http: aiohttp.ClientSession,
    base_url: str,
    identity_service: ServiceProcess,
    db: asyncpg.Connection,
) -> None:
    owner, attacker = DpopKey(), DpopKey()
    token_url = base_url + "/oauth/token"
    first = await bound_session(browser, http, base_url, owner)
    status, second, _ = await token_request(
        http, base_url, refresh_grant(first["refresh_token"]), owner.proof("POST", token_url)
    )
    assert status == 200, second
    refusals, reuses = await counts(base_url)

    # the copy the attacker holds: the rotated one, and the current one; with their key, and with none
    for stolen in (first["refresh_token"], second["refresh_token"]):
        status, error, _ = await token_request(
            http, base_url, refresh_grant(stolen), attacker.proof("POST", token_url)
        )
        assert (status, error["error"]) == (400, "invalid_grant"), error
        assert "another DPoP key" in error["error_description"]
        status, error, _ = await token_request(http, base_url, refresh_grant(stolen))
        assert (status, error["error"]) == (400, "invalid_dpop_proof"), error

    # refused as a binding refusal (counted, logged without the token), never as reuse
    assert await counts(base_url) == (refusals + 4, reuses)
    logs = identity_service.logs()
    assert "refresh token presented without its DPoP key" in logs
    assert first["refresh_token"] not in logs
    assert second["refresh_token"] not in logs
    # and on their way to the audit trail like the provider's other denials: anonymous, 400, no token
    records = await outbox_denials(db, "dpop_binding_refresh_token", "/oauth/token", 4)
    for record in records:
        assert record["action"] == "access.denied"
        assert record["actor"]["kind"] == "anonymous"
        assert (record["details"]["status"], record["details"]["route"]) == (400, "/oauth/token")
        assert first["refresh_token"] not in json.dumps(record)
        assert second["refresh_token"] not in json.dumps(record)

    # the owner's session is untouched: its access token works, and it refreshes with its key
    assert await userinfo(http, base_url, second["access_token"], owner) == 200
    status, third, _ = await token_request(
        http, base_url, refresh_grant(second["refresh_token"]), owner.proof("POST", token_url)
    )
    assert status == 200, third
    assert third["token_type"] == "DPoP"


async def test_reuse_by_the_key_holder_still_revokes_the_family(
    browser: Browser, http: aiohttp.ClientSession, base_url: str
) -> None:
    owner = DpopKey()
    token_url = base_url + "/oauth/token"
    first = await bound_session(browser, http, base_url, owner)
    status, second, _ = await token_request(
        http, base_url, refresh_grant(first["refresh_token"]), owner.proof("POST", token_url)
    )
    assert status == 200, second
    refusals, reuses = await counts(base_url)

    status, error, _ = await token_request(
        http, base_url, refresh_grant(first["refresh_token"]), owner.proof("POST", token_url)
    )
    assert (status, error["error"]) == (400, "invalid_grant"), error
    assert "already used" in error["error_description"]
    assert await counts(base_url) == (refusals, reuses + 1)
    # the whole family is gone: the newest refresh token, and the access tokens it issued
    status, error, _ = await token_request(
        http, base_url, refresh_grant(second["refresh_token"]), owner.proof("POST", token_url)
    )
    assert (status, error["error"]) == (400, "invalid_grant"), error
    assert await userinfo(http, base_url, second["access_token"], owner) == 401


async def test_an_unbound_family_keeps_its_reuse_detection(
    browser: Browser, http: aiohttp.ClientSession, base_url: str
) -> None:
    """A family issued without DPoP is bound at its first use with a proof; the token used then was a
    bearer token, so whoever presents it again (any key, or none) is reuse: the family dies. Otherwise
    an attacker who refreshed a stolen bearer token first, binding the family to their key, would
    keep it when the owner's later reuse is refused as a key mismatch."""
    owner = DpopKey()
    token_url = base_url + "/oauth/token"
    code, verifier = await authorize_code(browser)
    status, first, _ = await token_request(http, base_url, code_grant(code, verifier))
    assert status == 200, first
    assert first["token_type"] == "Bearer"
    status, second, _ = await token_request(
        http, base_url, refresh_grant(first["refresh_token"]), owner.proof("POST", token_url)
    )
    assert status == 200, second
    status, error, _ = await token_request(
        http, base_url, refresh_grant(first["refresh_token"]), DpopKey().proof("POST", token_url)
    )
    assert (status, error["error"]) == (400, "invalid_grant"), error
    assert "already used" in error["error_description"]
    status, error, _ = await token_request(
        http, base_url, refresh_grant(second["refresh_token"]), owner.proof("POST", token_url)
    )
    assert (status, error["error"]) == (400, "invalid_grant"), "the family was revoked"


async def test_a_stolen_used_code_without_the_key_is_not_a_replay(
    browser: Browser, http: aiohttp.ClientSession, base_url: str
) -> None:
    owner, attacker = DpopKey(), DpopKey()
    token_url = base_url + "/oauth/token"
    code, verifier = await authorize_code(browser, dpop_jkt=owner.jkt)
    status, body, _ = await token_request(
        http, base_url, code_grant(code, verifier), owner.proof("POST", token_url)
    )
    assert status == 200, body
    status, error, _ = await token_request(
        http, base_url, code_grant(code, verifier), attacker.proof("POST", token_url)
    )
    assert (status, error["error"]) == (400, "invalid_grant"), error
    assert "another DPoP key" in error["error_description"]
    status, error, _ = await token_request(http, base_url, code_grant(code, verifier))
    assert (status, error["error"]) == (400, "invalid_dpop_proof"), error
    # nothing the code issued was revoked
    assert await userinfo(http, base_url, body["access_token"], owner) == 200
    status, renewed, _ = await token_request(
        http, base_url, refresh_grant(body["refresh_token"]), owner.proof("POST", token_url)
    )
    assert status == 200, renewed
    # the key holder replaying it is a replay: everything it issued is revoked
    status, error, _ = await token_request(
        http, base_url, code_grant(code, verifier), owner.proof("POST", token_url)
    )
    assert (status, error["error"]) == (400, "invalid_grant"), error
    assert "already used" in error["error_description"]
    assert await userinfo(http, base_url, renewed["access_token"], owner) == 401


async def test_a_stolen_refresh_token_cannot_be_revoked_without_the_key(
    browser: Browser, http: aiohttp.ClientSession, base_url: str, db: asyncpg.Connection
) -> None:
    """RFC 7009 lets a public client revoke its tokens with its ``client_id`` alone, which the token
    string names to anyone: ``/oauth/revoke`` ended a bound family for whoever had copied a refresh
    token, rotated or current, with no key at all (the same denial of service the token endpoint no
    longer allows). A refresh token bound to a DPoP key is revoked only with a proof by that key."""
    owner, attacker = DpopKey(), DpopKey()
    token_url, revoke_url = base_url + "/oauth/token", base_url + "/oauth/revoke"
    first = await bound_session(browser, http, base_url, owner)
    status, second, _ = await token_request(
        http, base_url, refresh_grant(first["refresh_token"]), owner.proof("POST", token_url)
    )
    assert status == 200, second
    refusals, reuses = await counts(base_url)
    for stolen in (first["refresh_token"], second["refresh_token"]):
        status, error = await revoke(http, base_url, stolen)
        assert (status, error.get("error")) == (400, "invalid_dpop_proof"), error
        status, error = await revoke(http, base_url, stolen, attacker.proof("POST", revoke_url))
        assert (status, error.get("error")) == (400, "invalid_grant"), error
        assert "another DPoP key" in error["error_description"]
    assert await counts(base_url) == (refusals + 4, reuses)
    for record in await outbox_denials(db, "dpop_binding_refresh_token", "/oauth/revoke", 4):
        assert (record["actor"]["kind"], record["details"]["status"]) == ("anonymous", 400)

    # the family lives: the owner's access token works and it refreshes with its key
    assert await userinfo(http, base_url, second["access_token"], owner) == 200
    status, third, _ = await token_request(
        http, base_url, refresh_grant(second["refresh_token"]), owner.proof("POST", token_url)
    )
    assert status == 200, third
    # the key holder revokes it (a rotated token names the same family): all of it ends
    status, body = await revoke(http, base_url, first["refresh_token"], owner.proof("POST", revoke_url))
    assert status == 200, body
    status, error, _ = await token_request(
        http, base_url, refresh_grant(third["refresh_token"]), owner.proof("POST", token_url)
    )
    assert (status, error["error"]) == (400, "invalid_grant"), error
    assert await userinfo(http, base_url, third["access_token"], owner) == 401


async def test_a_stolen_bound_access_token_cannot_be_revoked_without_the_key(
    browser: Browser, http: aiohttp.ClientSession, base_url: str
) -> None:
    """The same for a public client's DPoP-bound access token (``cnf.jkt``): its string, copied from a
    log or a proxy, is worthless at the gateway without the key, and must not end it here either."""
    owner, attacker = DpopKey(), DpopKey()
    revoke_url = base_url + "/oauth/revoke"
    tokens = await bound_session(browser, http, base_url, owner)
    before = metric(await scrape(base_url), "identity_dpop_binding_refusals_total", binding="access_token")
    for proof in (None, attacker.proof("POST", revoke_url)):
        status, error = await revoke(http, base_url, tokens["access_token"], proof, hint="access_token")
        wanted = "invalid_dpop_proof" if proof is None else "invalid_grant"
        assert (status, error["error"]) == (400, wanted), error
    after = metric(await scrape(base_url), "identity_dpop_binding_refusals_total", binding="access_token")
    assert after == before + 2
    assert await userinfo(http, base_url, tokens["access_token"], owner) == 200
    # by its key holder: revoked
    status, body = await revoke(
        http, base_url, tokens["access_token"], owner.proof("POST", revoke_url), hint="access_token"
    )
    assert status == 200, body
    assert await userinfo(http, base_url, tokens["access_token"], owner) == 401


async def test_a_confidential_client_revokes_its_bound_token_with_its_secret(
    http: aiohttp.ClientSession, base_url: str, db: asyncpg.Connection
) -> None:
    """A confidential client proves itself with its secret: its DPoP-bound access token (client
    credentials with a proof) is revoked without a proof, as before."""
    key = DpopKey()
    data = {
        "grant_type": "client_credentials",
        "client_id": "timesheets-batch",
        "client_secret": BATCH_SECRET,
        "audience": "https://timesheets.abc.example/api",
    }
    status, body, _ = await token_request(http, base_url, data, key.proof("POST", base_url + "/oauth/token"))
    assert (status, body.get("token_type")) == (200, "DPoP"), body
    form = {"client_id": "timesheets-batch", "client_secret": BATCH_SECRET, "token": body["access_token"]}
    async with http.post(base_url + "/oauth/revoke", data=form) as response:
        assert response.status == 200, await response.text()
    jti = jwt.decode(body["access_token"], options={"verify_signature": False})["jti"]
    assert await db.fetchval("SELECT revoked_at IS NOT NULL FROM issued_tokens WHERE jti = $1", jti)
