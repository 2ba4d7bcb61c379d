"""Access lines for API requests, in the kit's JSON log shape, written in batches.

The kit's logging path (a ``LogRecord``, the scrubbing formatter over every field, one ``write`` and
``flush`` per line) costs more CPU than the rest of a cached request through the gateway (measured
with ``bench/gateway.py``), so API access lines take a shorter path: one ``json.dumps`` per request
into a buffer that is written to stdout every ``FLUSH_SECONDS`` or every ``MAX_LINES`` lines. The
line has the fields :class:`svckit.logs.JsonFormatter` writes (``ts``, ``level``, ``service``,
``logger``, ``msg``, ``request_id``) plus the request's. Nothing a client sends is logged unchecked:
the route is a template from the route table (never the raw path), the request id matched the kit's
pattern, and subject and client id come from a verified token whose values were checked for length
and control characters (:func:`gateway.tokens.identity_from`) — so the kit's scrubbing regexes, the
most expensive part of a log line, are not needed here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import time
from typing import TextIO

from svckit.tasks import PeriodicTask

FLUSH_SECONDS = 0.25
_PLAIN = re.compile(r"^[\x20-\x7e]*$")
_json = json.JSONEncoder(ensure_ascii=False).encode


def _plain(value: str) -> str:
    """JSON string literal; printable ASCII without quotes or backslashes needs no encoder."""
    if _PLAIN.match(value) and '"' not in value and "\\" not in value:
        return f'"{value}"'
    return _json(value)


MAX_LINES = 256
MAX_LITERALS = 4096


class AccessLog:
    def __init__(self, service: str, stream: TextIO | None = None) -> None:
        self.service = service
        self.stream = stream
        self.enabled = logging.getLogger("access").isEnabledFor(logging.INFO)
        self._lines: list[str] = []
        self._task = PeriodicTask("gateway-access-log", FLUSH_SECONDS, self._flush)
        self._second = -1
        self._prefix = ""
        self._service = _json(service)
        self._fixed: dict[tuple[str, str, int], tuple[str, str]] = {}
        self._who: dict[tuple[str, str], str] = {}

    def record(
        self,
        *,
        method: str,
        route: str,
        status: int,
        seconds: float,
        request_id: str,
        subject: str,
        client_id: str,
    ) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second, self._prefix = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        # the line is a template: what repeats (per method, route and status; per subject and client)
        # is encoded once, only the time, request id and duration are formatted per request
        key = (method, route, status)
        fixed = self._fixed.get(key)
        if fixed is None:
            if len(self._fixed) >= MAX_LITERALS:
                self._fixed.clear()
            route_json = _json(route)[1:-1]
            fixed = self._fixed[key] = (
                f'Z", "level": "info", "service": {self._service}, "logger": "access", '
                f'"msg": "{method} {route_json} {status}", "request_id": "',
                f'", "method": "{method}", "route": "{route_json}", "status": {status}, "duration_ms": ',
            )
        who = self._who.get((subject, client_id))
        if who is None:
            if len(self._who) >= MAX_LITERALS:
                self._who.clear()
            who = ""
            if subject:
                who += f', "subject": {_plain(subject)}'
            if client_id:
                who += f', "client_id": {_plain(client_id)}'
            who = self._who[(subject, client_id)] = who + "}"
        hundredths = round(seconds * 100_000)  # of a millisecond: integers format faster than floats
        self._lines.append(
            f'{{"ts": "{self._prefix}.{int((now - second) * 1000):03d}{fixed[0]}{request_id}{fixed[1]}'
            f"{hundredths // 100}.{hundredths % 100:02d}{who}"
        )
        if len(self._lines) >= MAX_LINES:
            self.flush()

    def flush(self) -> None:
        if not self._lines:
            return
        text = "\n".join(self._lines) + "\n"
        self._lines.clear()
        stream = self.stream or sys.stdout
        with contextlib.suppress(OSError, ValueError):
            stream.write(text)
            stream.flush()

    async def _flush(self) -> None:
        self.flush()

    def start(self) -> None:
        self._task.start()

    async def stop(self) -> None:
        await self._task.stop()
        self.flush()
