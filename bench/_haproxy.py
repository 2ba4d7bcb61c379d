"""HAProxy 2.6 doing the gateway's job, for ``bench/gateway.py``: its configuration and its checks.

The configuration is generated from the gateway's own route table and identity contract, so the two
fronts do the same work per request:

* the token from ``Authorization: Bearer`` (``http_auth_bearer``); ``alg`` pinned to ``RS256``
  (``jwt_header_query``), the RS256 signature checked on *every* request (``jwt_verify`` against the
  issuer's public key — HAProxy has no verified-token cache);
* the payload decoded once (``field(2,.),ub64dec``: 2.6's ``jwt_payload_query`` without an argument
  yields nothing), its claims read with ``json_query``; ``iss``, ``aud`` and ``exp`` (against
  ``date``) checked, and ``sub`` required;
* the route: every route of ``routes.yaml`` (method, literal or templated path) with its scopes, as
  a regex on the token's ``scope`` claim (403, or 404 / 405 when no route matches);
* incoming ``x-identity-*``, ``x-request-id``, ``Authorization``, ``Cookie`` and ``X-Forwarded-*``
  deleted, the ``/api`` prefix stripped;
* the identity headers set and signed with the ``hmac(sha256,<key>),ub64enc`` converters over the
  same canonical string as :func:`svckit.identity.canonical` (the version, key id, time, method,
  target, request id, then — when the contract has them — a fresh nonce (``uuid``) and the body's
  ``Content-Digest`` (``req.body,sha2(256),base64``; the request body is buffered), then the
  identity's fields, one per line).

Refusals answer RFC 6750 challenges as the gateway does (401 ``invalid_token``, 403
``insufficient_scope``), with a short JSON body.

What HAProxy cannot do the same way, and why the comparison still holds: it forwards the token's
``scope`` claim verbatim where the gateway sorts the scopes it signs, so the benchmark's tokens carry
their scopes sorted (the provider's order would otherwise make the signature differ); it reads
scopes from ``scope`` only (not an Auth0 ``permissions`` array) and one issuer with one key.

:func:`check` proves a configuration before any load: a good token reaches the upstream with
identity headers that :class:`svckit.identity.IdentityVerifier` accepts, a wrong scope is 403, an
``alg: none`` token and a tampered one are 401.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from gateway.routes import API_PREFIX, Route, RouteTable, load_routes
from svckit import identity as contract
from svckit.identity import VERSION, Identity, IdentityError, IdentityVerifier, identity_headers

ROUTES_FILE = Path(__file__).resolve().parents[1] / "services" / "gateway" / "gateway" / "routes.yaml"
UPSTREAMS = frozenset({"timesheets", "approvals", "audit"})
_JSON_401 = '\'{"error":"invalid_token"}\''
_CHALLENGE_401 = '\'Bearer realm="timesheets", error="invalid_token"\''


#: the contract signs a nonce and the body's Content-Digest too (tsp-identity-v2)
_BINDS_BODY = hasattr(contract, "NONCE") and hasattr(contract, "content_digest")
_BODY_LINES = [
    "    http-request set-var(txn.nonce) uuid,regsub(-,,g)",
    f'    http-request set-var(txn.digest) str("{getattr(contract, "EMPTY_DIGEST", "")}")',
    "    http-request set-var(txn.b64) req.body,sha2(256),base64 if { req.body_size gt 0 }",
    '    http-request set-var(txn.digest) str("sha-256=:"),concat(,txn.b64,":") if { var(txn.b64) -m found }',
    "    http-request del-header content-digest",
]


def _digest_of(body: bytes) -> str:
    digest: str = getattr(contract, "content_digest")(body)  # noqa: B009 (absent before tsp-identity-v2)
    return digest


def public_key_pem(key: rsa.RSAPrivateKey) -> bytes:
    """The issuer's public key as PEM (SubjectPublicKeyInfo): what ``jwt_verify`` loads at start."""
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _path_condition(route: Route) -> str:
    if None not in route.segments:
        return f"path -m str {route.template}"
    parts = ["[^/]+" if segment is None else segment for segment in route.segments]
    return "path -m reg '^/" + "/".join(parts) + "$'"


def _scope_acl(scope: str) -> str:
    return "'(^| )" + scope.replace(".", "\\.") + "( |$)'"


@dataclass(frozen=True)
class HaproxySetup:
    """What the configuration needs: where to listen and forward, whom to trust, how to sign."""

    listen_port: int
    upstream_port: int
    issuer: str
    audience: str
    public_key: Path
    key_id: str
    key: bytes
    routes: RouteTable

    def config(self) -> str:
        """The whole ``haproxy.cfg`` (one thread: pinned to one core like the Python servers)."""
        key_b64 = base64.b64encode(self.key).decode()
        cert = str(self.public_key)
        deny401 = f"return status 401 content-type application/json string {_JSON_401} hdr www-authenticate"
        lines = [
            "global",
            "    nbthread 1",
            "    maxconn 4096",
            "defaults",
            "    mode http",
            "    timeout connect 5s",
            "    timeout client 60s",
            "    timeout server 60s",
            "    timeout http-keep-alive 60s",
            "    option http-keep-alive",
            "    http-reuse always",
            "frontend api",
            f"    bind 127.0.0.1:{self.listen_port}",
            *(["    option http-buffer-request"] if _BINDS_BODY else []),
            "    unique-id-format %[uuid]",
            # nothing that claims an identity, or forwarding facts, comes from outside
            "    http-request del-header x-identity- -m beg",
            "    http-request del-header x-request-id",
            "    http-request del-header x-forwarded- -m beg",
            "    http-request del-header forwarded",
            # the token: RS256 only, its signature on every request
            "    http-request set-var(txn.bearer) http_auth_bearer",
            f"    http-request {deny401} {_CHALLENGE_401} unless {{ var(txn.bearer) -m found }}",
            "    http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('$.alg')",
            f"    http-request {deny401} {_CHALLENGE_401} unless {{ var(txn.alg) -m str RS256 }}",
            f'    http-request {deny401} {_CHALLENGE_401} unless {{ var(txn.bearer),jwt_verify("RS256","{cert}") -m int 1 }}',  # noqa: E501
            # the claims, from the payload decoded once
            "    http-request set-var(txn.payload) var(txn.bearer),field(2,.),ub64dec",
            "    http-request set-var(txn.iss) var(txn.payload),json_query('$.iss')",
            "    http-request set-var(txn.aud) var(txn.payload),json_query('$.aud')",
            "    http-request set-var(txn.exp) var(txn.payload),json_query('$.exp','int')",
            "    http-request set-var(txn.sub) var(txn.payload),json_query('$.sub')",
            "    http-request set-var(txn.azp) var(txn.payload),json_query('$.azp')",
            "    http-request set-var(txn.scope) var(txn.payload),json_query('$.scope')",
            "    http-request set-var(txn.name) var(txn.payload),json_query('$.name')",
            "    http-request set-var(txn.now) date",
            f"    http-request {deny401} {_CHALLENGE_401} unless {{ var(txn.iss) -m str {self.issuer} }}",
            f"    http-request {deny401} {_CHALLENGE_401} unless {{ var(txn.aud) -m str {self.audience} }}",
            f"    http-request {deny401} {_CHALLENGE_401} unless {{ var(txn.exp) -m found }}",
            f"    http-request {deny401} {_CHALLENGE_401} if {{ var(txn.exp),sub(txn.now) -m int lt 0 }}",
            f"    http-request {deny401} {_CHALLENGE_401} unless {{ var(txn.sub) -m found }}",
            "    http-request set-var(txn.kind) str(user)",
            "    http-request set-var(txn.kind) str(client) if { var(txn.payload),json_query('$.gty') "
            "-m str client-credentials }",
            "    http-request set-var(txn.kind) str(client) if { var(txn.azp) -m found } "
            "{ var(txn.sub),strcmp(txn.azp) -m int eq 0 }",
        ]
        # the routes: the first that matches sets its number; its scopes are checked after
        scopes: dict[str, str] = {}
        checks: list[str] = []
        routes = sorted(self.routes.routes, key=lambda r: None in r.segments)
        heads = [r for r in routes if r.method == "GET"]
        for number, route in enumerate([*routes, *heads], start=1):
            method = "HEAD" if number > len(routes) else route.method
            lines.append(
                f"    http-request set-var(txn.route) int({number}) if !{{ var(txn.route) -m found }} "
                f"{{ method {method} }} {{ {_path_condition(route)} }}"
            )
            names = [scopes.setdefault(scope, f"scope_{len(scopes) + 1}") for scope in sorted(route.scopes)]
            if names:
                checks.append(self._scope_rule(number, route, names))
        lines[lines.index("frontend api") + 2 : lines.index("frontend api") + 2] = [
            f"    acl {acl} var(txn.scope) -m reg {_scope_acl(scope)}" for scope, acl in scopes.items()
        ]
        lines.append(
            "    http-request return status 404 content-type application/json "
            'string \'{"error":"not_found"}\' unless { var(txn.route) -m found }'
        )
        lines += checks
        # what the upstream receives: no credentials, forwarding facts, the signed identity
        message = [
            f'str("{VERSION}\\n{self.key_id}\\n")',
            'concat(,txn.now,"\\n")',
            'concat(,txn.method,"\\n")',
            'concat(,txn.target,"\\n")',
            'concat(,txn.rid,"\\n")',
            *(['concat(,txn.nonce,"\\n")', 'concat(,txn.digest,"\\n")'] if _BINDS_BODY else []),
            'concat(,txn.iss,"\\n")',
            'concat(,txn.sub,"\\n")',
            'concat(,txn.kind,"\\n")',
            'concat(,txn.azp,"\\n")',
            'concat(,txn.scope,"\\n")',
            "concat(,txn.name,)",
        ]
        lines += [
            "    http-request del-header authorization",
            "    http-request del-header cookie",
            "    option forwardfor",
            "    http-request set-header x-forwarded-proto http",
            "    http-request set-var(txn.method) method",
            "    http-request set-var(txn.rid) unique-id",
            *(_BODY_LINES if _BINDS_BODY else []),
            f"    http-request set-var(txn.target) pathq,regsub(^{API_PREFIX}/,/)",
            f"    http-request set-var(txn.signed) {','.join(message)}",
            "    http-request set-path %[path,regsub(^/api/,/)]",
            "    http-request set-header x-identity-issuer %[var(txn.iss)]",
            "    http-request set-header x-identity-subject %[var(txn.sub)]",
            "    http-request set-header x-identity-kind %[var(txn.kind)]",
            "    http-request set-header x-identity-client-id %[var(txn.azp)] if { var(txn.azp) -m found }",
            "    http-request set-header x-identity-scopes %[var(txn.scope)] if { var(txn.scope) -m found }",
            "    http-request set-header x-identity-name %[var(txn.name)] if { var(txn.name) -m found }",
            "    http-request set-header x-identity-timestamp %[var(txn.now)]",
            f"    http-request set-header x-identity-key-id {self.key_id}",
            *(
                [
                    "    http-request set-header x-identity-nonce %[var(txn.nonce)]",
                    "    http-request set-header content-digest %[var(txn.digest)]",
                ]
                if _BINDS_BODY
                else []
            ),
            "    http-request set-header x-identity-signature "
            f"%[var(txn.signed),hmac(sha256,{key_b64}),ub64enc]",
            "    http-request set-header x-request-id %[var(txn.rid)]",
            "    http-response set-header x-request-id %[var(txn.rid)]",
            "    default_backend upstream",
            "backend upstream",
            f"    server upstream 127.0.0.1:{self.upstream_port} maxconn 256",
        ]
        return "\n".join(lines) + "\n"

    @staticmethod
    def _scope_rule(number: int, route: Route, names: list[str]) -> str:
        """403 on this route when a needed scope is missing ("all") or every one is ("any")."""
        body = '\'{"error":"insufficient_scope"}\''
        challenge = f'\'Bearer realm="timesheets", error="insufficient_scope", scope="{route.scope_text}"\''
        on_route = f"{{ var(txn.route) -m int {number} }}"
        if route.require == "all":
            conditions = " || ".join(f"{on_route} !{name}" for name in names)
        else:
            conditions = on_route + " " + " ".join(f"!{name}" for name in names)
        return (
            f"    http-request return status 403 content-type application/json string {body} "
            f"hdr www-authenticate {challenge} if {conditions}"
        )


def default_routes() -> RouteTable:
    return load_routes(ROUTES_FILE, UPSTREAMS)


class Haproxy:
    """One HAProxy process in the foreground (``-db``), pinned to ``core`` when ``taskset`` exists."""

    def __init__(self, setup: HaproxySetup, core: str | None = "0", log: Any = None) -> None:
        self.setup = setup
        self.directory = Path(tempfile.mkdtemp(prefix="bench-haproxy-"))
        self.config_path = self.directory / "haproxy.cfg"
        self.config_path.write_text(setup.config())
        self.core = core
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.setup.listen_port}"

    def validate(self) -> None:
        """``haproxy -c``: a configuration error is reported with HAProxy's own words."""
        result = subprocess.run(
            ["haproxy", "-c", "-f", str(self.config_path)], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"haproxy refused its configuration:\n{result.stdout}{result.stderr}")

    def start(self) -> None:
        self.validate()
        command = ["haproxy", "-db", "-f", str(self.config_path)]
        if self.core is not None and shutil.which("taskset"):
            command = ["taskset", "-c", self.core, *command]
        self.process = subprocess.Popen(
            command, stdout=self.log or subprocess.DEVNULL, stderr=self.log or subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"haproxy exited with {self.process.returncode}")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.setup.listen_port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("haproxy did not start listening")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


class VerifyingUpstream:
    """An upstream that checks the identity headers with the services' own verifier.

    Answers 200 with the identity it verified (or 401 with the reason) and remembers the last
    request's headers, so a check can compare them with what the token says.
    """

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        verifier = IdentityVerifier({"gateway": keys})  # the gateway's pair key with this upstream
        seen: list[dict[str, str]] = []
        self.seen = seen

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                raw = [(k.lower().encode(), v.encode()) for k, v in self.headers.items()]
                seen.append({k.decode(): v.decode() for k, v in raw})
                received = self.rfile.read(int(self.headers.get("content-length") or 0))
                try:
                    headers = identity_headers(raw)
                    if _BINDS_BODY and headers.get("content-digest") != _digest_of(received):
                        raise IdentityError("digest", "The Content-Digest does not match the body.")
                    identity = verifier.verify(headers, method=self.command, target=self.path)
                    status, body = 200, {"identity": _identity_json(identity), "target": self.path}
                except IdentityError as exc:
                    status, body = 401, {"reason": exc.reason}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                self.do_GET()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _identity_json(identity: Identity) -> dict[str, Any]:
    return {
        "issuer": identity.issuer,
        "subject": identity.subject,
        "kind": identity.kind,
        "client_id": identity.client_id,
        "scopes": sorted(identity.scopes),
        "name": identity.name,
    }


@contextmanager
def verifying_upstream(keys: Mapping[str, bytes]) -> Iterator[VerifyingUpstream]:
    upstream = VerifyingUpstream(keys)
    try:
        yield upstream
    finally:
        upstream.close()


def _get(url: str, headers: dict[str, str], body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers, data=body)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def unsigned_token(claims: dict[str, Any]) -> str:
    """An ``alg: none`` token (RFC 7519 §6): what a verifier that trusts the header would accept."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def tampered(token: str) -> str:
    """The same signature over a payload whose subject was changed."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "someone-else"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def check(url: str, upstream: VerifyingUpstream, good: str, wrong_scope: str, issuer: str) -> list[str]:
    """The pre-load checks against a running front; returns what went wrong (empty: all good).

    ``good`` must grant ``read:timesheets`` and ``create:timesheets`` (a POST with a body is checked
    too: its ``Content-Digest``, when the contract signs one), ``wrong_scope`` must not.
    """
    problems: list[str] = []
    payload = good.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    target = "/api/timesheets?limit=5"
    smuggled = {"X-Identity-Subject": "mallory", "X-Identity-Kind": "service", "X-Request-Id": "x\u00e9"}
    status, _, body = _get(url + target, {"Authorization": f"Bearer {good}", **smuggled})
    if status != 200:
        problems.append(f"good token: {status} {body[:200]!r} (upstream saw {upstream.seen[-1:]})")
    else:
        answer = json.loads(body)
        identity = answer["identity"]
        want = {
            "issuer": issuer,
            "subject": claims["sub"],
            "kind": "user",
            "client_id": claims.get("azp", ""),
            "scopes": sorted(claims["scope"].split()),
            "name": claims.get("name", ""),
        }
        if identity != want:
            problems.append(f"good token: upstream verified {identity}, expected {want}")
        if answer["target"] != target[len(API_PREFIX) :]:
            problems.append(f"good token: upstream got target {answer['target']!r}")
        forwarded = upstream.seen[-1]
        if "authorization" in forwarded or "cookie" in forwarded:
            problems.append("good token: credentials reached the upstream")
    entry = b'{"date":"2026-12-01","project":"Bench","hours":7.5}'
    status, _, body = _get(
        url + "/api/timesheets",
        {"Authorization": f"Bearer {good}", "Content-Type": "application/json"},
        entry,
    )
    if status != 200:
        problems.append(f"a POST with a body: {status} {body[:200]!r}")
    status, headers, _ = _get(url + "/api/timesheets", {"Authorization": f"Bearer {wrong_scope}"})
    if status != 403 or "insufficient_scope" not in headers.get("www-authenticate", ""):
        problems.append(f"wrong scope: {status} {headers.get('www-authenticate')!r}, expected 403")
    for what, token in (("alg none", unsigned_token(claims)), ("tampered", tampered(good))):
        before = len(upstream.seen)
        status, headers, _ = _get(url + "/api/timesheets", {"Authorization": f"Bearer {token}"})
        if status != 401 or "invalid_token" not in headers.get("www-authenticate", ""):
            problems.append(f"{what}: {status}, expected 401 invalid_token")
        if len(upstream.seen) != before:
            problems.append(f"{what}: reached the upstream")
    status, _, _ = _get(url + "/api/timesheets", {})
    if status != 401:
        problems.append(f"no token: {status}, expected 401")
    return problems


def haproxy_available() -> bool:
    return shutil.which("haproxy") is not None
