"""API mix through the gateway: create and list timesheet entries at 32 concurrent clients.

What runs (real processes on loopback, started and stopped here): a minimal OIDC issuer (discovery +
JWKS, in this process), the gateway as it ships (token verification, rate limiting, audit of
denials, metrics; one worker), the timesheets service (one worker, its outbox relaying to) the audit
service, and PostgreSQL/Redis from ``DATABASE_URL``/``REDIS_URL`` (embedded ones when unset). The
load is ``wrk -t1 -c32`` pinned to the last core: each request alternates between
``POST /api/timesheets`` (a new entry) and ``GET /api/timesheets?limit=20`` (the first page of the
caller's ~100 entries), each connection rotating over 32 users' tokens.

The same mix is then sent straight to the timesheets service with pre-signed identity headers (the
gateway's hop removed) so the two figures, measured in one run, can be compared as a ratio.

Writes ``bench/results/api.json`` (rps, p50/p90/p99 in ms, non-2xx count for the gateway case at the
top level, the direct case under ``direct_to_timesheets``) and prints a table.
``BENCH_API_SECONDS`` (default 15) sets the measured duration; a 3-second warm-up precedes it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from svckit.identity import Identity
from svckit.migrations import migrate

from bench._backing import fresh_database, servers
from testkit.fixtures import ServiceProcess, free_port, new_pair_keys, pair_signer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
AUDIENCE = "https://timesheets.abc.example/api"
CLIENTS = 32
USERS = 32
SEED_PER_USER = 100
SCOPES = "openid read:timesheets create:timesheets"


class Issuer:
    """Discovery + JWKS for one RSA key; tokens minted here verify at the gateway like real ones
    (also used by ``tests/domain/test_through_gateway.py``)."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}/"
        jwk = {**RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True), "kid": "bench-1", "alg": "RS256"}
        documents = {
            "/.well-known/openid-configuration": {"issuer": self.issuer, "jwks_uri": self.issuer + "jwks"},
            "/jwks": {"keys": [jwk]},
        }

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps(documents.get(self.path, {})).encode()
                self.send_response(200 if self.path in documents else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "public, max-age=3600")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token(self, subject: str, scope: str = SCOPES, name: str | None = None) -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": AUDIENCE,
            "azp": "timesheets-spa",
            "iat": now,
            "exp": now + 3600,
            "scope": scope,
            "jti": uuid.uuid4().hex,
        }
        if name:
            claims["name"] = name
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": "bench-1", "typ": "at+jwt"})

    def close(self) -> None:
        self.server.shutdown()


async def prepare_database(url: str, issuer: str, subjects: list[str]) -> None:
    for service in ("timesheets", "audit"):
        await migrate(url, service, ROOT / "services" / service / service / "migrations")
    conn = await asyncpg.connect(url)
    try:
        today = dt.date(2026, 11, 27)
        await conn.copy_records_to_table(
            "entries",
            schema_name="timesheets",
            columns=["id", "owner_issuer", "owner_subject", "date", "project", "hours", "source"],
            records=[
                (uuid.uuid4(), issuer, subject, today - dt.timedelta(days=n), "Seed", 8, "api")
                for subject in subjects
                for n in range(SEED_PER_USER)
            ],
        )
        await conn.execute("ANALYZE timesheets.entries")
    finally:
        await conn.close()


async def count_entries(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        value: int = await conn.fetchval("SELECT count(*) FROM timesheets.entries")
        return value
    finally:
        await conn.close()


LUA = """
local tokens = {%(tokens)s}
local n = 0
request = function()
  n = n + 1
  local auth = "Bearer " .. tokens[(n %% #tokens) + 1]
  if n %% 2 == 0 then
    local body = string.format('{"date":"2026-%%02d-%%02d","project":"Bench","hours":7.5,"notes":"wrk"}',
                               (n %% 12) + 1, (n %% 28) + 1)
    return wrk.format("POST", "/api/timesheets",
                      {["Authorization"] = auth, ["Content-Type"] = "application/json"}, body)
  end
  return wrk.format("GET", "/api/timesheets?limit=20", {["Authorization"] = auth})
end
"""


DIRECT_LUA = """
local posts = {%(posts)s}
local gets = {%(gets)s}
local n = 0
request = function()
  n = n + 1
  local i = (n %% #posts) + 1
  if n %% 2 == 0 then
    local headers = posts[i]
    headers["Content-Type"] = "application/json"
    local body = string.format('{"date":"2026-%%02d-%%02d","project":"Bench","hours":7.5,"notes":"wrk"}',
                               (n %% 12) + 1, (n %% 28) + 1)
    return wrk.format("POST", "/timesheets", headers, body)
  end
  return wrk.format("GET", "/timesheets?limit=20", gets[i])
end
"""


def direct_script(path: Path, identity_keys: dict[str, str], issuer: str, subjects: list[str]) -> None:
    """Pre-signed identity headers, as the gateway would send them, per user and request line.

    The signature binds the method, path and query and a timestamp valid for
    ``IDENTITY_MAX_SKEW_SECONDS`` (60 s), so the headers are minted right before the run.
    """
    signer = pair_signer(identity_keys, "gateway", "timesheets")

    def table(subject: str, method: str, target: str) -> str:
        identity = Identity(issuer, subject, "user", "timesheets-spa", frozenset(SCOPES.split()), "")
        headers = signer.headers(identity, method=method, target=target)
        return "{" + ", ".join(f"[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()) + "}"

    path.write_text(
        DIRECT_LUA
        % {
            "posts": ", ".join(table(s, "POST", "/timesheets") for s in subjects),
            "gets": ", ".join(table(s, "GET", "/timesheets?limit=20") for s in subjects),
        }
    )


def run_wrk(url: str, script: Path, seconds: float, *, connections: int = CLIENTS) -> dict[str, Any]:
    cores = os.cpu_count() or 1
    command = ["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--latency", "-s", str(script), url]
    if cores > 1 and shutil.which("taskset"):
        command = ["taskset", "-c", str(cores - 1), *command]
    output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout

    def latency(label: str) -> float:
        match = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        if not match:
            return float("nan")
        value, unit = float(match[1]), match[2]
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    requests = re.search(r"(\d+) requests in", output)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: (.*)", output)
    return {
        "requests": int(requests[1]) if requests else 0,
        "rps": float(rps[1]) if rps else 0.0,
        "p50_ms": latency("50"),
        "p90_ms": latency("90"),
        "p99_ms": latency("99"),
        "non_2xx": int(non_2xx[1]) if non_2xx else 0,
        "socket_errors": socket_errors[1].strip() if socket_errors else "",
        "raw": output,
    }


def main() -> int:
    if not shutil.which("wrk"):
        print("wrk is not installed (make system-deps); skipping the API benchmark")
        return 1
    seconds = float(os.environ.get("BENCH_API_SECONDS", "15"))
    issuer = Issuer()
    subjects = [f"bench-user-{i:02d}" for i in range(USERS)]
    name = f"tsp_bench_api_{os.getpid()}"
    processes: list[ServiceProcess] = []
    logs = Path(tempfile.mkdtemp(prefix="bench-api-"))
    try:
        with servers(redis=True) as backing, fresh_database(name) as url:
            redis_url = backing.redis_url
            assert redis_url is not None
            asyncio.run(prepare_database(url, issuer.issuer, subjects))
            try:
                identity_keys = new_pair_keys("bench")
                env = {
                    "DATABASE_URL": url,
                    "REDIS_URL": redis_url,
                    "REDIS_KEY_PREFIX": f"tsp-bench:{os.getpid()}:",
                    **identity_keys,
                    "LOG_LEVEL": "WARNING",
                }
                audit = ServiceProcess("audit", env, log_dir=logs).start()
                processes.append(audit)
                timesheets_env = {**env, "AUDIT_URL": audit.url}
                timesheets = ServiceProcess("timesheets", timesheets_env, log_dir=logs).start()
                processes.append(timesheets)
                gateway = ServiceProcess(
                    "gateway",
                    {
                        **env,
                        "OIDC_ISSUER": issuer.issuer,
                        "OIDC_AUDIENCE": AUDIENCE,
                        "TIMESHEETS_URL": timesheets.url,
                        "APPROVALS_URL": "http://127.0.0.1:9",
                        "AUDIT_URL": audit.url,
                        "GATEWAY_WORKERS": "1",
                        "GATEWAY_ACCESS_LOG": "false",
                    },
                    log_dir=logs,
                ).start()
                processes.append(gateway)

                tokens = [issuer.token(subject) for subject in subjects]
                script = logs / "api.lua"
                script.write_text(LUA % {"tokens": ", ".join(f'"{t}"' for t in tokens)})
                before = asyncio.run(count_entries(url))
                run_wrk(gateway.url, script, 3)  # warm-up: JWKS fetched, pools filled, caches hot
                result = run_wrk(gateway.url, script, seconds)
                # The same mix straight to the timesheets service (what the gateway hop costs).
                direct = logs / "direct.lua"
                direct_script(direct, identity_keys, issuer.issuer, subjects)
                run_wrk(timesheets.url, direct, 3)
                direct_script(direct, identity_keys, issuer.issuer, subjects)  # fresh timestamps
                direct_result = run_wrk(timesheets.url, direct, min(seconds, 45))
                created = asyncio.run(count_entries(url)) - before
            finally:  # the services stop before their database is dropped
                for process in reversed(processes):
                    process.stop()
    finally:
        issuer.close()
        shutil.rmtree(logs, ignore_errors=True)

    raw = result.pop("raw")
    direct_raw = direct_result.pop("raw")
    report = {
        "benchmark": "api",
        "what": "through the gateway: 50% POST /api/timesheets, 50% GET /api/timesheets?limit=20",
        "clients": CLIENTS,
        "users": USERS,
        "seconds": seconds,
        "cores": os.cpu_count(),
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **result,
        "entries_created_incl_warmup": created,
        "direct_to_timesheets": direct_result,
        "gateway_rps_ratio": round(result["rps"] / direct_result["rps"], 3) if direct_result["rps"] else None,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "api.json").write_text(json.dumps(report, indent=2) + "\n")
    print(raw.strip())
    print(direct_raw.strip())
    print()
    print(f"{'case':<36} {'rps':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
    for label, case in (
        ("create+list via gateway (c=32)", result),
        ("create+list direct to timesheets", direct_result),
    ):
        print(
            f"{label:<36} {case['rps']:>8.0f} {case['p50_ms']:>8.1f} "
            f"{case['p90_ms']:>8.1f} {case['p99_ms']:>8.1f} {case['non_2xx']:>8}"
        )
    print(f"written to {RESULTS / 'api.json'}")
    ok = all(case["non_2xx"] == 0 and case["requests"] > 0 for case in (result, direct_result))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
