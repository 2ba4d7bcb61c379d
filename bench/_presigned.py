"""Pre-signed requests for wrk, one per request.

A signed identity carries a nonce the receiver accepts once and a digest of the body
(``svckit.identity``), and wrk's Lua cannot compute HMACs: so every request a benchmark sends
straight to a service is signed here beforehand, written to a data file, read and formatted once by
the Lua script, and sent in turn. A pool too small for the run wraps around and shows as 401s
(replays) in the non-2xx count. Timestamps are valid for ``IDENTITY_MAX_SKEW_SECONDS`` (60 s): mint
a pool right before its run.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

LUA = """
local reqs = {}
init = function(args)
  for line in io.lines("%(data)s") do
    local method, path, head, body = line:match("^([^\\t]*)\\t([^\\t]*)\\t([^\\t]*)\\t(.*)$")
    local headers = {}
    for k, v in head:gmatch("([^\\1\\2]+)\\2([^\\1]*)") do headers[k] = v end
    reqs[#reqs + 1] = wrk.format(method, path, headers, body)
  end
end
local n = 0
request = function()
  n = n + 1
  return reqs[((n - 1) %% #reqs) + 1]
end
"""

Request = tuple[str, str, dict[str, str], bytes]  # method, target, headers, body


def write_pool(script: Path, requests: Iterable[Request]) -> Path:
    """``script`` (Lua) and its data file beside it; returns ``script``."""
    data = script.with_suffix(".data")
    with data.open("w", encoding="utf-8") as out:
        for method, target, headers, body in requests:
            head = "\x01".join(f"{key}\x02{value}" for key, value in headers.items())
            text = body.decode()
            if any(c in text or c in head for c in "\t\n"):
                raise ValueError("pre-signed requests are one line each: no tabs or newlines")
            out.write(f"{method}\t{target}\t{head}\t{text}\n")
    script.write_text(LUA % {"data": data})
    return script
