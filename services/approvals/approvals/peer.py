"""Calls to the timesheets service's internal routes, as the ``approvals`` service principal.

Answers are turned into a small closed set of outcomes so the workflow can decide without looking at
HTTP details: the timesheets service's answer is either definitive (applied, gone, conflict,
forbidden) or the call failed in a way that says nothing about the entry (:class:`PeerUnavailable`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlencode

from pydantic import ValidationError
from svckit.contracts.timesheets import ApplyDecision, Approver, Entry
from svckit.identity import Identity, IdentitySigner

from .peerhttp import PeerHttp, PeerHttpError
from .store import DecisionRow

log = logging.getLogger("approvals.peer")

PRINCIPAL = Identity.service("approvals")

Verdict = Literal["applied", "gone", "conflict", "forbidden", "refused"]


class PeerUnavailable(Exception):
    """The timesheets service could not be reached or failed (5xx, timeout, broken connection)."""


@dataclass(frozen=True)
class PeerReply:
    """``body``: the parsed JSON of an answer other than 200; a 200's is read from ``text`` (as
    received) by the caller, with its contract, in one pass (:func:`entry_from`, ``EntryPage``)."""

    status: int
    body: Any
    text: str = ""


@dataclass(frozen=True)
class ApplyOutcome:
    """``entry_text``: a 200's entry as the timesheets service wrote it (``entry`` read from it), the
    bytes ``entry.model_dump_json()`` would write again (:func:`approvals.representation.decision_json`)."""

    verdict: Verdict
    entry: Entry | None
    detail: str = ""
    entry_text: str = ""


def entry_in(document: Any) -> Entry | None:
    """The entry the timesheets service answered with, read with the shared contract; None (and a
    warning) if it does not hold one."""
    if not isinstance(document, dict):
        return None
    try:
        return Entry.model_validate(document)
    except ValidationError as exc:
        log.warning("timesheets answered an entry that breaks its contract", extra={"error": str(exc)[:300]})
        return None


def not_json(text: str) -> PeerUnavailable | None:
    """What an answer that is not JSON at all means (the peer is broken: as good as unreachable);
    None when it is JSON (or empty). Asked only once a 200's text failed its contract."""
    if not text:
        return None
    try:
        json.loads(text)
    except ValueError:
        return PeerUnavailable("timesheets answered something that is not JSON")
    return None


def entry_from(text: str) -> Entry | None:
    """:func:`entry_in` from a 200's text: parsed and validated in one pass; :class:`PeerUnavailable`
    raised when the text is not JSON (as for any other answer)."""
    try:
        return Entry.model_validate_json(text)
    except ValidationError as exc:
        if (broken := not_json(text)) is not None:
            raise broken from None
        log.warning("timesheets answered an entry that breaks its contract", extra={"error": str(exc)[:300]})
        return None


_VERDICTS: dict[int, Verdict] = {200: "applied", 404: "gone", 409: "conflict", 403: "forbidden"}
#: first-page queue targets kept (:meth:`Timesheets.pending`); emptied when full
MAX_TARGETS = 4096


def pending_target(approver: Identity, limit: int, cursor: str | None) -> str:
    """The internal route's target for an approver's page of the queue (path and query)."""
    params = {
        "exclude_issuer": approver.issuer,
        "exclude_subject": approver.subject,
        "limit": str(limit),
    }
    if cursor is not None:
        params["cursor"] = cursor
    return f"/internal/timesheets/pending?{urlencode(params)}"


def apply_body(decision: DecisionRow) -> bytes:
    """The ``ApplyDecision`` a decision row is applied with. A person's goes without ``by.kind``:
    the body the previous release sends and accepts (its ``Approver`` forbids unknown members), so a
    rolling upgrade or a rollback of the timesheets service leaves people's decisions alone; a
    machine client's then waits, pending, for a timesheets pod that reads it (docs/upgrades.md)."""
    body = ApplyDecision(
        decision_id=decision.id,
        decision=decision.decision,
        comment=decision.comment,
        by=Approver(
            issuer=decision.approver_issuer,
            subject=decision.approver_subject,
            name=decision.approver_name or None,
            client_id=decision.approver_client,
            kind=decision.approver_kind,  # held to the kinds by the column's CHECK
        ),
        at=decision.decided_at,
    )
    omitted = {"by": {"kind"}} if decision.approver_kind == "user" else None
    return body.model_dump_json(exclude=omitted).encode()


class Timesheets:
    """The timesheets service's internal routes, called over :class:`PeerHttp` as ``service:approvals``."""

    def __init__(self, client: PeerHttp, timeout: float) -> None:
        self.client = client
        self.timeout = timeout
        # the same approvers ask for their first page all the time: its target, built once each
        self._first_pages: dict[tuple[str, str, int], str] = {}

    @classmethod
    def at(cls, base_url: str, signer: IdentitySigner, timeout: float) -> Timesheets:
        return cls(PeerHttp(base_url, signer, PRINCIPAL), timeout)

    async def close(self) -> None:
        await self.client.close()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: bytes = b"",
        idempotent: bool = True,
    ) -> PeerReply:
        target = f"{path}?{urlencode(params)}" if params else path
        try:
            status, raw = await self.client.request(
                method, target, body=body, timeout=self.timeout, idempotent=idempotent
            )
            text = raw.decode()
        except (PeerHttpError, TimeoutError, OSError) as exc:
            raise PeerUnavailable(f"timesheets unreachable: {type(exc).__name__}") from exc
        except UnicodeDecodeError as exc:
            raise PeerUnavailable("timesheets answered something that is not JSON") from exc
        if status >= 500:
            raise PeerUnavailable(f"timesheets answered {status}")
        if status == 200:  # read by the caller from the text, with its contract
            return PeerReply(200, None, text)
        try:
            body_json = json.loads(text) if text else None
        except ValueError as exc:
            raise PeerUnavailable("timesheets answered something that is not JSON") from exc
        return PeerReply(status, body_json, text)

    async def entry(self, entry_id: uuid.UUID) -> Entry | None:
        """The live entry, or None when the timesheets service has none by that id."""
        reply = await self._call("GET", f"/internal/timesheets/{entry_id}")
        if reply.status == 404:
            return None
        entry = entry_from(reply.text) if reply.status == 200 else None
        if entry is None:
            raise PeerUnavailable(f"timesheets answered {reply.status} for the entry")
        return entry

    async def pending(self, approver: Identity, limit: int, cursor: str | None) -> PeerReply:
        if cursor is not None:
            return await self._call("GET", pending_target(approver, limit, cursor))
        key = (approver.issuer, approver.subject, limit)
        target = self._first_pages.get(key)
        if target is None:
            if len(self._first_pages) >= MAX_TARGETS:
                self._first_pages.clear()
            target = self._first_pages[key] = pending_target(approver, limit, None)
        return await self._call("GET", target)

    async def apply(self, decision: DecisionRow) -> ApplyOutcome:
        """Apply a decision row at the timesheets service (safe to repeat: keyed by decision id)."""
        # idempotent by decision id: safe to send again when a kept connection turns out closed
        reply = await self._call(
            "POST", f"/internal/timesheets/{decision.entry_id}/decision", body=apply_body(decision)
        )
        verdict = _VERDICTS.get(reply.status, "refused")
        entry = None
        entry_text = ""
        if reply.status == 200:
            entry = entry_from(reply.text)
            entry_text = reply.text if entry is not None else ""
        elif isinstance(reply.body, dict):
            entry = entry_in(reply.body.get("entry"))
        detail = reply.body.get("detail", "") if isinstance(reply.body, dict) and reply.status != 200 else ""
        return ApplyOutcome(verdict, entry, detail, entry_text)

    async def apply_with_retries(
        self, decision: DecisionRow, attempts: int, pause: float = 0.2
    ) -> ApplyOutcome:
        """A few quick tries for a transient failure; the reconciler covers longer outages."""
        for attempt in range(1, attempts + 1):
            try:
                return await self.apply(decision)
            except PeerUnavailable:
                if attempt == attempts:
                    raise
                await asyncio.sleep(pause * attempt)
        raise AssertionError("unreachable")
