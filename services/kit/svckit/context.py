"""Per-request context that log lines and outbound calls pick up without threading it through calls."""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")


def is_valid_request_id(value: str | None) -> bool:
    """Well-formed inbound ids are kept so a trace can be followed across hops; others are replaced."""
    return bool(value) and _REQUEST_ID.fullmatch(value or "") is not None


def new_request_id() -> str:
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    return request_id_var.get()
