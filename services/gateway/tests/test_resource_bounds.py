"""What a caller without a token can make the gateway keep in memory.

The gateway runs in this process (conftest.py's rig, served on a loopback socket as in production);
what it keeps for requests it refused is measured with :mod:`tracemalloc` around a burst of them.
"""

from __future__ import annotations

import gc
import tracemalloc

import aiohttp

from .conftest import StartGateway


async def test_hosts_of_refused_requests_are_not_kept(start_gateway: StartGateway) -> None:
    """The forwarding headers of direct peers are kept per (peer, scheme, ``Host``), 4,096 entries
    before the dict is emptied; ``Host`` is the client's, up to the 64 KiB head limit: ~256 MiB per
    worker for requests without any token (fails on main: ~3 MB kept for 50 of them)."""
    requests = 50
    async with start_gateway() as url, aiohttp.ClientSession() as http:

        async def refused(number: int) -> None:
            host = f"{number}.{'h' * 60_000}.example"
            async with http.get(f"{url}/api/timesheets", headers={"Host": host}) as response:
                assert response.status == 401

        await refused(-1)  # warm up
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for number in range(requests):
                await refused(number)
            gc.collect()
            kept = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
    assert kept < 1_000_000, f"{kept / 1e6:.1f} MB kept for {requests} refused requests"
