"""How long a replica gives checkpoints signed by a key it was not given before it calls them wrong.

While the audit Deployment rolls (RollingUpdate, ``maxUnavailable: 0``), pods of two configurations
run side by side: after a key rotation done in one step, a new pod signs checkpoints under a key the
old pods have never been given. An old pod's checkpoint signer and background verifier cannot tell
that from a checkpoint written by someone without any of the keys, but a rollout ends within minutes:
each replica notes when it first met an unknown key id (on its own monotonic clock) and treats the
checkpoints it signed as not yet checkable for :data:`UNKNOWN_KEY_GRACE_SECONDS`, then as what they
would be if forged (the signer refuses, the verifier reports the chain broken). The runbook's
rotation gives every pod the new key before any pod signs with it, so no pod meets an unknown key at
all (docs/runbook.md, "Audit checkpoint keys").
"""

from __future__ import annotations

from collections.abc import Iterable

from svckit.clock import SYSTEM_CLOCK, Clock

#: Longer than a rollout of the audit Deployment takes, short enough that a replica left on an old
#: Secret, or a checkpoint with a made-up key id, is noticed the same hour.
UNKNOWN_KEY_GRACE_SECONDS = 900.0


class UnknownKeyGrace:
    """First sightings of key ids this replica does not know, and whether the grace still holds."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK, seconds: float = UNKNOWN_KEY_GRACE_SECONDS) -> None:
        self.clock = clock
        self.seconds = seconds
        self._first_seen: dict[str, float] = {}

    def tolerates(self, kids: Iterable[str]) -> bool:
        """Whether the first unknown key met since :meth:`forget` (``kids`` among them; meeting one
        counts from now) was met no longer than the grace ago. Every unknown key since then counts, so
        a new made-up key id every few minutes does not start the grace again."""
        now = self.clock.monotonic()
        for kid in kids:
            self._first_seen.setdefault(kid, now)
        return all(now - first <= self.seconds for first in self._first_seen.values())

    def seconds_left(self, kid: str) -> float:
        first = self._first_seen.get(kid, self.clock.monotonic())
        return max(0.0, first + self.seconds - self.clock.monotonic())

    def forget(self) -> None:
        """No unknown key in sight any more: a later one gets a grace of its own."""
        self._first_seen.clear()
