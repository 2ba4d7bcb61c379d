"""The kit's HTTP layer alone: CPU per request of serving, with nothing behind it.

Every service is served by the kit (:mod:`svckit.server`: uvicorn's httptools protocol with problem
answers, head limits, lingering close, the drain, and the kit's request cycle, :mod:`svckit.cycle`).
Its cost is part of every request and is hidden behind the database and the identity check in
``bench/api.py``'s figures, where a few µs are below that benchmark's noise. Here a raw ASGI app that
answers at once (``bench/_serving_app.py``: a list page's size of JSON with a service's headers) is
served on core 0 and loaded by ``wrk`` on core 1 with 32 connections, the identity headers a signed
request carries (their values are not checked: nothing here verifies):

* ``kit`` — served as the services are (:func:`svckit.cli.serve`'s options);
* ``uvicorn`` — the same app with uvicorn's own protocol and the same options: the peer;
* ``kit_before`` — with ``BENCH_SERVING_BASELINE`` set to a checkout (a directory holding
  ``services/kit``, e.g. ``git archive main services | tar -x -C /tmp/before``), the kit from that
  code: an A/B of a change to the serving layer in one run.

``BENCH_SERVING_ROUNDS`` (default 8) interleaved rounds of ``BENCH_SERVING_SECONDS`` (default 4),
the order reversed every other round; medians, and the median of the paired per-round ratios.
Writes ``bench/results/serving.json`` (a partial file under ``$TMPDIR`` with a baseline).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from svckit.cli import SERVING_OPTIONS

from bench.gateway import SERVER_CORE, run_wrk
from testkit.fixtures import free_port

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
#: what a signed request carries besides Host (bench/_presigned.py's shape; values are not checked)
SIGNED_HEADERS = {
    "X-Request-Id": "req-0123456789abcdef",
    "X-Identity-Version": "tsp-identity-v2",
    "X-Identity-Key": "gateway-1",
    "X-Identity-Time": "1764892800",
    "X-Identity-Kind": "user",
    "X-Identity-Issuer": "https://identity.example/",
    "X-Identity-Subject": "auth0|0123456789abcdef",
    "X-Identity-Client": "timesheets-spa",
    "X-Identity-Scopes": "create:timesheets read:timesheets",
    "X-Identity-Nonce": "Zm9vYmFyYmF6cXV4cXV1eA",
    "Content-Digest": "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:",
    "X-Identity-Signature": "c2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJl",
}


def start(layer: str, kit: Path | None, logs: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = dict(os.environ)
    if kit is not None:  # the baseline's svckit first on the path, before the installed one
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(kit), env.get("PYTHONPATH", "")]))
    options = json.dumps({**SERVING_OPTIONS, "lifespan": "off"})  # the app has nothing to start
    command = [sys.executable, "-m", "bench._serving_app", str(port), layer, options]
    if shutil.which("taskset"):
        command = ["taskset", "-c", SERVER_CORE, *command]
    log = (logs / f"serving-{layer}-{port}.log").open("wb")
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return process, f"http://127.0.0.1:{port}/timesheets?limit=20"
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"the {layer} server did not start: see {log.name}")


def main() -> int:
    seconds = float(os.environ.get("BENCH_SERVING_SECONDS", "4"))
    rounds = int(os.environ.get("BENCH_SERVING_ROUNDS", "8"))
    baseline = os.environ.get("BENCH_SERVING_BASELINE", "")
    logs = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    cases: dict[str, tuple[str, Path | None]] = {"kit": ("kit", None), "uvicorn": ("uvicorn", None)}
    if baseline:
        cases["kit_before"] = ("kit", Path(baseline).resolve() / "services" / "kit")
    lua = [f'wrk.headers["{name}"] = "{value}"' for name, value in SIGNED_HEADERS.items()]
    servers = {name: start(layer, kit, logs) for name, (layer, kit) in cases.items()}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in cases}
    try:
        for _, url in servers.values():  # warm-up
            run_wrk(url, None, 1, lua=lua)
        for number in range(rounds):
            order = list(cases) if number % 2 == 0 else list(reversed(cases))
            for name in order:
                process, url = servers[name]
                run = run_wrk(url, None, seconds, server=psutil.Process(process.pid), lua=lua)
                runs[name].append(run)
            print(
                f"  round {number + 1}: "
                + ", ".join(f"{name} {runs[name][-1]['cpu_us_per_request']:.1f} µs" for name in cases),
                flush=True,
            )
    finally:
        for process, _ in servers.values():
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)

    def median(name: str, key: str) -> float:
        return round(float(statistics.median(run[key] for run in runs[name])), 2)

    def paired(name: str, other: str) -> float:
        ratios = [
            a["cpu_us_per_request"] / b["cpu_us_per_request"]
            for a, b in zip(runs[name], runs[other], strict=True)
        ]
        return round(float(statistics.median(ratios)), 3)

    report: dict[str, Any] = {
        "benchmark": "serving",
        "what": "a raw ASGI app answering at once, served by the kit's HTTP layer and by uvicorn's",
        "connections": 32,
        "seconds": seconds,
        "rounds": rounds,
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cases": {
            name: {
                "rps": median(name, "rps"),
                "p50_ms": median(name, "p50_ms"),
                "p99_ms": median(name, "p99_ms"),
                "cpu_us_per_request": median(name, "cpu_us_per_request"),
                "cpu_us_per_request_rounds": [round(run["cpu_us_per_request"], 1) for run in runs[name]],
                "non_2xx": sum(run["non_2xx"] for run in runs[name]),
            }
            for name in cases
        },
        "ratios": {"kit_vs_uvicorn_cpu_per_request": paired("kit", "uvicorn")},
    }
    if baseline:
        report["ratios"]["kit_vs_before_cpu_per_request"] = paired("kit", "kit_before")
    print(f"{'case':<12}{'rps':>9}{'p50 ms':>9}{'p99 ms':>9}{'cpu us/request':>16}")
    for name, case in report["cases"].items():
        print(
            f"{name:<12}{case['rps']:>9.0f}{case['p50_ms']:>9.2f}{case['p99_ms']:>9.2f}"
            f"{case['cpu_us_per_request']:>16.1f}"
        )
    for key, value in report["ratios"].items():
        print(f"{key}: {value} (median of the paired rounds)")
    written = (
        RESULTS / "serving.json" if not baseline else Path(tempfile.gettempdir()) / "bench-serving-ab.json"
    )
    written.parent.mkdir(parents=True, exist_ok=True)
    written.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {written}")
    return 0 if all(case["non_2xx"] == 0 for case in report["cases"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
