"""Gateway overhead: the same trivial upstream behind four fronts, one load generator, one run.

Cases (each front and the upstream pinned to core 0 with ``taskset``, ``wrk -t1 -c32 --latency``
pinned to the last core):

* ``direct`` — the trivial upstream itself;
* ``passthrough`` — a minimal raw-ASGI proxy on the same stack (uvicorn + one aiohttp session), no auth;
* ``gateway`` — ``python -m gateway`` as it ships (one worker; verification with warm caches, rate
  limiting, audit of denials, metrics and access log all on), a valid RS256 token;
* ``naive`` — Starlette + a new PyJWKClient (JWKS fetch) + a new HTTP client per request.

Besides the four cases the issue names, ``pooled`` (the passthrough over the gateway's own forwarding
pool, :mod:`gateway.upstream`) is measured as a reference: ``gateway`` against ``pooled`` is what
verification, policy and observability cost on top of the gateway's hop, and ``passthrough`` against
``pooled`` is what the purpose-built hop saves over aiohttp's client. Each round also records the
server's CPU time per request (process and children, from ``psutil``), which the hypervisor's noise
disturbs less than requests per second.

Rounds of direct, passthrough, pooled and gateway are interleaved (``BENCH_GATEWAY_ROUNDS``, default 5, of
``BENCH_GATEWAY_SECONDS``, default 5, each) and the medians reported; naive runs once, last (it falls
so far behind that its backlog would disturb the next case). Server output goes to
``$TMPDIR/bench-gateway-servers.log``. Then ``direct``, ``passthrough`` and ``gateway`` run once more
at half the gateway's measured maximum (``BENCH_GATEWAY_HALF_ROUNDS``, default 5, interleaved rounds;
the added p99 is the median of the per-round differences) to measure the latency the gateway adds.
wrk is closed-loop, so the pacing is a Lua ``delay()`` drawn from an exponential distribution: a
fixed delay would keep the 32 connections in lock-step, and every request would queue behind the
other 31 of its burst — a p99 of the load generator's making, not of the server's.
Writes ``bench/results/gateway.json``::

    {"cases": {"direct": {"rps", "p50_ms", "p99_ms"}, ...}, "half_load": {...}, "ratios": {...},
     "machine": "..."}
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

from bench.api import AUDIENCE, Issuer
from testkit.fixtures import ServiceProcess, free_port, new_pair_keys

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CONNECTIONS = 32
SERVER_CORE = "0"


def wrk_core() -> str:
    return str(max(0, (os.cpu_count() or 1) - 1))


def uvicorn_process(app: str, port: int, env: dict[str, str], log: Any) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        "--log-level",
        "warning",
        "--lifespan",
        "auto",
    ]
    if shutil.which("taskset"):
        command = ["taskset", "-c", SERVER_CORE, *command]
    return subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=log)


def wait_ready(url: str, headers: dict[str, str] | None = None, timeout: float = 20.0) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            request = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not become ready")


def to_ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def run_wrk(
    url: str,
    token: str | None,
    seconds: float,
    delay_ms: float | None = None,
    server: psutil.Process | None = None,
) -> dict[str, Any]:
    lines = []
    if token:
        lines.append(f'wrk.headers["Authorization"] = "Bearer {token}"')
    if delay_ms is not None:
        lines.append("math.randomseed(os.time())")
        lines.append(f"function delay() return -{delay_ms:.3f} * math.log(1 - math.random()) end")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write("\n".join(lines) + "\n")
    # a 10 s timeout: wrk's default (2 s) would drop the naive case's slow answers from its latencies
    command = [
        "wrk",
        "-t1",
        f"-c{CONNECTIONS}",
        f"-d{int(seconds)}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        script.name,
        url,
    ]
    if shutil.which("taskset"):
        command = ["taskset", "-c", wrk_core(), *command]
    cpu_before = server_cpu_seconds(server)
    output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=seconds + 30).stdout
    cpu_after = server_cpu_seconds(server)
    Path(script.name).unlink()

    def latency(label: str) -> float:
        match = re.search(rf"^\s+{label}%\s+(\S+)", output, re.MULTILINE)
        return to_ms(match.group(1)) if match else float("nan")

    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket_errors = re.search(r"Socket errors: (.*)", output)
    total = re.search(r"(\d+) requests in", output)
    requests = int(total.group(1)) if total else 0
    result = {
        "rps": float(rps.group(1)) if rps else 0.0,
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "non_2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1).strip() if socket_errors else "",
    }
    if server is not None and requests:
        result["cpu_us_per_request"] = round((cpu_after - cpu_before) * 1e6 / requests, 1)
    return result


def server_cpu_seconds(server: psutil.Process | None) -> float:
    """User + system CPU of a server process and its children (the gateway may fork workers)."""
    if server is None:
        return 0.0
    total = 0.0
    for process in (server, *server.children(recursive=True)):
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    system = f"{platform.system()} {platform.release()}"
    return f"{system}, {os.cpu_count()} cores ({model}), Python {platform.python_version()}"


def median_case(runs: list[dict[str, Any]]) -> dict[str, Any]:
    case = {
        "rps": round(statistics.median(r["rps"] for r in runs), 1),
        "p50_ms": round(statistics.median(r["p50_ms"] for r in runs), 2),
        "p99_ms": round(statistics.median(r["p99_ms"] for r in runs), 2),
        "non_2xx": sum(r["non_2xx"] for r in runs),
        "rounds": len(runs),
    }
    cpu = [r["cpu_us_per_request"] for r in runs if "cpu_us_per_request" in r]
    if cpu:
        case["cpu_us_per_request"] = round(statistics.median(cpu), 1)
    return case


def main() -> int:
    if not shutil.which("wrk"):
        print("wrk is not installed (make system-deps); skipping the gateway benchmark")
        return 0
    seconds = float(os.environ.get("BENCH_GATEWAY_SECONDS", "5"))
    rounds = int(os.environ.get("BENCH_GATEWAY_ROUNDS", "5"))
    half_rounds = int(os.environ.get("BENCH_GATEWAY_HALF_ROUNDS", "5"))
    issuer = Issuer()
    token = issuer.token("bench-user")
    keys = new_pair_keys("bench")
    upstream_port, passthrough_port, pooled_port, naive_port = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    )
    upstream_url = f"http://127.0.0.1:{upstream_port}"
    app_env = {
        "BENCH_UPSTREAM_URL": upstream_url,
        "BENCH_JWKS_URL": issuer.issuer + "jwks",
        "BENCH_ISSUER": issuer.issuer,
        "BENCH_AUDIENCE": AUDIENCE,
    }
    server_log = (Path(tempfile.gettempdir()) / "bench-gateway-servers.log").open("wb")
    processes = [
        uvicorn_process("bench._gateway_apps:upstream", upstream_port, app_env, server_log),
        uvicorn_process("bench._gateway_apps:passthrough", passthrough_port, app_env, server_log),
        uvicorn_process("bench._gateway_apps:pooled", pooled_port, app_env, server_log),
    ]
    naive_process = uvicorn_process("bench._gateway_apps:naive", naive_port, app_env, server_log)
    processes.append(naive_process)
    gateway = ServiceProcess(
        "gateway",
        {
            **keys,
            "OIDC_ISSUER": issuer.issuer,
            "OIDC_AUDIENCE": AUDIENCE,
            "REDIS_KEY_PREFIX": f"bench-gw-{uuid.uuid4().hex[:8]}:",
            "TIMESHEETS_URL": upstream_url,
            "APPROVALS_URL": upstream_url,
            "AUDIT_URL": upstream_url,
            "GATEWAY_WORKERS": "1",
            # rate limiting stays on, with limits a single benchmark user cannot reach
            "RATE_LIMIT_PER_SUBJECT": "100000000",
            "RATE_LIMIT_PER_CLIENT": "100000000",
            "LOG_LEVEL": "INFO",
        },
    )
    try:
        # `python -m gateway` inherits this process's CPU affinity: pin it to the server core
        all_cores = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {int(SERVER_CORE)})
        try:
            gateway.start()
        finally:
            os.sched_setaffinity(0, all_cores)
        auth = {"Authorization": f"Bearer {token}"}
        urls = {
            "direct": (f"{upstream_url}/timesheets", None),
            "passthrough": (f"http://127.0.0.1:{passthrough_port}/api/timesheets", None),
            "pooled": (f"http://127.0.0.1:{pooled_port}/api/timesheets", None),
            "gateway": (f"{gateway.url}/api/timesheets", token),
            "naive": (f"http://127.0.0.1:{naive_port}/api/timesheets", token),
        }
        wait_ready(urls["direct"][0])
        wait_ready(urls["passthrough"][0])
        wait_ready(urls["pooled"][0])
        wait_ready(urls["naive"][0], auth)
        wait_ready(urls["gateway"][0], auth)
        assert gateway.process is not None
        servers = {
            "direct": psutil.Process(processes[0].pid),
            "passthrough": psutil.Process(processes[1].pid),
            "pooled": psutil.Process(processes[2].pid),
            "gateway": psutil.Process(gateway.process.pid),
        }
        measured = ("direct", "passthrough", "pooled", "gateway")
        for name in measured:  # warm-up: pools filled, JWKS cached
            run_wrk(*urls[name], 2)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in urls}

        def measure(round_number: int, name: str) -> None:
            url, tok = urls[name]
            result = run_wrk(url, tok, seconds, server=servers.get(name))
            runs[name].append(result)
            print(
                f"  round {round_number} {name:<12} {result['rps']:>9.0f} rps  "
                f"p50 {result['p50_ms']:>8.2f} ms  p99 {result['p99_ms']:>8.2f} ms  "
                f"cpu/req {result.get('cpu_us_per_request', float('nan')):>6.1f} us  "
                f"non-2xx {result['non_2xx']}",
                flush=True,
            )

        for round_number in range(1, rounds + 1):
            for name in measured:
                measure(round_number, name)
        # the naive server falls so far behind that it keeps working off its backlog after wrk stops:
        # measured once, last, and stopped before anything else runs
        measure(1, "naive")
        naive_process.kill()
        cases = {name: median_case(results) for name, results in runs.items() if name != "pooled"}
        reference = {"pooled": median_case(runs["pooled"])}

        half_rps = cases["gateway"]["rps"] / 2
        delay_ms = max(0.0, CONNECTIONS * 1000.0 / half_rps - 1.0)
        half: dict[str, Any] = {"target_rps": round(half_rps, 1)}
        paced: dict[str, list[dict[str, Any]]] = {"direct": [], "passthrough": [], "gateway": []}
        for round_number in range(1, half_rounds + 1):  # interleaved too: one noisy second is not a p99
            for name, results in paced.items():
                url, tok = urls[name]
                results.append(run_wrk(url, tok, seconds, delay_ms=delay_ms, server=servers[name]))
                print(
                    f"  half load round {round_number} {name:<12} {results[-1]['rps']:>7.0f} rps  "
                    f"p50 {results[-1]['p50_ms']:>6.2f} ms  p99 {results[-1]['p99_ms']:>6.2f} ms",
                    flush=True,
                )
        for name, results in paced.items():
            half[name] = median_case(results)
            half[name]["p99_ms_rounds"] = [round(r["p99_ms"], 2) for r in results]
        # paired: each round's gateway against the direct / passthrough run right before it, so a
        # noisy stretch of the machine lands on both sides of a difference, then the median
        for other in ("direct", "passthrough"):
            added = [g["p99_ms"] - o["p99_ms"] for g, o in zip(paced["gateway"], paced[other], strict=True)]
            half[f"gateway_added_p99_ms_vs_{other}_rounds"] = [round(a, 2) for a in added]
            half[f"gateway_added_p99_ms_vs_{other}"] = round(statistics.median(added), 2)
    finally:
        gateway.stop()
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        issuer.close()
        server_log.close()

    ratios = {
        "gateway_vs_passthrough_rps": round(cases["gateway"]["rps"] / cases["passthrough"]["rps"], 3),
        "gateway_vs_naive_rps": round(cases["gateway"]["rps"] / max(cases["naive"]["rps"], 0.001), 1),
        "gateway_vs_pooled_rps": round(cases["gateway"]["rps"] / reference["pooled"]["rps"], 3),
        "passthrough_vs_pooled_rps": round(cases["passthrough"]["rps"] / reference["pooled"]["rps"], 3),
    }
    document = {
        "cases": cases,
        "reference": reference,
        "half_load": half,
        "ratios": ratios,
        "targets": {
            "gateway_vs_passthrough_rps": ">= 0.90",
            "gateway_vs_naive_rps": ">= 3",
            "gateway_added_p99_ms_at_half_load": "<= 5",
        },
        "load": f"wrk -t1 -c{CONNECTIONS} -d{int(seconds)}s --latency on core {wrk_core()}; "
        f"servers on core {SERVER_CORE}",
        "machine": machine(),
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gateway.json").write_text(json.dumps(document, indent=2) + "\n")

    print(f"\n{'case':<12} {'rps':>9} {'p50 ms':>8} {'p99 ms':>8} {'cpu/req us':>11}")
    for name, case in {**cases, **reference}.items():
        cpu = case.get("cpu_us_per_request", float("nan"))
        print(f"{name:<12} {case['rps']:>9.0f} {case['p50_ms']:>8.2f} {case['p99_ms']:>8.2f} {cpu:>11.1f}")
    print(
        f"\ngateway / passthrough throughput: {ratios['gateway_vs_passthrough_rps']:.2f} (target >= 0.90)"
        f"\ngateway / naive throughput:       {ratios['gateway_vs_naive_rps']:.1f}x (target >= 3)"
        f"\ngateway / pooled throughput:      {ratios['gateway_vs_pooled_rps']:.2f} (same hop, no auth)"
        f"\nat half load ({half['target_rps']:.0f} rps offered): "
        f"median p99 direct {half['direct']['p99_ms']:.2f} ms, "
        f"passthrough {half['passthrough']['p99_ms']:.2f} ms, gateway {half['gateway']['p99_ms']:.2f} ms; "
        f"added p99 (median of paired rounds) vs direct {half['gateway_added_p99_ms_vs_direct']:.2f} ms, "
        f"vs passthrough {half['gateway_added_p99_ms_vs_passthrough']:.2f} ms (target <= 5)"
        f"\nwritten to {RESULTS / 'gateway.json'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
