"""The serving benchmark's application (``bench/serving.py``): a raw ASGI app that answers at once,
so that what a request costs is the HTTP layer serving it.

``python -m bench._serving_app PORT kit|uvicorn OPTIONS``: ``kit`` serves it with the kit's protocol,
``uvicorn`` with uvicorn's own httptools protocol, both with the uvicorn options given as JSON (the
benchmark passes :data:`svckit.cli.SERVING_OPTIONS` of its own checkout, so that a baseline checkout's
kit is served the same way even when it predates that name). The answer is a list page's size of
JSON with the headers a service's 200 carries. The app imports nothing of the kit but its protocol
(:class:`svckit.server.ProblemHttpProtocol`, in every checkout) and has nothing to start: it runs
without a lifespan.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import uvicorn
from starlette.types import Receive, Scope, Send
from svckit import server

BODY = (
    b'{"items":['
    + b",".join([b'{"id":"0f3c2d2e-8a41-4c4f-9d55-3f1b2a7c9e10","hours":7.5}'] * 20)
    + b'],"next_cursor":null}'
)
HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(BODY)).encode()),
    (b"cache-control", b"no-store"),
    (b"x-request-id", b"req-0123456789abcdef"),
]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


def main(port: int, layer: str, options: dict[str, Any]) -> None:
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        http=server.ProblemHttpProtocol if layer == "kit" else "httptools",
        **options,
    )


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]))
