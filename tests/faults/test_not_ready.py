"""Every service's not-ready answer: ``/readyz`` 503 is a problem document with ``Retry-After``, as
every other 503 of the platform is (docs/CONTRACTS.md, "Processes and ports"). A client or a load
balancer that reads it (not only the kubelet) is told when to look again, not polling in a tight loop.

Each service runs as ``python -m <service>`` with nothing to be ready for: its Postgres, its Redis and
its issuer are closed ports (no private server needed; the machine's shared ones are not touched)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import pytest

from testkit.fixtures import ServiceProcess, free_port, new_pair_keys

pytestmark = pytest.mark.timeout(60)

PACKAGES = ("gateway", "identity", "timesheets", "approvals", "audit")


@pytest.fixture(scope="module")
def unready(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServiceProcess]]:
    logs: Path = tmp_path_factory.mktemp("not-ready")
    nowhere = f"http://127.0.0.1:{free_port()}"
    common = {
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/postgres",
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        **new_pair_keys("not-ready"),
        "DB_CONNECT_TIMEOUT_SECONDS": "1",
        "AUDIT_URL": nowhere,
        "TIMESHEETS_URL": nowhere,
        "APPROVALS_URL": nowhere,
    }
    own = {
        "identity": {
            "IDENTITY_ISSUER": nowhere + "/",
            "IDENTITY_KEY_ENCRYPTION_KEY": secrets.token_urlsafe(32),
            "IDENTITY_SESSION_SECRET": secrets.token_urlsafe(32),
        },
        "gateway": {"OIDC_ISSUER": nowhere + "/", "GATEWAY_WORKERS": "1", "SPA_DIST_DIR": str(logs)},
    }
    services = {
        name: ServiceProcess(name, {**common, **own.get(name, {})}, log_dir=logs) for name in PACKAGES
    }
    try:
        with ThreadPoolExecutor(len(services)) as pool:
            list(pool.map(lambda service: service.start("/healthz", 30), services.values()))
        yield services
    finally:
        for service in services.values():
            service.stop(timeout=5)


@pytest.mark.parametrize("name", PACKAGES)
async def test_not_ready_is_a_503_problem_with_retry_after(
    unready: dict[str, ServiceProcess], name: str
) -> None:
    url = unready[name].url + "/readyz"
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as http, http.get(url) as response:
        body = await response.json(content_type=None)
        assert response.status == 503, body
        assert response.headers["Content-Type"].startswith("application/problem+json")
        assert body["status"] == 503, body
        assert body["failed"], body
        retry_after = response.headers.get("Retry-After")
        assert retry_after is not None, dict(response.headers)
        assert retry_after.isdigit(), retry_after
        assert 1 <= int(retry_after) <= 10
