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

The grace is quiet (a warning line per run, nothing an alert watches) and ends in a critical alert, so
each grace also sets ``audit_checkpoint_unknown_key_since_timestamp_seconds{task}`` to the wall-clock
time of its first sighting (0 while there is none): a warning alert reads how long it has lasted
(TimesheetsAuditCheckpointKeyUnknown, at 5 minutes: a rollout is over by then) while there is still
time to give the replica its key.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Gauge
from svckit.clock import SYSTEM_CLOCK, Clock

#: Longer than a rollout of the audit Deployment takes, short enough that a replica left on an old
#: Secret, or a checkpoint with a made-up key id, is noticed the same hour.
UNKNOWN_KEY_GRACE_SECONDS = 900.0


class UnknownKeyGrace:
    """First sightings of key ids this replica does not know, and whether the grace still holds."""

    def __init__(
        self,
        clock: Clock = SYSTEM_CLOCK,
        seconds: float = UNKNOWN_KEY_GRACE_SECONDS,
        since: Gauge | None = None,
    ) -> None:
        """``since``: the gauge (a labelled child) that shows when the grace began, 0 without one."""
        self.clock = clock
        self.seconds = seconds
        self.since = since
        self._first_seen: dict[str, float] = {}

    def tolerates(self, kids: Iterable[str]) -> bool:
        """Whether the first unknown key met since :meth:`forget` (``kids`` among them; meeting one
        counts from now) was met no longer than the grace ago. Every unknown key since then counts, so
        a new made-up key id every few minutes does not start the grace again."""
        now = self.clock.monotonic()
        began = not self._first_seen
        for kid in kids:
            self._first_seen.setdefault(kid, now)
        if began and self._first_seen and self.since is not None:
            self.since.set(self.clock.time())
        return all(now - first <= self.seconds for first in self._first_seen.values())

    def seconds_left(self, kid: str) -> float:
        first = self._first_seen.get(kid, self.clock.monotonic())
        return max(0.0, first + self.seconds - self.clock.monotonic())

    def forget(self) -> None:
        """No unknown key in sight any more: a later one gets a grace of its own."""
        if self._first_seen and self.since is not None:
            self.since.set(0)
        self._first_seen.clear()
