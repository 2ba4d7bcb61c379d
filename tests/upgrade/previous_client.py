"""Drives the PREVIOUS release's services as its gateway would — run by the interpreter with the
previous release's kit on PYTHONPATH, so the identity headers are signed the way that code verifies
them, whatever the current contract is. Prints one JSON document of what it saw.

    python previous_client.py <timesheets url> <approvals url> <audit url>   (IDENTITY_KEYS in the env)
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from svckit.identity import Identity, IdentitySigner, request_target
from svckit.settings import parse_identity_keys

ISSUER = "http://localhost:9000/"
SIGNER = IdentitySigner(parse_identity_keys(os.environ["IDENTITY_KEYS"]))
ALICE = Identity(
    ISSUER,
    "alice",
    "user",
    "timesheets-spa",
    frozenset({"read:timesheets", "create:timesheets", "delete:timesheets"}),
    "alice",
)
BOB = Identity(
    ISSUER, "bob", "user", "timesheets-spa", frozenset({"read:timesheets", "approve:timesheets"}), "bob"
)
CAROL = Identity(ISSUER, "carol", "user", "timesheets-spa", frozenset({"read:audit"}), "carol")


def call(who: Identity, method: str, url: str, body: Any = None) -> tuple[int, Any]:
    parts = urlsplit(url)
    headers = SIGNER.headers(who, method=method, target=request_target(parts.path, parts.query))
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read()
            return response.status, json.loads(text) if text else None
    except urllib.error.HTTPError as exc:
        text = exc.read()
        return exc.code, json.loads(text) if text else None


def main(timesheets: str, approvals: str, audit: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    entry = {
        "date": "2026-11-30",
        "project": "upgrade",
        "hours": 2.5,
        "notes": "written by the previous release",
    }
    status, created = call(ALICE, "POST", f"{timesheets}/timesheets", entry)
    seen["create"] = status
    entry_id = created["id"]
    status, listed = call(ALICE, "GET", f"{timesheets}/timesheets")
    seen["list"] = status
    seen["listed"] = entry_id in json.dumps(listed)
    status, queue = call(BOB, "GET", f"{approvals}/approvals")
    seen["queue"] = status
    seen["queued"] = entry_id in json.dumps(queue)
    status, _ = call(
        BOB, "PUT", f"{approvals}/approvals/{entry_id}", {"decision": "approved", "comment": "ok"}
    )
    seen["approve"] = status
    status, _ = call(ALICE, "DELETE", f"{timesheets}/timesheets/{entry_id}")
    seen["delete_approved"] = status
    status, other = call(ALICE, "POST", f"{timesheets}/timesheets", {**entry, "date": "2026-12-01"})
    status, _ = call(ALICE, "DELETE", f"{timesheets}/timesheets/{other['id']}")
    seen["delete_submitted"] = status
    deadline = time.monotonic() + 30
    while True:  # the outbox relay delivers to the audit trail in the background
        status, events = call(CAROL, "GET", f"{audit}/audit/events")
        seen["audit"] = status
        seen["audited"] = entry_id in json.dumps(events) and other["id"] in json.dumps(events)
        if seen["audited"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    status, verified = call(CAROL, "GET", f"{audit}/audit/verify")
    seen["verify"] = status
    seen["chain_ok"] = bool(verified and verified.get("ok"))
    return seen


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:4])))
