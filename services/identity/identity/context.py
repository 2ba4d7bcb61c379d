"""Everything a request handler needs, built once per process and kept on ``app.state.ctx``."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio.to_thread
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse
from svckit.db import Database

from . import store
from .browser import CsrfSigner, page_headers
from .keystore import KeyStore
from .models import SignedInUser
from .oauth import IdentityServer
from .settings import IdentitySettings
from .throttle import FailureThrottle, LoginThrottle

TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
    enable_async=False,
)


@dataclass
class Context:
    settings: IdentitySettings
    database: Database
    keys: KeyStore
    server: IdentityServer
    throttle: LoginThrottle
    client_auth_throttle: FailureThrottle
    csrf: CsrfSigner
    _origins: frozenset[str] = field(default=frozenset())
    _origins_at: float = 0.0

    @property
    def pool(self) -> Any:
        return self.database.pool

    async def allowed_origins(self) -> frozenset[str]:
        """Union of every client's web origins (for CORS), cached for a few seconds."""
        if time.monotonic() - self._origins_at > 10:
            clients = await store.all_clients(self.pool)
            origins: set[str] = set()
            for client in clients:
                origins |= client.allowed_origins
            self._origins = frozenset(origins)
            self._origins_at = time.monotonic()
        return self._origins

    def render(
        self,
        template: str,
        status: int = 200,
        *,
        frame_ancestors: frozenset[str] | None = None,
        script: bool = False,
        **values: Any,
    ) -> HTMLResponse:
        nonce = secrets.token_urlsafe(16)
        html = TEMPLATES.get_template(template).render(nonce=nonce, **values)
        headers = page_headers(nonce, frame_ancestors or (), script=script)
        return HTMLResponse(html, status_code=status, headers=headers)

    async def in_thread(self, func: Any, *args: Any) -> Any:
        """Run Authlib (synchronous, calls back into the loop for queries) in a worker thread."""
        return await anyio.to_thread.run_sync(func, *args)


def ctx_of(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


async def signed_in_user(request: Request) -> SignedInUser | None:
    from .browser import SESSION_COOKIE

    session_id = request.cookies.get(SESSION_COOKIE)
    if not session_id or len(session_id) > 100:
        return None
    ctx = ctx_of(request)
    found = await store.get_session(ctx.pool, session_id)
    if found is None:
        return None
    user, auth_time = found
    return SignedInUser(
        user=user, auth_time=int(auth_time.timestamp()), session_hash=store.digest(session_id)
    )
