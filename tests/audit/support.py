"""A writer service's side of the audit suite, as the suites that relay to a real audit service need it:
a schema of its own with the kit's outbox (the migration every producer runs), a Database on it, and a
real :class:`svckit.outbox.OutboxRelay` signing as :data:`SOURCE` with its (SOURCE → audit) pair key.

One setup for tests/audit/test_delivery.py and tests/audit/test_receipts.py, which kept a copy each.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from typing import Any, Self

from svckit.db import Database
from svckit.http import HttpClient, SignedClient
from svckit.identity import Identity
from svckit.migrations import migrate
from svckit.outbox import AuditEvent, OutboxRelay

from testkit.fixtures import pair_signer

SOURCE = "timesheets"  # the audit service records events only under the caller's own name


@dataclass
class OutboxWriter:
    """A writer's schema, its Database and its running relay (subclasses add what their tests do)."""

    database: Database
    schema: str
    relay: OutboxRelay

    @classmethod
    async def start(
        cls, owner: str, audit_url: str, identity_keys: dict[str, str], http: HttpClient, **relay_options: Any
    ) -> Self:
        """Migrate a fresh ``writer_<hex>`` schema as ``owner`` and start relaying it to ``audit_url``;
        ``relay_options`` as :class:`OutboxRelay`'s keyword arguments."""
        schema = f"writer_{secrets.token_hex(4)}"
        await migrate(owner, schema, None, kit=["outbox"])
        database = Database(owner, schema=schema, application_name="writer")
        await database.wait_connected(10)
        audit = SignedClient(http, audit_url, pair_signer(identity_keys, SOURCE, "audit"))
        relay = OutboxRelay(database, schema, SOURCE, audit, **relay_options)
        relay.start()
        return cls(database, schema, relay)

    async def stop(self) -> None:
        await self.relay.stop()
        await self.database.close()


def created_events(actor: Identity, count: int) -> list[AuditEvent]:
    """``count`` new events of a timesheet created by ``actor``, numbered in their details."""
    return [
        AuditEvent.create(
            action="timesheet.created",
            resource_type="timesheet",
            resource_id=str(uuid.uuid4()),
            outcome="success",
            actor=actor,
            source=SOURCE,
            details={"n": n},
        )
        for n in range(count)
    ]
