"""Schemathesis against the published client-facing document, through a real gateway in front of the
real services, with a valid access token.

What runs: an OIDC issuer on loopback (discovery + JWKS; its RSA key signs the tokens), the audit,
timesheets and approvals services and the gateway as they ship (in this process, on loopback), a
database of this test's own. Before the run another user submits entries, so that the approver's
queue is not empty and the stateful phase can follow ``GET /api/approvals`` → ``PUT
/api/approvals/{id}`` (approve or reject) as well as ``POST /api/timesheets`` → ``GET``/``DELETE
/api/timesheets/{id}``. Then ``schemathesis run`` (the CLI, a separate process) fetches
``/api/openapi.json`` from the gateway and runs its phases (examples, coverage, fuzzing, stateful)
with bounded examples, checking: no 5xx, every response matches its documented schema, and its
content type is the documented one.

``TSP_FUZZ_SEED`` pins the seed (the default makes the run repeatable); ``TSP_FUZZ_EXAMPLES`` the
examples per operation.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from approvals.app import create_app as create_approvals
from approvals.settings import ApprovalsSettings
from audit.app import create_app as create_audit
from audit.settings import AuditSettings
from gateway.app import create_app as create_gateway
from gateway.settings import GatewaySettings
from svckit.settings import load_settings
from timesheets.app import create_app as create_timesheets
from timesheets.settings import TimesheetsSettings

from bench.api import AUDIENCE, Issuer
from testkit.client import wait_ready
from testkit.fixtures import IsolatedEnv, ServiceRedis, migrate_schema, pair_fields, serve_app

SERVICES = Path(__file__).resolve().parents[2] / "services"
HOOKS = Path(__file__).with_name("fuzz_auth.py")
EVERYTHING = (
    "openid",
    "read:timesheets",
    "create:timesheets",
    "delete:timesheets",
    "approve:timesheets",
    "read:audit",
    "batch:upload",
)
CHECKS = os.environ.get(
    "TSP_FUZZ_CHECKS", "not_a_server_error,response_schema_conformance,content_type_conformance"
)
SEED = os.environ.get("TSP_FUZZ_SEED", "20261203")
EXAMPLES = os.environ.get("TSP_FUZZ_EXAMPLES", "25")
BUDGET_SECONDS = 240  # the run takes ~60-90 s on two cores; this only stops a hang


@dataclass
class Platform:
    gateway: str
    issuer: Issuer
    database: str


@pytest.fixture(scope="module")
async def platform(isolated_env: IsolatedEnv, service_redis: ServiceRedis) -> AsyncIterator[Platform]:
    env = isolated_env("fuzz")
    own = service_redis.runtime_env  # each service as its own runtime role and Redis user
    for service in ("timesheets", "approvals", "audit"):
        await migrate_schema(env["DATABASE_URL"], service, SERVICES / service / service)
    issuer = Issuer()
    try:
        audit_env = own(env, "audit")
        audit = create_audit(load_settings(AuditSettings, env=audit_env, audit_verify_interval_seconds=0))
        async with serve_app(audit) as audit_url:
            timesheets_env = {**own(env, "timesheets"), "AUDIT_URL": audit_url}
            timesheets = create_timesheets(load_settings(TimesheetsSettings, env=timesheets_env))
            async with serve_app(timesheets) as timesheets_url:
                approvals = create_approvals(
                    load_settings(
                        ApprovalsSettings,
                        env={
                            **own(env, "approvals"),
                            "AUDIT_URL": audit_url,
                            "TIMESHEETS_URL": timesheets_url,
                        },
                    )
                )
                async with serve_app(approvals) as approvals_url:
                    settings = GatewaySettings(
                        **pair_fields(env),
                        oidc_issuer=[issuer.issuer],
                        oidc_audience=AUDIENCE,
                        redis_url=service_redis.url("gateway"),
                        redis_key_prefix=env["REDIS_KEY_PREFIX"],
                        timesheets_url=timesheets_url,
                        approvals_url=approvals_url,
                        audit_url=audit_url,
                        gateway_access_log=False,
                        rate_limit_per_subject=100_000,
                        rate_limit_per_client=100_000,
                    )
                    async with serve_app(create_gateway(settings)) as gateway_url:
                        for url in (audit_url, timesheets_url, approvals_url, gateway_url):
                            await wait_ready(url)
                        yield Platform(gateway_url, issuer, env["DATABASE_URL"])
    finally:
        issuer.close()


async def submit_entries(platform: Platform, count: int) -> None:
    """Someone else's submitted entries: the approver's queue has something to decide."""
    token = platform.issuer.token("fuzz-colleague", "create:timesheets")
    async with aiohttp.ClientSession() as session:
        for day in range(1, count + 1):
            entry = {"date": f"2026-10-{day:02d}", "project": "Queue", "hours": 4}
            async with session.post(
                platform.gateway + "/api/timesheets", json=entry, headers={"Authorization": f"Bearer {token}"}
            ) as response:
                assert response.status == 201, await response.text()


async def schemathesis(
    *arguments: str, env: dict[str, str], cwd: Path, secrets: tuple[str, ...] = ()
) -> tuple[int, str]:
    """``schemathesis run …`` as a separate process; (exit status, output with tokens masked)."""
    command = [sys.executable, "-m", "schemathesis.cli", "run", *arguments, "--no-color"]
    process = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=cwd,
        env={**os.environ, **env},
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), BUDGET_SECONDS)
    except TimeoutError:
        process.kill()
        raise
    text = output.decode(errors="replace")
    for secret in secrets:
        text = text.replace(secret, "<token>")
    assert process.returncode is not None
    return process.returncode, text


def tokens(platform: Platform) -> dict[str, str]:
    return {
        "TSP_FUZZ_PERSON_TOKEN": platform.issuer.token("fuzz-approver", " ".join(EVERYTHING), name="Fuzz A."),
        # sub = <client id>@clients: the gateway forwards it as a machine client acting as itself
        "TSP_FUZZ_MACHINE_TOKEN": platform.issuer.token("timesheets-spa@clients", "batch:upload"),
        "SCHEMATHESIS_HOOKS": str(HOOKS),
    }


COMMON = ("--workers", "1", "--generation-database", "none", "--request-timeout", "20", "--seed", SEED)


async def test_the_published_api_holds_under_schemathesis(platform: Platform, tmp_path: Path) -> None:
    await submit_entries(platform, 30)
    env = tokens(platform)
    started = time.monotonic()
    status, output = await schemathesis(
        platform.gateway + "/api/openapi.json",
        "--checks",
        CHECKS,
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        EXAMPLES,
        *COMMON,
        env=env,
        cwd=tmp_path,
        secrets=(env["TSP_FUZZ_PERSON_TOKEN"], env["TSP_FUZZ_MACHINE_TOKEN"]),
    )
    print(output)
    print(f"schemathesis ran {time.monotonic() - started:.1f} s (seed {SEED}, {EXAMPLES} examples)")
    assert status == 0, output[-6000:]
    assert "Authentication failed" not in output  # every operation was reached with a token it takes
    # The flows really ran: entries created, read back and deleted, uploaded, decided both ways.
    conn = await asyncpg.connect(platform.database)
    try:
        done = await conn.fetchrow(
            """SELECT (SELECT count(*) FROM timesheets.entries
                       WHERE owner_subject = 'fuzz-approver') AS created,
                      (SELECT count(*) FROM timesheets.entries
                       WHERE owner_subject = 'fuzz-approver' AND deleted_at IS NOT NULL) AS deleted,
                      (SELECT count(*) FROM timesheets.entries WHERE source = 'upload') AS uploaded,
                      (SELECT count(DISTINCT decision) FROM approvals.decisions
                       WHERE approver_subject = 'fuzz-approver' AND state = 'applied') AS verdicts"""
        )
    finally:
        await conn.close()
    assert done is not None
    print(dict(done))
    assert done["created"] > 0
    assert done["deleted"] > 0
    assert done["uploaded"] > 0
    assert done["verdicts"] >= 1  # approved or rejected (both, with the default seed)


async def test_the_run_fails_when_an_answer_breaks_the_document(platform: Platform, tmp_path: Path) -> None:
    """The same checks against a document that misdescribes one answer (hours as a string) must fail:
    the run above passing means something."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(platform.gateway + "/api/openapi.json") as reply,
    ):
        document = await reply.json()
    document["components"]["schemas"]["Entry"]["properties"]["hours"] = {"type": "string"}
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(document))
    env = tokens(platform)
    status, output = await schemathesis(
        str(tampered),
        "--url",
        platform.gateway,
        "--checks",
        CHECKS,
        "--phases",
        "examples",
        "--include-operation-id",
        "createEntry",
        *COMMON,
        env=env,
        cwd=tmp_path,
        secrets=(env["TSP_FUZZ_PERSON_TOKEN"], env["TSP_FUZZ_MACHINE_TOKEN"]),
    )
    assert status != 0, output
    assert "Response violates schema" in output, output[-3000:]
