"""JSON-lines logging with the request id on every line and secrets scrubbed.

Scrubbing happens in the formatter, after message interpolation, so a token that slips into a log
argument is still caught: bearer tokens, JWT-shaped strings and ``password=``/``secret=`` pairs are
replaced before the line leaves the process.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

from .context import request_id_var

_SCRUBBERS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 [redacted]"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), "[redacted-jwt]"),
    (
        re.compile(
            r"(?i)\b(password|passwd|secret|client_secret|token|access_token|id_token|refresh_token"
            r"|code_verifier|code|authorization|api_key|signature)(\"?\s*[=:]\s*\"?)([^\s\"&,;]+)"
        ),
        r"\1\2[redacted]",
    ),
    (
        re.compile(r"(postgres(?:ql)?|redis|rediss)://([^:/@\s]+):([^@\s]+)@"),
        r"\1://\2:[redacted]@",
    ),
)

_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
}
_DROPPED = frozenset({"color_message"})  # uvicorn duplicates the message with ANSI colours


def scrub(text: str) -> str:
    """Remove anything token- or secret-shaped from a string."""
    for pattern, replacement in _SCRUBBERS:
        text = pattern.sub(replacement, text)
    return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, service, logger, message, request_id, extras."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": scrub(record.getMessage()),
            "request_id": getattr(record, "request_id", None) or request_id_var.get(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and key not in line and key not in _DROPPED:
                line[key] = scrub(value) if isinstance(value, str) else value
        if record.exc_info:
            line["exc"] = scrub(self.formatException(record.exc_info))
        return json.dumps(line, default=str, ensure_ascii=False)


def configure_logging(service: str, level: str = "INFO") -> None:
    """Route the root logger and uvicorn's loggers through the JSON formatter on stdout."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # Access lines come from our own middleware (with route templates and request ids). Not
    # propagating matters too: uvicorn formats its access line (quoting the path) whenever the logger
    # has handlers anywhere up the tree, before the logger gets to say that it is disabled.
    access = logging.getLogger("uvicorn.access")
    access.disabled = True
    access.propagate = False
