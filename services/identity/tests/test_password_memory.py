"""What concurrent sign-in attempts make the provider keep in memory.

Each Argon2id verification takes 19 MiB (identity.passwords) in the thread that runs it, and glibc
keeps a thread's arena once the thread has used it. The checks ran on anyio's default thread pool —
40 threads — so 40 wrong passwords sent at once (a form's CSRF token and a few addresses are all it
takes: the throttle counts attempts, it does not limit how many are checked at the same time) left the
process ~700 MiB larger for good, beyond the chart's 512 Mi limit. Found by a soak, where the
provider's RSS rose in steps of ~20 MiB (92 → 195 MiB) with the sign-ins of three users.
"""

from __future__ import annotations

import asyncio
import secrets

import aiohttp
import psutil

from testkit.oidc import hidden_field

from .conftest import own_provider_process, provider_url

ATTEMPTS = 40


async def test_concurrent_wrong_passwords_do_not_grow_the_process(seeded: dict[str, str]) -> None:
    """40 wrong passwords at once, twice: the process grows by less than 10 verifications' memory —
    the hashing pool's 4, and the 40 waiting worker threads' own (~130 MiB here) — where it grew by
    one per attempt sent at once (fails on main: ~+800 MiB)."""
    with own_provider_process(seeded, LOGIN_MAX_FAILURES_PER_ADDRESS="1000") as process:
        assert process.process is not None
        base = provider_url(process.port)
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as http:
            async with http.get(base + "/login") as page:
                assert page.status == 200
                csrf = hidden_field(await page.text(), "csrf_token")

            async def guess() -> int:
                form = {"username": f"nobody-{secrets.token_hex(4)}", "password": "wrong", "csrf_token": csrf}
                async with http.post(base + "/login", data=form, allow_redirects=False) as response:
                    await response.read()
                    return response.status

            assert await guess() == 401  # warm: one verification's arena, the pages' templates
            before = psutil.Process(process.process.pid).memory_info().rss
            for _ in range(2):
                statuses = await asyncio.gather(*(guess() for _ in range(ATTEMPTS)))
                assert set(statuses) == {401}, statuses
            grown = psutil.Process(process.process.pid).memory_info().rss - before
    assert grown < 10 * 19 * 2**20, f"{grown / 2**20:.0f} MiB kept after {2 * ATTEMPTS} sign-in attempts"
