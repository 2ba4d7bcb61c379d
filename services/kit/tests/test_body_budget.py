"""The request bodies a worker holds at once (``REQUEST_BODY_BUFFER_BYTES``, svckit.middleware.BodyBudget).

Measured under the chart's limits in tests/packaging/test_pods_under_limits.py (sixteen of the largest
uploads at once OOM-killed the timesheets pod without it); here the budget's own rules.
"""

from __future__ import annotations

from svckit.middleware import UNCOUNTED_BODY, BodyBudget

MiB = 1 << 20


def test_bodies_take_their_size_until_given_back() -> None:
    budget = BodyBudget(64 * MiB)
    assert all(budget.hold(16 * MiB) for _ in range(4))
    assert not budget.hold(16 * MiB)  # the fifth of the largest uploads
    assert budget.held == 64 * MiB
    budget.give_back(16 * MiB)
    assert budget.hold(16 * MiB)


def test_small_bodies_are_not_counted() -> None:
    budget = BodyBudget(1 * MiB)
    assert budget.hold(MiB)
    assert all(budget.hold(UNCOUNTED_BODY) for _ in range(1000))
    budget.give_back(UNCOUNTED_BODY)
    assert budget.held == MiB


def test_a_body_alone_always_fits_and_zero_means_no_bound() -> None:
    small = BodyBudget(4 * MiB)
    assert small.hold(16 * MiB)  # larger than the budget, but nothing else is held
    assert not small.hold(MiB)
    small.give_back(16 * MiB)
    assert small.held == 0
    unbounded = BodyBudget(0)
    assert all(unbounded.hold(16 * MiB) for _ in range(100))
    assert unbounded.held == 0


def test_the_refusal_is_a_503_that_stored_nothing() -> None:
    problem = BodyBudget(MiB).refused()
    assert problem.status == 503
    assert problem.headers == {"Retry-After": "2"}
    assert problem.extensions == {"reason": "request_body_budget", "outcome": "not_stored"}
