"""JSON-lines logging with the request id on every line and secrets scrubbed.

Scrubbing happens in the formatter, after message interpolation, so a token that slips into a log
argument is still caught: bearer tokens, JWT-shaped strings, the password of any URL
(``redis://:password@host`` too) and every field named like a secret (``password=x``,
``DB_RUNTIME_PASSWORD=x``, ``{'password': 'x'}`` as Python prints a dict, ``"client_secret": "x"`` as
JSON does, quoted values with spaces or escaped quotes whole) are replaced before the line leaves the
process — in the message, in every extra field (inside dicts and lists, and in what JSON writes as
``str()``) and in the traceback. A secret's name alone is kept: "the password was rejected" reads as
written; only a name followed by ``=`` or ``:`` and a value loses the value.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

from .context import request_id_var

# A field whose value is a secret: any name ending in one of these (password, DB_RUNTIME_PASSWORD,
# clientSecret, x-api-key, set-cookie, refresh_token), or exactly one of the others (code, but not
# status_code or error_code). A name alone is no secret: only one followed by '=' or ':' and a value.
# The name is read whole (possessively, from where a name starts) and its ending checked after: one
# try per name, so a line costs about what it did with a fixed list of names.
_SUFFIXES = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "apikey",
    "api_key",
    "api-key",
    "privatekey",
    "private_key",
    "private-key",
    "cookie",
    # the key rings' own names (svckit.keyring; IDENTITY_KEY_ENCRYPTION_KEY, AUDIT_CHECKPOINT_KEYS)
    "encryption_key",
    "encryption-key",
    "encryptionkey",
    "checkpoint_keys",
    "checkpoint-keys",
)
_ENDS_IN_SECRET = "|".join(f"(?<={suffix})" for suffix in _SUFFIXES)
# a pair's keys, IDENTITY_KEYS_<SENDER>_TO_<RECEIVER>: named by their start
_PAIR_KEYS = r"identity_keys_[\w-]{1,64}+"
_SENSITIVE_NAME = (
    r"(?:(?:code|code_verifier|authorization)(?![\w-])|"
    + _PAIR_KEYS
    + r"|[\w-]{1,64}+(?:"
    + _ENDS_IN_SECRET
    + r"|(?<=signature)))"
)
_SECRET_FIELD = re.compile(
    r"(?i)(?<![\w-])(" + _SENSITIVE_NAME + r")"
    # the name's closing quote, if quoted ('password': in a dict's repr, \"password\": in JSON in JSON)
    r"(\\*[\"']?\s*[=:]\s*)"
    r"(?:"
    r"(b?'(?:[^'\\\n]|\\.)*'|b?\"(?:[^\"\\\n]|\\.)*\")"  # a quoted value: Python's repr, JSON
    r"|(\\+)([\"'])(?:(?!\4\5).)*\4\5"  # quoted with escaped quotes: JSON inside a string
    r"|b?[\"']?[^\s\"'&,;)\]}]+"  # unquoted (key=value, a header, a variable, a query) or unclosed,
    # and a key ring's further entries (kid:secret,kid:secret: svckit.keyring), each tried once
    r"(?:,[\w.-]{1,64}+:[^\s\"'&,;)\]}]+)*+"
    r")"
)
# user:password@ in any URL, the user name possibly empty (redis://:password@host), the password up to
# the last '@' before a space (an unencoded '@' in it still hides all of it: _redact_url). The match
# runs to the end of the space-free run, so no later start inside it is tried; names and schemes are
# bounded and must start where no such character precedes: each regex tries a start a few times, not
# once per character of a long run (a base64 blob, "a-a-a-…"), which would cost quadratic time.
_URL_USERINFO = re.compile(r"(?i)(?<![a-z0-9+.-])([a-z][a-z0-9+.-]{0,31}://[^:/@\s]*):(\S*)")
# A structured field (an extra, a key in a dict) whose value is redacted whole, whatever it is: the
# names above but for "code" (an error's, a status's) and "signature" (a checkpoint's JWS is public).
_SECRET_KEY = re.compile(
    r"(?i)(?:code_verifier|authorization|" + _PAIR_KEYS + r"|[\w-]{1,64}+(?:" + _ENDS_IN_SECRET + r"))"
)

_SCRUBBERS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 [redacted]"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), "[redacted-jwt]"),
)


def _redact_url(match: re.Match[str]) -> str:
    """``scheme://user:[redacted]@`` and what follows the last '@'; the run as it was without one."""
    head, rest = match.group(1, 2)
    at = rest.rfind("@")
    return match.group(0) if at < 0 else f"{head}:[redacted]{rest[at:]}"


def _redact_field(match: re.Match[str]) -> str:
    """``name<sep>[redacted]``, the value's quotes (if any) kept so that the line still reads."""
    name, sep, quoted, backslashes, quote = match.group(1, 2, 3, 4, 5)
    if quoted:
        opening = quoted[: quoted.index(quoted[-1]) + 1]  # b' or ' or "
        return f"{name}{sep}{opening}[redacted]{quoted[-1]}"
    if backslashes:
        return f"{name}{sep}{backslashes}{quote}[redacted]{backslashes}{quote}"
    return f"{name}{sep}[redacted]"


_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
}
_DROPPED = frozenset({"color_message"})  # uvicorn duplicates the message with ANSI colours


def scrub(text: str) -> str:
    """Remove anything token- or secret-shaped from a string."""
    for pattern, replacement in _SCRUBBERS:
        text = pattern.sub(replacement, text)
    text = _URL_USERINFO.sub(_redact_url, text)
    return _SECRET_FIELD.sub(_redact_field, text)


def scrub_value(value: Any) -> Any:
    """An extra field's value with its secrets removed: strings scrubbed, and inside dicts, lists and
    tuples every string scrubbed and the value of every key named like a secret redacted whole
    (``{"redis_password": 1234}``); anything else as it is (JSON writes it, or :func:`_shown`)."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {
            k: "[redacted]" if isinstance(k, str) and _SECRET_KEY.fullmatch(k) else scrub_value(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [scrub_value(v) for v in value]
    return value


def _shown(value: object) -> str:
    """What JSON cannot encode is written as its ``str()``, scrubbed like any other text."""
    return scrub(str(value))


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
                line[key] = "[redacted]" if _SECRET_KEY.fullmatch(key) else scrub_value(value)
        if record.exc_info:
            line["exc"] = scrub(self.formatException(record.exc_info))
        return json.dumps(line, default=_shown, ensure_ascii=False)


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
