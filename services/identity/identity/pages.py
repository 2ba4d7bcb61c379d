"""The provider's HTML pages: Jinja2 templates rendered with the strict headers of every page."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.responses import HTMLResponse, Response

from .browser import page_headers

TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
    enable_async=False,
)


def render(
    template: str,
    status: int = 200,
    *,
    frame_ancestors: frozenset[str] | None = None,
    script: bool = False,
    **values: Any,
) -> HTMLResponse:
    """A page with a fresh CSP nonce; framable only by ``frame_ancestors`` (nobody by default)."""
    nonce = secrets.token_urlsafe(16)
    html = TEMPLATES.get_template(template).render(nonce=nonce, **values)
    headers = page_headers(nonce, frame_ancestors or (), script=script)
    return HTMLResponse(html, status_code=status, headers=headers)


def error_page(error: str, description: str, status: int = 400) -> Response:
    """An error shown here, never redirected (for requests that cannot be tied to a client)."""
    return render(
        "error.html",
        status,
        title="This sign-in link cannot be used",
        error=error,
        description=description,
    )
