"""Numbers in the authorization request are bounded before they are read (never a 500)."""

from __future__ import annotations

import pytest
from identity.authorize import MAX_AGE_DIGITS, login_after

pytestmark = pytest.mark.unit

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        ([("max_age", "60")], NOW - 60),
        ([("max_age", "9" * 5000)], NOW - 10**MAX_AGE_DIGITS),  # past Python's 4,300-digit limit
        ([("max_age", "\u0661\u0662")], NOW),  # digits, but not ASCII ones: unreadable, so strict
        ([("login_after", "1e999")], NOW),  # unreadable or not finite: strict
        ([("login_after", "nan")], NOW),
        ([("login_after", "1" * 5000)], float("1" * 32)),
        ([("prompt", "login"), ("max_age", "0")], NOW),
    ],
)
def test_login_after(pairs: list[tuple[str, str]], expected: float | None) -> None:
    assert login_after(pairs, NOW) == expected
