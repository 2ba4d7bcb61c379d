"""A signed HTTP client for tests that call a service directly, as the gateway would.

``await api.call("POST", "/timesheets", alice, json={...})`` signs the request for ``alice`` (method,
raw path and query, exactly what the service verifies), sends it over real HTTP and returns the
status, headers and decoded body in one :class:`Reply`.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from multidict import CIMultiDict
from pydantic import ValidationError
from svckit.contracts.problem import Problem
from svckit.identity import Identity
from svckit.server import PEER_IDLE_SECONDS
from yarl import URL

from testkit.fixtures import Caller


@dataclass(frozen=True)
class Reply:
    status: int
    headers: CIMultiDict[str]
    body: Any
    text: str

    @property
    def problem(self) -> bool:
        """An RFC 9457 problem as the contract (``svckit.contracts.Problem``) describes it, whose
        ``status`` repeats the answer's: every test that expects a problem checks the model too."""
        if not self.headers.get("content-type", "").startswith("application/problem+json"):
            return False
        try:
            document = Problem.model_validate(self.body)
        except ValidationError:
            return False
        return document.status == self.status

    def fields(self) -> set[str]:
        """The fields named by a validation problem's ``errors``."""
        return {error["field"] for error in (self.body or {}).get("errors", [])}


class SignedApi:
    """Calls one service's base URL with gateway-style signed identities over one pooled session."""

    def __init__(self, base_url: str, caller: Caller, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.caller = caller
        # idle connections go before the server's keep-alive closes them, as in every client of ours
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout),
            connector=aiohttp.TCPConnector(keepalive_timeout=PEER_IDLE_SECONDS),
        )

    async def call(
        self,
        method: str,
        path: str,
        identity: Identity | None,
        *,
        json: Any = None,
        data: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Reply:
        url = URL(self.base_url + path, encoded="%" in path)
        if params:
            url = url.update_query(params)
        all_headers = dict(headers or {})
        if json is not None:
            data = jsonlib.dumps(json)
            all_headers.setdefault("content-type", "application/json")
        sent = data.encode() if isinstance(data, str) else (data or b"")
        if identity is not None:  # signed over the very bytes sent (Content-Digest)
            all_headers.update(self.caller.headers(identity, method, str(url), body=sent))
        async with self._session.request(method, url, data=data, headers=all_headers) as response:
            text = await response.text()
            try:
                body = jsonlib.loads(text) if text else None
            except ValueError:
                body = None
            return Reply(response.status, response.headers.copy(), body, text)

    async def close(self) -> None:
        await self._session.close()


async def wait_ready(base_url: str, timeout: float = 30.0) -> None:
    """Wait until a service's ``/readyz`` answers 200 (its database pool and peers are up).

    ``serve_app`` returns once the socket listens; the pool connects in the background, and a request
    that needs it before then is answered 503 by design. Tests that use the database wait here first.
    """
    deadline = asyncio.get_running_loop().time() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while True:
            try:
                async with session.get(f"{base_url.rstrip('/')}/readyz") as response:
                    if response.status == 200:
                        return
                    detail = await response.text()
            except (aiohttp.ClientError, TimeoutError) as exc:
                detail = type(exc).__name__
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{base_url} not ready after {timeout}s: {detail[:300]}")
            await asyncio.sleep(0.05)


__all__ = ["Reply", "SignedApi", "wait_ready"]


def ingest_counts(body: Any) -> dict[str, Any]:
    """What ``POST /internal/events`` answered without its ``receipt`` (whose seq and hash depend on the
    trail): ``{"accepted": …, "duplicates": …}``."""
    assert isinstance(body, dict), body
    return {key: value for key, value in body.items() if key != "receipt"}
