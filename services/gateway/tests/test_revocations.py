"""The revocation deny set and how stream entries feed it (in process; the end-to-end proof with two
gateway processes is tests/revocation/test_propagation.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from gateway.revocations import DenyList, RevocationFeed
from svckit.redisguard import RedisGuard

pytestmark = pytest.mark.unit

ISSUER = "http://localhost:9000/"


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def feed(deny: DenyList) -> RevocationFeed:
    # never started: only apply() is exercised, so no connection is made
    guard = RedisGuard("redis://127.0.0.1:1/0", "p:", timeout=0.1, retry_seconds=1)
    return RevocationFeed(guard, deny, {ISSUER: 30})


def entry(**fields: str) -> dict[bytes, bytes]:
    return {k.encode(): v.encode() for k, v in fields.items()}


def test_an_entry_is_held_until_exp_plus_the_issuers_leeway() -> None:
    clock = Clock()
    deny = DenyList(clock)
    reader = feed(deny)
    exp = clock.now + 60
    assert reader.apply(entry(iss=ISSUER, jti="a", exp=str(int(exp)), reason="revoked")) == "added"
    assert deny.denied(ISSUER, "a")
    assert not deny.denied(ISSUER, "b")
    assert not deny.denied("https://other.example/", "a"), "keyed by (issuer, jti)"
    clock.now = exp + 29
    deny.purge()
    assert deny.denied(ISSUER, "a"), "still inside the leeway the gateway grants exp"
    clock.now = exp + 31
    deny.purge()
    assert not deny.denied(ISSUER, "a")
    assert len(deny) == 0


@pytest.mark.parametrize(
    ("fields", "outcome"),
    [
        ({"iss": "https://stranger.example/", "jti": "x", "exp": "2000000"}, "ignored"),
        ({"iss": ISSUER, "jti": "", "exp": "2000000"}, "ignored"),
        ({"iss": ISSUER, "jti": "x" * 256, "exp": "2000000"}, "ignored"),
        ({"iss": ISSUER, "jti": "x", "exp": "NaN"}, "ignored"),
        ({"iss": ISSUER, "jti": "x", "exp": "inf"}, "ignored"),
        ({"iss": ISSUER, "jti": "x", "exp": "soon"}, "ignored"),
        ({"iss": ISSUER, "jti": "x"}, "ignored"),
        ({"iss": ISSUER, "jti": "x", "exp": "10"}, "expired"),
    ],
)
def test_malformed_foreign_or_expired_entries_deny_nothing(fields: dict[str, str], outcome: str) -> None:
    deny = DenyList(Clock())
    assert feed(deny).apply(entry(**fields)) == outcome
    assert len(deny) == 0


def test_not_utf8_is_ignored() -> None:
    deny = DenyList(Clock())
    assert feed(deny).apply({b"iss": b"\xff", b"jti": b"x", b"exp": b"2000000"}) == "ignored"


def test_a_full_deny_set_drops_expired_entries_first() -> None:
    clock = Clock()
    deny = DenyList(clock, max_entries=2)
    deny.add(ISSUER, "old", clock.now + 1)
    deny.add(ISSUER, "live", clock.now + 100)
    clock.now += 2
    assert deny.add(ISSUER, "new", clock.now + 100)
    assert deny.denied(ISSUER, "live")
    assert deny.denied(ISSUER, "new")
    assert len(deny) == 2


# --- revocation cutoffs ("not before", docs/CONTRACTS.md "Revocation events") -----------------------


def cutoff(issued_before: float, until: float, issuer: str = ISSUER) -> dict[bytes, bytes]:
    return entry(iss=issuer, issued_before=str(int(issued_before)), until=str(int(until)), reason="restore")


def test_a_cutoff_refuses_tokens_of_its_issuer_issued_before_it_until_it_ends() -> None:
    clock = Clock()
    deny = DenyList(clock)
    reader = feed(deny)
    before, until = clock.now - 10, clock.now + 600
    assert reader.apply(cutoff(before, until)) == "added"
    now = clock.now
    assert deny.cut_off(ISSUER, before - 1, now), "issued before the cutoff: refused"
    assert not deny.cut_off(ISSUER, before, now), "issued at the cutoff (after the restore): accepted"
    assert not deny.cut_off(ISSUER, before + 5, now)
    assert deny.cut_off(ISSUER, None, now), "no iat: nothing proves it was issued after the cutoff"
    assert not deny.cut_off("https://other.example/", before - 1, now), "another issuer's tokens"
    assert not deny.cut_off("https://other.example/", None, now)
    assert len(deny) == 0, "no token entry: the gauge of revoked tokens is unchanged"
    clock.now = until
    assert not deny.cut_off(ISSUER, before - 1, clock.now), "ended: every token it refused has expired"
    deny.purge()
    assert deny.cutoffs(ISSUER) == ()


def test_a_cutoff_read_again_or_covered_is_held_once() -> None:
    clock = Clock()
    deny = DenyList(clock)
    reader = feed(deny)
    first = cutoff(clock.now - 100, clock.now + 500)
    assert reader.apply(first) == "added"
    assert reader.apply(first) == "added"  # a reconnection reads the stream from the start again
    assert deny.cutoffs(ISSUER) == ((clock.now - 100, clock.now + 500),)
    assert reader.apply(cutoff(clock.now - 10, clock.now + 900)) == "added"  # a second restore
    assert deny.cutoffs(ISSUER) == ((clock.now - 10, clock.now + 900),), "the newer covers the older"
    assert reader.apply(first) == "added"
    assert deny.cutoffs(ISSUER) == ((clock.now - 10, clock.now + 900),)


def test_cutoffs_that_end_in_another_order_are_each_held_until_they_end() -> None:
    clock = Clock()
    deny = DenyList(clock)
    deny.add_cutoff(ISSUER, clock.now - 100, clock.now + 900)  # a longer token lifetime then
    deny.add_cutoff(ISSUER, clock.now - 10, clock.now + 300)
    assert deny.cut_off(ISSUER, clock.now - 50, clock.now)
    clock.now += 400
    assert not deny.cut_off(ISSUER, clock.now - 450, clock.now), "after the later one's end"
    assert deny.cut_off(ISSUER, clock.now - 550, clock.now), "the earlier one still holds"


@pytest.mark.parametrize(
    ("fields", "outcome"),
    [
        ({"iss": "https://stranger.example/", "issued_before": "999990", "until": "2000000"}, "ignored"),
        ({"iss": ISSUER, "issued_before": "NaN", "until": "2000000"}, "ignored"),
        ({"iss": ISSUER, "issued_before": "inf", "until": "2000000"}, "ignored"),
        ({"iss": ISSUER, "issued_before": "-1", "until": "2000000"}, "ignored"),
        ({"iss": ISSUER, "issued_before": "999990", "until": "soon"}, "ignored"),
        ({"iss": ISSUER, "issued_before": "999990", "until": "1e400"}, "ignored"),
        ({"iss": ISSUER, "issued_before": "999990"}, "ignored"),
        ({"iss": ISSUER, "issued_before": "", "until": "2000000"}, "ignored"),
        ({"iss": ISSUER, "issued_before": "2000001", "until": "2000000"}, "ignored"),
        ({"iss": ISSUER, "issued_before": "999000", "until": "999999"}, "expired"),
        ({"iss": ISSUER, "until": "2000000"}, "ignored"),  # neither jti nor issued_before
    ],
)
def test_malformed_foreign_or_ended_cutoffs_refuse_nothing(fields: dict[str, str], outcome: str) -> None:
    clock = Clock()
    deny = DenyList(clock)
    assert feed(deny).apply(entry(**fields)) == outcome
    assert deny.cutoffs(ISSUER) == ()
    assert not deny.cut_off(ISSUER, 0, clock.now)
    assert not deny.cut_off(ISSUER, None, clock.now)


def test_an_entry_with_a_jti_is_a_token_revocation_whatever_else_it_holds() -> None:
    """The jti shape wins, as a gateway of before the cutoff shape reads it."""
    clock = Clock()
    deny = DenyList(clock)
    fields = {
        "iss": ISSUER,
        "jti": "a",
        "exp": str(int(clock.now + 60)),
        "issued_before": str(int(clock.now)),
    }
    assert feed(deny).apply(entry(**fields)) == "added"
    assert deny.denied(ISSUER, "a")
    assert deny.cutoffs(ISSUER) == ()


#: The last commit whose reader knew only the ``{iss, jti, exp}`` shape (the releases of before cutoffs)
JTI_ONLY_READER = "bb285c0c145222be28480ede586e7cf276c57aca"
REPO = Path(__file__).resolve().parents[3]


def test_a_gateway_of_before_cutoffs_ignores_the_cutoff_entry_harmlessly(tmp_path: Path) -> None:
    """During a rolling upgrade the provider may publish a cutoff to gateways that predate it: their
    reader counts it ``ignored`` (no ``jti``), refuses nothing more and reads on. (Run in a process
    of its own: both readers register the same metric names.)"""
    shown = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{JTI_ONLY_READER}:services/gateway/gateway/revocations.py"],
        capture_output=True,
        check=False,
        timeout=30,
    )
    if shown.returncode != 0:
        pytest.skip(f"the reader of {JTI_ONLY_READER[:10]} is not in this clone's history")
    (tmp_path / "old_revocations.py").write_bytes(shown.stdout)
    script = f"""
import sys, time
sys.path.insert(0, {str(tmp_path)!r})
from old_revocations import DenyList, RevocationFeed
from svckit.redisguard import RedisGuard
deny = DenyList()
guard = RedisGuard("redis://127.0.0.1:1/0", "p:", timeout=0.1, retry_seconds=1)
reader = RevocationFeed(guard, deny, {{{ISSUER!r}: 30}})
now = int(time.time())
cut = {{b"iss": {ISSUER.encode()!r}, b"issued_before": str(now).encode(), b"until": str(now + 600).encode(),
       b"reason": b"restore"}}
token = {{b"iss": {ISSUER.encode()!r}, b"jti": b"j", b"exp": str(now + 60).encode(), b"reason": b"revoked"}}
print(reader.apply(cut), len(deny), reader.apply(token), len(deny))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=60, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ignored", "0", "added", "1"]
