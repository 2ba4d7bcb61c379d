"""The gateway's upstream pools in its open-file count at start (svckit.fdlimit, the ``open_files`` hook
of ``gateway/__main__.py``), on a real ``python -m gateway`` under a low ``ulimit -n``.

Each gateway worker may open ``UPSTREAM_POOL_SIZE`` connections to each upstream service besides its
client connections: 768 descriptors with the defaults, more than the kit's own allowance. Counted
without them, a gateway would start under a limit its pools then exhaust (EMFILE at the upstream
connect, answered 502/503 to clients holding a valid token).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from collections.abc import Callable

import pytest
from gateway.settings import GatewaySettings
from svckit.fdlimit import files_besides_connections
from svckit.settings import load_settings

from testkit.fixtures import free_port

from .conftest import Echo, Provider, process_env

CAP, POOL = 100, 200


def nofile(soft: int, hard: int) -> Callable[[], None]:
    """What ``ulimit -Sn soft -Hn hard`` in the gateway's shell would do."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return limit


def test_a_hard_limit_that_holds_the_cap_but_not_the_upstream_pools_stops_the_start(
    provider: Provider, echo: Echo, identity_keys: dict[str, str], redis_prefix: str
) -> None:
    """Room for the cap and the kit's own pools, not for the upstream pools: exit 2, one line whose
    count includes ``UPSTREAM_POOL_SIZE`` times the upstream services."""
    env = process_env(
        provider,
        echo,
        identity_keys,
        redis_prefix,
        MAX_CONNECTIONS_PER_WORKER=str(CAP),
        UPSTREAM_POOL_SIZE=str(POOL),
    )
    settings = load_settings(GatewaySettings, env=env)
    kit = files_besides_connections(settings)
    pools = POOL * len(settings.upstreams)
    hard = CAP + kit + pools // 2  # the cap and the kit's count fit; the pools do not
    try:
        result = subprocess.run(
            [sys.executable, "-m", "gateway"],
            env={**os.environ, **env, "PORT": str(free_port()), "METRICS_PORT": str(free_port())},
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
            preexec_fn=nofile(hard, hard),
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the gateway started (and served) under a limit its upstream pools can exhaust")
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        f"invalid configuration: MAX_CONNECTIONS_PER_WORKER={CAP} needs {CAP + kit + pools} open files "
        f"per worker ({kit + pools} besides its connections), but the open-file limit (RLIMIT_NOFILE) "
        f"is {hard}"
    ), lines[0]
