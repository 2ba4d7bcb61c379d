"""Every public and internal route of every service, answered under each backing fault: Postgres
stopped, read-only or hung, Redis stopped or hung, the audit service killed. One stop per fault;
while it is down every probe is fired at once, twice (the first round meets the broken connections,
the second the refused ones and the open circuits). The rule (docs/runbook.md, "Postgres
restarts…" and "Redis outages"): no 5xx but 503 — or 502/504 from the gateway for an upstream that
is gone — and each 5xx a problem document (the OAuth error JSON at the token and revocation
endpoints, an HTML page where a browser page is asked for), a 503 with ``Retry-After`` (``/readyz``'s
too); and no traceback in any service's log meanwhile.

A layer that does I/O outside the kit's fault answers (:class:`svckit.middleware.ServiceFront` maps
the database's and Redis's unavailability to 503 only for what runs inside it) shows up here as a
500: the identity provider's CORS middleware did (tests/faults/test_provider_cors.py).

Each probe is also fired once with everything up, and must then answer below 500 too: a probe that
never reaches its handler would prove nothing. That baseline sends one probe after the other
(:func:`unreached`): several probes share the browser's refresh token and session, and fired at once
they queued on the same rows past the stack's lock bound on a busy host.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from identity.browser import CSRF_COOKIE, CsrfSigner
from svckit.identity import Identity
from svckit.keyring import KeyRing
from svckit.server import KEEP_ALIVE_SECONDS
from yarl import URL

from testkit.auditevents import make_event
from testkit.dpop import DpopKey
from testkit.fixtures import Caller, ServiceProcess, user
from testkit.oidc import (
    BATCH_SECRET,
    DEMO_PASSWORD,
    Browser,
    code_request,
    hidden_field,
    pkce_pair,
    sign_in_tokens,
)

from .conftest import Figures, Stack, wait_ready
from .load import reserve_days

pytestmark = pytest.mark.timeout(240)

SPA_ORIGIN = "http://localhost:8080"
PROBLEM = "application/problem+json"
#: where a 5xx may be the OAuth error JSON (RFC 6749 §5.2 / RFC 7009) instead of a problem document
OAUTH = "oauth"
#: a browser page: its 5xx is an HTML page
PAGE = "page"
API = "api"
#: FAULT_MATRIX_VERBOSE=1 prints every answer under every fault (``pytest -s``)
VERBOSE = bool(os.environ.get("FAULT_MATRIX_VERBOSE"))
#: a readiness probe: its 503 is a problem with Retry-After too (tests/faults/test_not_ready.py)
PROBE = "probe"


@dataclass(frozen=True)
class Probe:
    name: str
    method: str
    url: str
    kind: str = API
    #: fresh headers and body per send (signed identities and DPoP proofs are used once)
    build: Callable[[], tuple[dict[str, str], bytes | None]] = lambda: ({}, None)
    via_gateway: bool = False


@dataclass
class Reply:
    status: int
    content_type: str
    retry_after: str | None
    body: str
    #: sent on a kept-alive connection (else a new one): what tells the client's keep-alive race
    #: (a server closing an idle connection as the request arrives) from a server dropping a request
    reused: bool = False


@dataclass
class Matrix:
    probes: list[Probe] = field(default_factory=list)

    def add(self, probe: Probe, *, origin: bool = False) -> None:
        """The probe, and (``origin``) the same with the SPA's ``Origin`` header."""
        self.probes.append(probe)
        if origin:
            build = probe.build

            def with_origin() -> tuple[dict[str, str], bytes | None]:
                headers, body = build()
                return {**headers, "Origin": SPA_ORIGIN}, body

            self.probes.append(
                Probe(
                    probe.name + " +Origin",
                    probe.method,
                    probe.url,
                    probe.kind,
                    with_origin,
                    probe.via_gateway,
                )
            )


async def fire(
    http: aiohttp.ClientSession,
    probe: Probe,
    built: tuple[dict[str, str], bytes | None] | None = None,
) -> Reply:
    headers, body = built if built is not None else probe.build()
    sent = Sent()
    try:
        async with http.request(
            # sent as signed: yarl would otherwise re-quote the query (``%3A`` → ``:``)
            probe.method,
            URL(probe.url, encoded=True),
            headers=headers,
            data=body,
            allow_redirects=False,
            trace_request_ctx=sent,
        ) as response:
            text = await response.text(errors="replace")
            return Reply(
                response.status,
                response.headers.get("Content-Type", "").split(";")[0].strip(),
                response.headers.get("Retry-After"),
                text[:300],
                sent.reused,
            )
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        return Reply(0, "", None, f"{type(exc).__name__}: {exc}", sent.reused)


@dataclass
class Sent:
    """What the probe client's trace saw of one request (``trace_request_ctx``)."""

    reused: bool = False


async def _on_reuse(
    session: aiohttp.ClientSession, context: Any, params: aiohttp.TraceConnectionReuseconnParams
) -> None:
    if isinstance(context.trace_request_ctx, Sent):
        context.trace_request_ctx.reused = True


def violation(probe: Probe, reply: Reply) -> str | None:
    """What is wrong with this answer under a fault (None: nothing)."""
    status = reply.status
    if status == 0:
        return f"no answer on a {'reused' if reply.reused else 'new'} connection ({reply.body})"
    if status < 500:
        return None
    if status != 503 and not (probe.via_gateway and status in (502, 504)):
        return f"{status} {reply.content_type}: {reply.body[:200]}"
    shapes = {PROBLEM}
    if probe.kind == OAUTH:
        shapes.add("application/json")
    if probe.kind == PAGE:  # a person reads it: the provider's own page, not a JSON document
        shapes = {"text/html"}
    if reply.content_type not in shapes:
        return f"{status} as {reply.content_type!r}: {reply.body[:200]}"
    if reply.content_type == "application/json" and '"error"' not in reply.body:
        return f"{status} JSON without an OAuth error: {reply.body[:200]}"
    if status == 503 and reply.retry_after is None:
        return f"503 without Retry-After: {reply.body[:200]}"
    return None


#: how long the matrix's client keeps an idle connection: well below the servers' keep-alive
#: (``KEEP_ALIVE_SECONDS``, 5). ``PEER_IDLE_SECONDS`` (4) leaves the services' pools one second, and a
#: CI run at a load of 6-9 lost four POSTs on kept-alive connections closed under them ("redis at
#: maxclients round 2: gateway POST /api/timesheets: no answer on a reused connection"; aiohttp sends
#: an idempotent request again by itself, a POST it does not): the client's own stalls, not a server's
PROBE_IDLE_SECONDS = KEEP_ALIVE_SECONDS - 3.0


def probe_session(
    timeout: aiohttp.ClientTimeout, keepalive: float = PROBE_IDLE_SECONDS
) -> aiohttp.ClientSession:
    """The matrix's client, keeping an idle connection :data:`PROBE_IDLE_SECONDS` at most (below the
    servers' keep-alive by more than the services' pools): with aiohttp's 15 s, a probe sent on a connection
    idle through a slow fault transition met the server closing it at that moment (a CI run: "audit
    POST /internal/events: no answer (ServerDisconnectedError)", the client's race, not the service's)."""
    trace = aiohttp.TraceConfig()
    trace.on_connection_reuseconn.append(_on_reuse)
    return aiohttp.ClientSession(
        timeout=timeout,
        cookie_jar=aiohttp.DummyCookieJar(),
        connector=aiohttp.TCPConnector(keepalive_timeout=keepalive),
        trace_configs=[trace],
    )


async def fire_all(http: aiohttp.ClientSession, probes: list[Probe]) -> list[tuple[Probe, Reply]]:
    """Every probe at once. Their headers and bodies are built first (signed tokens, DPoP proofs:
    milliseconds of CPU each, seconds for the whole matrix on a loaded host): built inside each send,
    a probe that had taken a kept-alive connection waited for every later probe's signing before its
    body went out, and a connection idle nearly its keep-alive (then ``PEER_IDLE_SECONDS``) reached
    the server's keep-alive bound first — closed under the request (a three-worker run: "postgres
    hung … gateway POST /api/timesheets: no answer (ServerDisconnectedError)"; replayed by
    :func:`test_no_probe_waits_for_the_others_signing_on_a_kept_alive_connection`)."""
    built = [probe.build() for probe in probes]
    replies = await asyncio.gather(*(fire(http, probe, b) for probe, b in zip(probes, built, strict=True)))
    return list(zip(probes, replies, strict=True))


async def unreached(http: aiohttp.ClientSession, probes: list[Probe]) -> list[str]:
    """The baseline, with everything up: the probes that did not reach their handler (a 5xx, or no
    answer), as ``name: status body``. One probe after the other: fired at once, the probes that share
    a credential queued on its rows, and on a busy host the queue outlasted the lock bound
    (:func:`test_the_baseline_probes_one_route_at_a_time`)."""
    replies = [(probe, await fire(http, probe)) for probe in probes]
    return [f"{p.name}: {r.status} {r.body[:200]}" for p, r in replies if not 0 < r.status < 500]


class LogWatch:
    """New lines of every service's log since :meth:`mark` that carry a traceback."""

    def __init__(self, stack: Stack) -> None:
        self.paths: dict[str, Path] = {name: s.log_path for name, s in stack.services.items()}
        self.offsets: dict[str, int] = {}

    def mark(self) -> None:
        self.offsets = {
            name: path.stat().st_size if path.exists() else 0 for name, path in self.paths.items()
        }

    def tracebacks(self) -> list[str]:
        found = []
        for name, path in self.paths.items():
            if not path.exists():
                continue
            with path.open("rb") as log:
                log.seek(self.offsets.get(name, 0))
                for raw in log.read().decode(errors="replace").splitlines():
                    if "Traceback" not in raw:
                        continue
                    try:
                        line = json.loads(raw)
                        last = str(line.get("exc", "")).strip().splitlines()[-1:]
                        found.append(f"{name} {line.get('logger')}: {line.get('msg')} — {' '.join(last)}")
                    except (ValueError, AttributeError):
                        found.append(f"{name}: {raw[:300]}")
        return found


# ---- the probes ------------------------------------------------------------------------------------


async def dpop_token(http: aiohttp.ClientSession, stack: Stack, key: DpopKey) -> str:
    """A DPoP-bound client-credentials token of the batch client (one nonce round when asked)."""
    url = stack.issuer.rstrip("/") + "/oauth/token"
    form = {
        "grant_type": "client_credentials",
        "client_id": "timesheets-batch",
        "client_secret": BATCH_SECRET,
        "audience": "https://timesheets.abc.example/api",
    }
    nonce = None
    for _ in range(2):
        async with http.post(url, data=form, headers={"DPoP": key.proof("POST", url, nonce=nonce)}) as reply:
            body = await reply.json()
            if reply.status == 200:
                assert body["token_type"] == "DPoP", body
                return str(body["access_token"])
            nonce = reply.headers.get("DPoP-Nonce")
            assert nonce, body
    raise AssertionError("no DPoP-bound token")


async def create_entry(http: aiohttp.ClientSession, stack: Stack, day: dt.date) -> str:
    entry = {"date": day.isoformat(), "project": "fault matrix", "hours": 1, "notes": "matrix"}
    async with http.post(stack.api + "/timesheets", json=entry, headers=stack.headers("alice")) as reply:
        body = await reply.json()
        assert reply.status == 201, body
        return str(body["id"])


def cookie_header(jar: aiohttp.abc.AbstractCookieJar) -> str:
    return "; ".join(f"{c.key}={c.value}" for c in jar)


async def build_matrix(stack: Stack) -> Matrix:
    matrix = Matrix()
    base = stack.identity.url
    gw = stack.gateway.url
    # days of its own (entries on day, day + 1 and day + 2): a random one in the loads' years met a
    # load's day of 20 hours and made its writes 422 (the 24-hour cap)
    day = reserve_days(3)
    key = DpopKey()
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        read_entry, delete_entry, decide_entry = [await create_entry(http, stack, day) for _ in range(3)]
        dpop_access = await dpop_token(http, stack, key)
        # a signed-in browser: its session cookie, its CSRF cookie and the forms' tokens
        browser = Browser(base, http)
        tokens = await sign_in_tokens(
            browser, http, base, "alice", scope="openid offline_access read:timesheets"
        )
        await browser.get("/login")  # sets the CSRF cookie
        hidden_field(browser.last_html, "csrf_token")
        jar = {c.key: c.value for c in http.cookie_jar}
        cookies = cookie_header(http.cookie_jar)
    # the forms' tokens as the provider makes them (its session secret): a valid token for each form
    csrf = CsrfSigner(KeyRing.parse(stack.identity.env["IDENTITY_SESSION_SECRET"]))
    login_csrf, consent_csrf, revoke_csrf, logout_csrf = (
        csrf.token(jar[CSRF_COOKIE], purpose) for purpose in ("login", "consent", "revoke", "logout")
    )
    refresh_token = str(tokens.get("refresh_token", "none"))
    id_token = str(tokens["id_token"])
    access = str(tokens["access_token"])  # this browser's own: the revocation probes revoke it
    verifier, challenge = pkce_pair()
    authorize_query = urlencode(code_request(challenge, scope="openid read:timesheets"))

    def static(headers: dict[str, str] | None = None, body: bytes | None = None) -> Callable[..., Any]:
        return lambda: (dict(headers or {}), body)

    def form(fields: dict[str, str], headers: dict[str, str] | None = None) -> Callable[..., Any]:
        return static(
            {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})},
            urlencode(fields).encode(),
        )

    def as_json(value: Any, headers: dict[str, str]) -> Callable[..., Any]:
        return static({"Content-Type": "application/json", **headers}, json.dumps(value).encode())

    # --- through the gateway: every route of routes.yaml, and the web app's own --------------------
    who = {"alice": stack.headers("alice"), "bob": stack.headers("bob"), "carol": stack.headers("carol")}
    entry = {"date": (day + dt.timedelta(days=1)).isoformat(), "project": "matrix", "hours": 1}
    upload = {"entries": [{"user": "local|alice", **entry}]}
    gateway_routes: list[tuple[str, str, Callable[..., Any]]] = [
        ("GET", "/api/timesheets?limit=5", static(who["alice"])),
        ("POST", "/api/timesheets", as_json(entry, who["alice"])),
        ("POST", "/api/timesheets/upload", as_json(upload, stack.headers("batch"))),
        ("GET", f"/api/timesheets/{read_entry}", static(who["alice"])),
        ("DELETE", f"/api/timesheets/{delete_entry}", static(who["alice"])),
        ("GET", "/api/approvals", static(who["bob"])),
        ("PUT", f"/api/approvals/{decide_entry}", as_json({"decision": "approved"}, who["bob"])),
        ("GET", "/api/audit/events?limit=5", static(who["carol"])),
        ("GET", "/api/audit/verify", static(who["carol"])),
        ("GET", "/api/audit/checkpoints", static(who["carol"])),
        ("GET", "/api/audit/checkpoint-keys", static(who["carol"])),
        ("GET", "/api/timesheets", static({"Authorization": "Bearer not-a-token"})),
        ("GET", "/api/nowhere", static(who["alice"])),
        ("GET", "/api/openapi.json", static()),
        (
            "OPTIONS",
            "/api/timesheets",
            static(
                {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
            ),
        ),
        ("GET", "/config.json", static()),
        ("GET", "/", static()),
        ("GET", "/healthz", static()),
    ]
    for method, path, build in gateway_routes:
        matrix.add(Probe(f"gateway {method} {path}", method, gw + path, API, build, True), origin=True)
    matrix.add(Probe("gateway GET /readyz", "GET", gw + "/readyz", PROBE, static(), True))
    upload_url = gw + "/api/timesheets/upload"

    def dpop_upload() -> tuple[dict[str, str], bytes | None]:
        proof = key.proof("POST", upload_url, access_token=dpop_access)
        headers = {"Authorization": f"DPoP {dpop_access}", "DPoP": proof, "Content-Type": "application/json"}
        return headers, json.dumps(upload).encode()

    matrix.add(
        Probe("gateway POST /api/timesheets/upload (DPoP)", "POST", upload_url, API, dpop_upload, True)
    )

    # --- the provider's own routes ------------------------------------------------------------------
    session = {"Cookie": cookies}
    token_url = stack.issuer.rstrip("/") + "/oauth/token"

    def dpop_grant() -> tuple[dict[str, str], bytes | None]:
        fields = {
            "grant_type": "client_credentials",
            "client_id": "timesheets-batch",
            "client_secret": BATCH_SECRET,
            "audience": "https://timesheets.abc.example/api",
        }
        headers = {"DPoP": key.proof("POST", token_url), "Content-Type": "application/x-www-form-urlencoded"}
        return headers, urlencode(fields).encode()

    def wrong_password() -> tuple[dict[str, str], bytes | None]:
        # a refused sign-in of a user of its own each time: alice's sign-ins are never throttled
        fields = {"username": f"matrix-{uuid.uuid4().hex[:8]}", "password": "wrong", "csrf_token": login_csrf}
        return {**session, "Content-Type": "application/x-www-form-urlencoded"}, urlencode(fields).encode()

    spa = {"client_id": "timesheets-spa"}
    provider: list[tuple[str, str, str, Callable[..., Any], bool]] = [
        ("GET", "/.well-known/openid-configuration", API, static(), True),
        ("GET", "/.well-known/jwks.json", API, static(), True),
        (
            "OPTIONS",
            "/oauth/token",
            API,
            static(
                {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
            ),
            True,
        ),
        ("GET", f"/authorize?{authorize_query}", PAGE, static(session), False),
        ("GET", f"/authorize?{authorize_query}", PAGE, static(), False),
        (
            "POST",
            "/authorize/decision",
            PAGE,
            form({"csrf_token": consent_csrf, "decision": "allow", "request": authorize_query}, session),
            False,
        ),
        ("GET", "/login", PAGE, static(), False),
        ("GET", "/login", PAGE, static(session), False),
        (
            "POST",
            "/login",
            PAGE,
            form({"username": "alice", "password": DEMO_PASSWORD, "csrf_token": login_csrf}, session),
            False,
        ),
        (
            "POST",
            "/login",
            PAGE,
            wrong_password,
            False,
        ),
        (
            "POST",
            "/oauth/token",
            OAUTH,
            form(
                {
                    "grant_type": "authorization_code",
                    "code": "x" * 43,
                    "code_verifier": verifier,
                    "redirect_uri": "http://localhost:8080/callback",
                    **spa,
                }
            ),
            True,
        ),
        (
            "POST",
            "/oauth/token",
            OAUTH,
            form({"grant_type": "refresh_token", "refresh_token": refresh_token, **spa}),
            True,
        ),
        (
            "POST",
            "/oauth/token",
            OAUTH,
            form(
                {
                    "grant_type": "client_credentials",
                    "client_id": "timesheets-batch",
                    "client_secret": BATCH_SECRET,
                    "audience": "https://timesheets.abc.example/api",
                }
            ),
            False,
        ),
        (
            "POST",
            "/oauth/token",
            OAUTH,
            form(
                {
                    "grant_type": "client_credentials",
                    "client_id": "timesheets-batch",
                    "client_secret": "wrong",
                }
            ),
            False,
        ),
        ("POST", "/oauth/revoke", OAUTH, form({"token": refresh_token, **spa}), True),
        ("POST", "/oauth/revoke", OAUTH, form({"token": access, **spa}), False),
        ("GET", "/userinfo", API, static(stack.headers("alice")), True),
        ("POST", "/userinfo", API, static(stack.headers("alice")), False),
        ("GET", "/userinfo", API, static({"Authorization": "Bearer not-a-token"}), False),
        (
            "GET",
            "/v2/logout?" + urlencode({"client_id": "timesheets-spa", "returnTo": SPA_ORIGIN}),
            PAGE,
            static(session),
            False,
        ),
        ("GET", "/oidc/logout", PAGE, static(session), False),
        ("GET", "/oidc/logout?" + urlencode({"id_token_hint": id_token}), PAGE, static(session), False),
        (
            "POST",
            "/oidc/logout",
            PAGE,
            form({"csrf_token": logout_csrf, "id_token_hint": id_token}, session),
            False,
        ),
        ("GET", "/account/consents", PAGE, static(session), False),
        ("GET", "/account/consents", PAGE, static(), False),
        (
            "POST",
            "/account/consents/revoke",
            PAGE,
            form({"csrf_token": revoke_csrf, "client_id": "nobody"}, session),
            False,
        ),
        ("GET", "/healthz", API, static(), False),
        ("GET", "/nowhere", API, static(), False),
    ]
    for method, path, kind, build, origin in provider:
        matrix.add(Probe(f"identity {method} {path[:40]}", method, base + path, kind, build), origin=origin)
    matrix.add(Probe("identity POST /oauth/token (DPoP)", "POST", base + "/oauth/token", OAUTH, dpop_grant))
    matrix.add(Probe("identity GET /readyz", "GET", base + "/readyz", PROBE, static()))

    # --- each service directly, signed as its peers sign ----------------------------------------------
    caller = Caller(stack.identity_keys)
    alice = user(
        "local|alice", "read:timesheets", "create:timesheets", "delete:timesheets", issuer=stack.issuer
    )
    bob = user("local|bob", "read:timesheets", "approve:timesheets", issuer=stack.issuer)
    carol = user("local|carol", "read:audit", issuer=stack.issuer)
    batch = Identity(
        stack.issuer,
        "timesheets-batch@clients",
        "client",
        "timesheets-batch",
        frozenset({"batch:upload"}),
        "",
    )

    def signed(identity: Identity, method: str, url: str, value: Any = None) -> Callable[..., Any]:
        def build() -> tuple[dict[str, str], bytes | None]:
            raw = json.dumps(value).encode() if value is not None else b""
            headers = caller.headers(identity, method, url, body=raw)
            if value is not None:
                headers["Content-Type"] = "application/json"
            return headers, raw or None

        return build

    ts, ap, au = stack.timesheets.url, stack.approvals.url, stack.audit.url
    approvals_service, timesheets_service = Identity.service("approvals"), Identity.service("timesheets")
    pending = "/internal/timesheets/pending?" + urlencode(
        {"exclude_issuer": stack.issuer, "exclude_subject": "local|bob", "limit": "5"}
    )
    apply = {
        "decision_id": str(uuid.uuid4()),
        "decision": "rejected",
        "comment": None,
        "by": {"issuer": stack.issuer, "subject": "local|bob"},
        "at": "2026-10-01T12:00:00Z",
    }
    event = make_event(
        subject="local|alice",
        resource_id=read_entry,
        occurred_at=dt.datetime(2026, 10, 1, 12, tzinfo=dt.UTC),
        details={"project": "matrix"},
        request_id="matrix",
    )
    event["actor"]["issuer"] = stack.issuer
    direct: list[tuple[str, str, str, Identity | None, Any]] = [
        ("timesheets", "GET", ts + "/timesheets?limit=5", alice, None),
        (
            "timesheets",
            "POST",
            ts + "/timesheets",
            alice,
            {**entry, "date": (day + dt.timedelta(days=2)).isoformat()},
        ),
        ("timesheets", "POST", ts + "/timesheets/upload", batch, upload),
        ("timesheets", "GET", ts + f"/timesheets/{read_entry}", alice, None),
        ("timesheets", "DELETE", ts + f"/timesheets/{uuid.uuid4()}", alice, None),
        ("timesheets", "GET", ts + pending, approvals_service, None),
        ("timesheets", "GET", ts + f"/internal/timesheets/{read_entry}", approvals_service, None),
        ("timesheets", "POST", ts + f"/internal/timesheets/{read_entry}/decision", approvals_service, apply),
        ("timesheets", "GET", ts + "/timesheets", None, None),  # unsigned: a denial, recorded
        ("approvals", "GET", ap + "/approvals", bob, None),
        (
            "approvals",
            "PUT",
            ap + f"/approvals/{read_entry}",
            bob,
            {"decision": "rejected", "comment": "matrix"},
        ),
        ("approvals", "GET", ap + "/approvals", None, None),
        ("audit", "POST", au + "/internal/events", timesheets_service, {"events": [event]}),
        ("audit", "GET", au + f"/internal/receipts/{uuid.uuid4()}", timesheets_service, None),
        ("audit", "GET", au + "/audit/events?limit=5", carol, None),
        ("audit", "GET", au + "/audit/verify", carol, None),
        ("audit", "GET", au + "/audit/checkpoints", carol, None),
        ("audit", "GET", au + "/audit/checkpoint-keys", carol, None),
        ("audit", "GET", au + "/audit/events", None, None),
    ]
    for service, method, url, identity, value in direct:
        build = static() if identity is None else signed(identity, method, url, value)
        path = url.split("/", 3)[3][:40]
        matrix.add(
            Probe(
                f"{service} {method} /{path}" + ("" if identity else " (unsigned)"), method, url, API, build
            )
        )
    for name, process in stack.services.items():
        if name not in ("gateway", "identity"):
            matrix.add(Probe(f"{name} GET /readyz", "GET", process.url + "/readyz", PROBE, static()))
            matrix.add(
                Probe(f"{name} GET /openapi.json", "GET", process.url + "/openapi.json", API, static())
            )
    return matrix


# ---- the faults ------------------------------------------------------------------------------------


async def under_fault(
    stack: Stack,
    http: aiohttp.ClientSession,
    matrix: Matrix,
    logs: LogWatch,
    stop: Callable[[], Awaitable[None]],
    start: Callable[[], Awaitable[None]],
    rounds: int = 2,
    gone: str | None = None,
    fault: str = "",
) -> tuple[list[str], dict[int, int]]:
    """``gone``: the base URL of a service the fault stops (nothing answers there meanwhile)."""
    probes = [p for p in matrix.probes if gone is None or not p.url.startswith(gone + "/")]
    logs.mark()
    problems: list[str] = []
    statuses: dict[int, int] = {}
    await stop()
    try:
        for n in range(rounds):
            for probe, reply in await fire_all(http, probes):
                statuses[reply.status] = statuses.get(reply.status, 0) + 1
                if VERBOSE:  # every answer, to see what each probe reached
                    print(f"{fault} round {n + 1}: {reply.status} {probe.name}: {reply.body[:100]!r}")
                wrong = violation(probe, reply)
                if wrong is not None:
                    problems.append(f"round {n + 1}: {probe.name}: {wrong}")
            await asyncio.sleep(0.6)  # past the Redis circuit's retry (REDIS_RETRY_SECONDS=0.5)
    finally:
        await start()
    await asyncio.sleep(1.0)  # the last background attempts' log lines
    problems += [f"log: {line}" for line in logs.tracebacks()]
    return problems, statuses


async def test_no_route_answers_500_under_any_fault(stack: Stack, figures: Figures) -> None:
    await stack.ensure_up()
    matrix = await build_matrix(stack)
    logs = LogWatch(stack)
    async with probe_session(aiohttp.ClientTimeout(total=20)) as http:
        # every probe reaches something with everything up (a probe refused at the door proves nothing)
        logs.mark()
        assert await unreached(http, matrix.probes) == []
        assert logs.tracebacks() == []

        async def postgres_down() -> None:
            await asyncio.to_thread(stack.postgres.stop, "fast")

        async def postgres_up() -> None:
            await asyncio.to_thread(stack.postgres.start)
            for service in stack.services.values():
                await wait_ready(service.url)

        async def read_only(on: bool) -> None:
            # what a demoted primary (or a standby the DSN reached during a failover) answers to a write:
            # SQLSTATE 25006, "cannot execute INSERT in a read-only transaction"
            conn = await stack.db()
            try:
                await conn.execute(
                    f"ALTER SYSTEM SET default_transaction_read_only = {'on' if on else 'off'}"
                )
                await conn.execute("SELECT pg_reload_conf()")
            finally:
                await conn.close()
            await asyncio.sleep(0.3)  # every backend has read the configuration again

        async def postgres_read_only() -> None:
            await read_only(True)

        async def postgres_writable() -> None:
            await read_only(False)

        async def postgres_hung() -> None:
            await asyncio.to_thread(stack.postgres.pause)  # SIGSTOP: connections accepted, nothing answered

        async def postgres_resumed() -> None:
            await asyncio.to_thread(stack.postgres.resume)
            for service in stack.services.values():
                await wait_ready(service.url)

        async def redis_down() -> None:
            await asyncio.to_thread(stack.redis.stop)

        async def redis_up() -> None:
            await asyncio.to_thread(stack.redis.start)

        async def redis_hung() -> None:
            await asyncio.to_thread(stack.redis.pause)  # SIGSTOP: connections accepted, nothing answered

        async def redis_resumed() -> None:
            await asyncio.to_thread(stack.redis.resume)

        def killed(
            service: ServiceProcess,
        ) -> tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]:
            async def down() -> None:
                await asyncio.to_thread(service.stop, 5)

            async def up() -> None:
                await asyncio.to_thread(service.start, "/readyz", 60)
                for other in stack.services.values():  # its peers' readiness follows it
                    await wait_ready(other.url)

            return down, up

        started = time.monotonic()
        report: dict[str, Any] = {}
        failures: list[str] = []
        for fault, stop, start, rounds, gone in (
            ("postgres stopped", postgres_down, postgres_up, 2, None),
            ("postgres read-only", postgres_read_only, postgres_writable, 1, None),
            ("postgres hung", postgres_hung, postgres_resumed, 1, None),
            ("redis stopped", redis_down, redis_up, 2, None),
            ("redis hung", redis_hung, redis_resumed, 2, None),
            ("audit killed", *killed(stack.audit), 1, stack.audit.url),
            ("timesheets killed", *killed(stack.timesheets), 1, stack.timesheets.url),
        ):
            problems, statuses = await under_fault(
                stack, http, matrix, logs, stop, start, rounds, gone, fault
            )
            report[fault] = {"statuses": statuses, "violations": len(problems)}
            failures += [f"[{fault}] {line}" for line in problems]
        report["probes"] = len(matrix.probes)
        report["seconds"] = round(time.monotonic() - started, 1)
        figures.record("fault matrix", **report)
    await stack.ensure_up()
    assert failures == [], "\n".join(failures)


async def test_the_baseline_probes_one_route_at_a_time() -> None:
    """The baseline (everything up, every probe must be answered below 500) meets no lock of its own
    making. Its probes share credentials: the browser's refresh token is refreshed twice and revoked
    twice, its session signed out three times and replaced by a sign-in, and the provider serialises
    those on the same rows (``refresh_tokens``, ``sessions``, ``issued_tokens``). Fired at once, each
    transaction waited for the others', and the queue stayed below the stack's
    ``DB_LOCK_TIMEOUT_SECONDS`` (0.5 s) only while the host was quick: a CI run's disk-full matrix had
    its refresh probe answered 503 ``database_busy`` — the product shedding a wait the test had queued
    up. So the baseline sends one probe after the other (the faults' rounds still fire all at once:
    there a 503 with ``Retry-After`` is an allowed answer)."""
    in_flight = 0
    most = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        try:
            await asyncio.sleep(0.02)  # a transaction's few statements
            return web.Response(text="ok")
        finally:
            in_flight -= 1

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    async with TestServer(app) as server:
        probes = [Probe(f"probe {n}", "POST", str(server.make_url(f"/oauth/token/{n}"))) for n in range(8)]
        async with probe_session(aiohttp.ClientTimeout(total=10)) as http:
            assert await unreached(http, probes) == []
    assert most == 1


async def test_a_reply_says_whether_its_connection_was_kept_alive() -> None:
    """A probe that got no answer names the kind of connection it was sent on: a kept-alive one
    closed as the request arrived is the client's race, a new one dropped is the server's fault."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    async with TestServer(app) as server:
        probe = Probe("probe", "POST", str(server.make_url("/oauth/token")))
        async with probe_session(aiohttp.ClientTimeout(total=10)) as http:
            first, again = await fire(http, probe), await fire(http, probe)
            ((_, together),) = await fire_all(http, [probe])
    assert (first.status, first.reused) == (200, False)
    assert (again.status, again.reused) == (200, True)
    assert (together.status, together.reused) == (200, True)
    dropped = Reply(0, "", None, "ServerDisconnectedError: Server disconnected", reused=True)
    assert violation(probe, dropped) == (
        "no answer on a reused connection (ServerDisconnectedError: Server disconnected)"
    )


async def test_no_probe_waits_for_the_others_signing_on_a_kept_alive_connection() -> None:
    """The race of ``fire_all`` replayed: a server that closes a connection idle 1.5 s, a client that
    reuses one idle up to 1.0 s (``PEER_IDLE_SECONDS`` below the services' keep-alive, in miniature), a
    POST sent on a connection idle 0.8 s, and beside it a probe whose signing takes 1 s. Built inside
    each send, the POST's body went out 1.8 s after the connection's last answer, after the server had
    closed it: no answer. Built first, the POST finds the connection past the client's own bound and
    opens a new one."""
    ready = threading.Event()
    stopped = asyncio.Event()
    served: list[str] = []
    loop = asyncio.get_running_loop()

    def serve() -> None:
        async def main() -> None:
            async def handler(request: web.Request) -> web.Response:
                served.append(await request.text())
                return web.Response(text="ok")

            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", handler)
            runner = web.AppRunner(app, keepalive_timeout=1.5)
            await runner.setup()
            site = web.SockSite(runner, listener)
            await site.start()
            ready.set()
            try:
                await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(stopped.wait(), loop))
            finally:
                await runner.cleanup()

        asyncio.run(main())

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        assert await asyncio.to_thread(ready.wait, 10)

        def slow_signing() -> tuple[dict[str, str], bytes | None]:
            time.sleep(1.0)  # blocks the client's loop, as CPU-bound signing does
            return {}, b"slow"

        post = Probe("post", "POST", url + "/api/timesheets", build=lambda: ({}, b"post"))
        slow = Probe("slow", "GET", url + "/slow", build=slow_signing)
        async with probe_session(aiohttp.ClientTimeout(total=10), keepalive=1.0) as http:
            assert (await fire(http, post)).status == 200
            await asyncio.sleep(0.8)
            replies = {p.name: r for p, r in await fire_all(http, [post, slow])}
        assert (replies["post"].status, replies["slow"].status) == (200, 200), replies
        assert not replies["post"].reused
        assert served.count("post") == 2
    finally:
        stopped.set()
        await asyncio.to_thread(server.join, 10)
        listener.close()
