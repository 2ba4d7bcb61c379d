"""The runbook's copy-paste commands do what the runbook says they do.

docs/runbook.md is read by an on-call engineer under pressure: a command that silently matches
nothing, or that crashes exactly in the situation it is written for, costs the incident time.
These tests take the commands out of the runbook as written and run them against the real thing.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from testkit.fixtures import ServiceRedis

RUNBOOK = Path(__file__).resolve().parents[2] / "docs" / "runbook.md"


def runbook() -> str:
    return RUNBOOK.read_text()


@pytest.mark.unit
def test_the_error_log_grep_matches_an_error_line_of_the_services() -> None:
    """The runbook's "useful everywhere" `kubectl logs … | grep '"level":"ERROR"'`. The services' JSON lines
    (svckit.logs.JsonFormatter) must contain that literal, or the grep finds nothing, ever."""
    from svckit.logs import JsonFormatter

    (pattern,) = re.findall(r"""grep '("level"[^']*)'""", runbook())
    record = logging.LogRecord("timesheets.x", logging.ERROR, __file__, 1, "boom", (), None)
    line = JsonFormatter("timesheets").format(record)
    assert pattern in line, f"the runbook greps for {pattern!r}; an ERROR line is {line}"


@pytest.mark.unit
def test_the_outbox_section_does_not_tell_operators_to_share_one_signing_key() -> None:
    """Every sender → receiver pair has its own key (docs/ARCHITECTURE.md, the chart's
    identity-keys-<sender>-to-<receiver>); there is no key that "all services share", and making one
    would break the contract (a service could assert another). The fix for a 401 from the audit
    service is the pair's two ends holding the same key."""
    section = runbook().split("## TimesheetsOutboxBacklogTooOld", 1)[1].split("\n## ", 1)[0]
    assert "all services share" not in section, section


def test_the_readyz_exec_command_shows_why_a_pod_is_not_ready(
    service_env: dict[str, str], service_redis: ServiceRedis, tmp_path: Path
) -> None:
    """Database TLS: "pods stay unready with the same reason in /readyz (checks.postgres):
    kubectl exec deploy/timesheets-timesheets -- python -c "…urlopen('http://127.0.0.1:8101/readyz')…"".
    Run that python one-liner against a timesheets process whose database is unreachable (so /readyz
    is 503, the situation the command is written for): it must print the checks, not die."""
    from testkit.fixtures import ServiceProcess, free_port

    (command,) = [c for c in re.findall(r'python -c "([^"]*)"', runbook()) if "readyz" in c]
    assert "8101" in command
    dead = free_port()  # nothing listens here
    env = {
        **service_env,
        "DATABASE_URL": f"postgresql://nobody@127.0.0.1:{dead}/none",
        "REDIS_URL": service_redis.url("timesheets"),
    }
    service = ServiceProcess("timesheets", env, log_dir=tmp_path).start("/healthz")
    try:
        one_liner = command.replace("8101", str(service.port))
        result = subprocess.run(
            [sys.executable, "-c", one_liner], capture_output=True, text=True, timeout=30, check=False
        )
    finally:
        service.stop()
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"the runbook's command, exit {result.returncode}:\n{output[-1500:]}"
    assert "postgres" in result.stdout, output


def test_the_metrics_directory_command_lists_the_files_and_the_memory_they_hold(tmp_path: Path) -> None:
    """ "The gateway's metrics directory": the exec one-liner that shows what is in
    /tmp/gateway-metrics. Run against a directory a process wrote through prometheus_client's
    multiprocess mode, as the gateway's workers do: it names the file and counts its memory (the
    blocks a sparse 64 KiB file really holds, what the emptyDir's limit counts)."""
    import os

    (command,) = [c for c in re.findall(r'python -c "([^"]*)"', runbook()) if "gateway-metrics" in c]
    writer = "from prometheus_client import Counter; Counter('probe_total', 'Probe.').inc()"
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", writer], env=env, check=True, timeout=30)
    result = subprocess.run(
        [sys.executable, "-c", command.replace("/tmp/gateway-metrics", str(tmp_path))],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    names, held, unit = result.stdout.strip().rsplit(" ", 2)
    assert re.fullmatch(r"\['counter_\d+\.db'\]", names), result.stdout
    assert 0 < int(held) < 65536, result.stdout  # sparse: less than the file's length
    assert unit == "bytes"
