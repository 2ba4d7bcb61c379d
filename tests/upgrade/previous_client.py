"""Drives the PREVIOUS release's services as its gateway would — run by the interpreter with the
previous release's kit on PYTHONPATH, so the identity headers are signed by the very code that release
verifies them with, whatever the current contract is. Prints one JSON document of what it saw.

    python previous_client.py <timesheets url> <approvals url> <audit url>
        (the keys in the env: IDENTITY_KEYS, and IDENTITY_KEYS_GATEWAY_TO_<SERVICE> for a release
        with pairwise keys)

The identity contract changed between releases (docs/CONTRACTS.md): one shared key in
``IDENTITY_KEYS`` at first, then one key per sender → receiver pair, then the signature also binding
the body (``Content-Digest``) and a nonce. What the previous release speaks is read from its own kit
(:func:`contract`), not from a list of commits, so any release can be the previous one: the old
baseline c79eb8f as well as the newest landed release.

The client does not stop at the first refusal: it reports each step's status (and, when the entry
could not be created, the answer), so a refused signature (401) tells itself apart from a schema the
previous code cannot use (500) — the guard in ``test_previous_release.py`` depends on that.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from svckit import identity as kit
from svckit.settings import parse_identity_keys

ISSUER = "http://localhost:9000/"
GATEWAY = "gateway"
ALICE = kit.Identity(
    ISSUER,
    "alice",
    "user",
    "timesheets-spa",
    frozenset({"read:timesheets", "create:timesheets", "delete:timesheets"}),
    "alice",
)
BOB = kit.Identity(
    ISSUER, "bob", "user", "timesheets-spa", frozenset({"read:timesheets", "approve:timesheets"}), "bob"
)
CAROL = kit.Identity(ISSUER, "carol", "user", "timesheets-spa", frozenset({"read:audit"}), "carol")


def contract() -> dict[str, bool]:
    """What the previous release's kit signs: pairwise keys (its ``svckit.identity.pair_variable``)
    or one shared ``IDENTITY_KEYS``; the body bound to the signature (``IdentitySigner.headers`` takes
    ``body``, and adds the nonce itself) or the request line only."""
    return {
        "pairwise_keys": hasattr(kit, "pair_variable"),
        "binds_body": "body" in inspect.signature(kit.IdentitySigner.headers).parameters,
    }


CONTRACT = contract()


def signer(receiver: str) -> kit.IdentitySigner:
    """The gateway's signer towards ``receiver``, as the previous release configures it."""
    variable = kit.pair_variable(GATEWAY, receiver) if CONTRACT["pairwise_keys"] else "IDENTITY_KEYS"
    return kit.IdentitySigner(parse_identity_keys(os.environ[variable]))


class Service:
    def __init__(self, name: str, url: str) -> None:
        self.url = url.rstrip("/")
        self.signer = signer(name)

    def call(self, who: kit.Identity, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        url = self.url + path
        parts = urlsplit(url)
        data = None if body is None else json.dumps(body).encode()
        signed: dict[str, Any] = {"method": method, "target": kit.request_target(parts.path, parts.query)}
        if CONTRACT["binds_body"]:
            signed["body"] = data or b""  # the exact bytes sent (Content-Digest)
        headers = self.signer.headers(who, **signed)
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                text = response.read()
                return response.status, json.loads(text) if text else None
        except urllib.error.HTTPError as exc:
            text = exc.read()
            try:
                return exc.code, json.loads(text) if text else None
            except ValueError:
                return exc.code, text.decode(errors="replace")


def main(timesheets_url: str, approvals_url: str, audit_url: str) -> tuple[dict[str, Any], dict[str, str]]:
    """What each step answered, and the ids of the entries written (the approved one, the deleted one)."""
    timesheets = Service("timesheets", timesheets_url)
    approvals = Service("approvals", approvals_url)
    audit = Service("audit", audit_url)
    seen: dict[str, Any] = {}
    entry = {
        "date": "2026-11-30",
        "project": "upgrade",
        "hours": 2.5,
        "notes": "written by the previous release",
    }
    status, created = timesheets.call(ALICE, "POST", "/timesheets", entry)
    seen["create"] = status
    if status != 201:
        seen["create_answer"] = created
        return seen, {}
    entry_id = created["id"]
    status, listed = timesheets.call(ALICE, "GET", "/timesheets")
    seen["list"] = status
    seen["listed"] = entry_id in json.dumps(listed)
    status, queue = approvals.call(BOB, "GET", "/approvals")
    seen["queue"] = status
    seen["queued"] = entry_id in json.dumps(queue)
    status, _ = approvals.call(
        BOB, "PUT", f"/approvals/{entry_id}", {"decision": "approved", "comment": "ok"}
    )
    seen["approve"] = status
    status, _ = timesheets.call(ALICE, "DELETE", f"/timesheets/{entry_id}")
    seen["delete_approved"] = status
    status, other = timesheets.call(ALICE, "POST", "/timesheets", {**entry, "date": "2026-12-01"})
    other_id = other["id"] if status == 201 else "(not created)"
    status, _ = timesheets.call(ALICE, "DELETE", f"/timesheets/{other_id}")
    seen["delete_submitted"] = status
    deadline = time.monotonic() + 30
    while True:  # the outbox relay delivers to the audit trail in the background
        status, events = audit.call(CAROL, "GET", "/audit/events")
        seen["audit"] = status
        seen["audited"] = entry_id in json.dumps(events) and other_id in json.dumps(events)
        if seen["audited"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    status, verified = audit.call(CAROL, "GET", "/audit/verify")
    seen["verify"] = status
    seen["chain_ok"] = bool(isinstance(verified, dict) and verified.get("ok"))
    # a project name decomposed (e + U+0301): the previous release stores it as sent (before the
    # current release's 0008 trigger, which stores it in NFC)
    status, decomposed = timesheets.call(
        ALICE, "POST", "/timesheets", {**entry, "date": "2026-12-03", "project": "Cafe\u0301"}
    )
    seen["create_decomposed"] = status
    decomposed_id = decomposed["id"] if status == 201 else "(not created)"
    return seen, {"approved": entry_id, "deleted": other_id, "decomposed": decomposed_id}


if __name__ == "__main__":
    seen, ids = main(*sys.argv[1:4])
    print(json.dumps({"contract": CONTRACT, "seen": seen, "ids": ids}))
