"""Outbound HTTP between services: one pooled aiohttp session per process, signed identities.

A call made on behalf of a user carries that user's identity; a call made by a service for itself
(the outbox relay, say) carries the service principal. Either way the receiver verifies it exactly
as it verifies the gateway's.
"""

from __future__ import annotations

import json as jsonlib
from collections.abc import Mapping
from typing import Any

import aiohttp
from yarl import URL

from .context import current_request_id
from .identity import Identity, IdentitySigner, request_target
from .server import PEER_IDLE_SECONDS

#: connections one process's session opens at most, to all peers together (svckit.fdlimit counts them)
CONNECTIONS_PER_SESSION = 100


class HttpClient:
    def __init__(self, *, total_timeout: float = 10.0, connect_timeout: float = 2.0) -> None:
        self._timeout = aiohttp.ClientTimeout(total=total_timeout, connect=connect_timeout)
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(
                    limit=CONNECTIONS_PER_SESSION, keepalive_timeout=PEER_IDLE_SECONDS
                ),
                raise_for_status=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()


class SignedClient:
    """Requests to one peer service, each signed for the identity it is made for."""

    def __init__(self, http: HttpClient, base_url: str, signer: IdentitySigner) -> None:
        self.http = http
        self.base_url = URL(base_url.rstrip("/"))
        self.signer = signer

    def request(
        self,
        method: str,
        path: str,
        identity: Identity,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """``json``: a document, serialised here; ``content``: a JSON document already serialised
        (sent as these very bytes, ``Content-Type: application/json``). Not both."""
        url = self.base_url.with_path(self.base_url.path.rstrip("/") + path)
        if params:
            url = url.with_query(params)
        # serialised here, not by aiohttp: the signature binds these very bytes (Content-Digest)
        if content is not None:
            if json is not None:
                raise TypeError("json and content are exclusive")
            body = content
        else:
            body = b"" if json is None else jsonlib.dumps(json, separators=(",", ":")).encode()
        signed = self.signer.headers(
            identity,
            method=method,
            target=request_target(url.raw_path, url.raw_query_string),
            request_id=current_request_id(),
            body=body,
        )
        kwargs: dict[str, Any] = {"headers": {**(headers or {}), **signed}}
        if json is not None or content is not None:
            kwargs["data"] = body
            kwargs["headers"].setdefault("Content-Type", "application/json")
        if timeout is not None:
            kwargs["timeout"] = aiohttp.ClientTimeout(total=timeout)
        return self.http.session().request(method, url, **kwargs)
