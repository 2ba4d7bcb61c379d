"""Read-ahead of upstream responses: a slow client holds memory, not a pooled upstream connection.

Why: a response relayed with back-pressure alone (reading from the service paused while 256 KiB wait
for the client) keeps its pooled connection busy until the client has taken the whole body. A client
behind a real network path (a segment size of 1460 bytes, so the kernel's send buffer stays small)
that takes a few bytes at a time, always within the send timeout, held a connection for as long as it
liked: ``UPSTREAM_POOL_SIZE`` such readers of a large page (a timesheets list of 100 entries with long
notes is ~800 KB) made every other request to that service wait for a connection, without limit
(``tests/domain/test_slow_reader.py``). The service itself held nothing by then — its handler had
built the whole body and released its database connection before writing — so the scarce resource was
the gateway's pool alone.

What proxies do (nginx's ``proxy_buffering``): read the upstream's response as fast as the upstream
sends it, give the connection back, and feed the client from memory. Memory is bounded per worker by
:class:`ReadAhead` (``GATEWAY_RESPONSE_BUFFER_BYTES``): a response whose ``Content-Length`` fits what
is left of the budget reserves that much until its last byte is handed to the client's socket;
one that does not fit (the budget is taken by other slow readers, or no length was given) is streamed
as before, but no longer than ``UPSTREAM_READ_TIMEOUT_SECONDS`` in all — past that the client's
response is cut off (its connection closed), counted and logged, so a slow reader can hold a pooled
connection for a bounded time only. A response that is complete in the gateway's buffers gives its
connection back at once whichever way it goes, even one whose client is not reading at all.
"""

from __future__ import annotations

from . import metrics


class ReadAhead:
    """The bytes of upstream responses a worker may hold for its clients, read ahead of them."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0

    def reserve(self, size: int) -> bool:
        """Take ``size`` bytes of the budget (``False``: not that much left, nothing taken)."""
        if self.used + size > self.capacity:
            return False
        self.used += size
        metrics.response_buffer_bytes.set(self.used)
        return True

    def give_back(self, size: int) -> None:
        self.used -= size
        metrics.response_buffer_bytes.set(self.used)
