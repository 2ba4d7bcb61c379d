"""The SDK compatibility harness: Auth0's SPA SDK and oidc-client-ts, bundled for a browser.

One npm project (``services/identity/tests/sdk_compat``, installed from its lock file, bundled with
esbuild) serves two suites: the provider's (``test_identity_browser``: the SDKs sign in against the
identity service) and the platform's (``tests/browser/test_sdk_dpop``: with DPoP on, through the
gateway). Why here: test helpers shared by two packages live in testkit, not in either's tests.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest

SDK_DIR = Path(__file__).resolve().parent.parent / "services" / "identity" / "tests" / "sdk_compat"
BUNDLES = ("auth0.js", "oidc.js")


def build_bundles() -> Path:
    """``npm ci`` (only when node_modules was not installed from this very lock file), then esbuild.

    Two suites use the bundles; under ``pytest -n`` they may build at once on two workers, in one
    folder (an ``npm ci`` removing node_modules under the other's esbuild): the build holds an exclusive
    ``flock`` on the project's lock file meanwhile."""
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed")
    with open(SDK_DIR / "package-lock.json", "rb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        lock_digest = hashlib.sha256(lock.read()).hexdigest()
        marker = SDK_DIR / "node_modules" / ".installed-from-lock"
        if not marker.exists() or marker.read_text() != lock_digest:
            subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=SDK_DIR, check=True, timeout=300)
            marker.write_text(lock_digest)
        subprocess.run(["npm", "run", "--silent", "build"], cwd=SDK_DIR, check=True, timeout=120)
    return SDK_DIR / "dist"


def harness_html(bundle: str, config: dict[str, Any]) -> str:
    """The page hosting one SDK: ``window.HARNESS`` holds its configuration, then the bundle runs."""
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>harness</title></head><body>"
        f"<script>window.HARNESS = {json.dumps(config)};</script>"
        f"<script src='/dist/{bundle}.js'></script></body></html>"
    )


async def provider_allows_origin(issuer: str, origin: str) -> None:
    """Wait until the provider's token endpoint lets ``origin`` through CORS.

    The bundled provider re-reads its clients' web origins every ``CORS_ORIGINS_REFRESH_SECONDS``
    (10 s by default; ``identity.cors.ClientOrigins``):
    a client registered just now is not known yet, and an SDK's first token request from its origin
    would fail ("Failed to fetch") if sent before.
    """
    headers = {"Origin": origin, "Access-Control-Request-Method": "POST"}
    async with aiohttp.ClientSession() as http:
        for _ in range(150):
            async with http.options(f"{issuer.rstrip('/')}/oauth/token", headers=headers) as response:
                if response.headers.get("Access-Control-Allow-Origin") == origin:
                    return
            await asyncio.sleep(0.1)
    raise AssertionError(f"the provider's CORS never allowed {origin}")
