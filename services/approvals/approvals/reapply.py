"""``python -m approvals reapply-decisions``: send applied decisions to the timesheets service again.

Run after the ``timesheets`` schema was restored to an earlier point than ``approvals``
(docs/runbook.md, "Backup and restore"). A decision applied after the backup is ``applied`` here —
settled, final, never driven again by the reconciler — while the restored entry is ``submitted``
again: its owner could delete an approved entry, and every approver's new decision would get 409
(this one exists). The apply step is idempotent by decision id (docs/approvals-consistency.md), so
sending every applied decision again is safe: an entry that carries it answers 200 unchanged, an
entry the restore took back to ``submitted`` takes it again (with a new ``timesheet.decided`` event on
the audit trail, which records that re-application). What cannot be repaired is named, one line each:
an entry the restore lost (created after the backup: ``gone``), or one that carries another decision
(``conflict``: the timesheets schema is newer than this one).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt

import asyncpg
from svckit.identity import IdentitySigner

from . import store
from .peer import PeerUnavailable, Timesheets
from .settings import ApprovalsSettings

_APPLIED = f"""SELECT {store.COLUMNS} FROM decisions
               WHERE state = 'applied' AND ($1::timestamptz IS NULL OR decided_at >= $1)
               ORDER BY decided_at, id"""

_WHY = {
    "gone": "the entry is gone (the restore lost it)",
    "conflict": "the entry carries another decision",
    "forbidden": "the timesheets service refuses it (the approver owns the entry)",
    "refused": "the timesheets service refuses it",
}


def reapply_decisions(settings: ApprovalsSettings, args: list[str]) -> int:
    """Send every applied decision (or those decided since --since) to the timesheets service again."""
    parser = argparse.ArgumentParser(
        prog="python -m approvals reapply-decisions", description=reapply_decisions.__doc__
    )
    parser.add_argument(
        "--since",
        type=dt.datetime.fromisoformat,
        default=None,
        help="only decisions decided at or after this ISO 8601 instant (the backup's start, minus a margin)",
    )
    parsed = parser.parse_args(args)
    since: dt.datetime | None = parsed.since
    if since is not None and since.tzinfo is None:
        parser.error("--since needs a time zone (e.g. 2026-11-23T02:00:00+00:00)")
    return asyncio.run(_reapply(settings, since))


async def _reapply(settings: ApprovalsSettings, since: dt.datetime | None) -> int:
    conn = await asyncpg.connect(
        settings.database_url,
        timeout=settings.db_connect_timeout_seconds,
        server_settings={"search_path": "approvals", "application_name": "approvals-reapply"},
        ssl=settings.database_tls.context(),
    )
    try:
        decisions = [store.DecisionRow.of(row) for row in await conn.fetch(_APPLIED, since)]
    finally:
        await conn.close()
    timesheets = Timesheets.at(
        settings.timesheets_url,
        IdentitySigner(settings.identity_sign_keys("timesheets")),
        settings.apply_timeout_seconds,
    )
    counts = dict.fromkeys(("applied", *_WHY), 0)
    try:
        for decision in decisions:
            try:
                outcome = await timesheets.apply_with_retries(decision, max(settings.apply_attempts, 3))
            except PeerUnavailable as exc:
                print(f"stopped: {exc}; nothing is lost, run the command again")
                return 1
            counts[outcome.verdict] += 1
            if outcome.verdict != "applied":
                detail = f" ({outcome.detail})" if outcome.detail else ""
                print(f"{decision.entry_id}: {_WHY[outcome.verdict]}{detail}; decision {decision.id}")
    finally:
        await timesheets.close()
    print(
        f"{len(decisions)} applied decisions sent again: {counts['applied']} in place, "
        + ", ".join(f"{counts[verdict]} {verdict}" for verdict in _WHY)
    )
    return 0
