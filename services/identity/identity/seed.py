"""The idempotent demo seed: users alice, bob and carol and the clients of docs/CONTRACTS.md.

Running it again changes nothing (unchanged passwords and secrets keep their stored hashes); a
changed ``DEMO_PASSWORD`` is applied, a changed ``BATCH_CLIENT_SECRET`` rotates the client's secret
with an overlap — unless ``rotate-client-secret`` set the current one (:func:`_batch_secret`). It
also makes sure a signing key exists.
"""

from __future__ import annotations

import argparse
import sys

import asyncpg

from . import store
from .admin import rotate_secret, run_with_connection, subject_for
from .keys import KeyCipher, ensure_signing_key
from .models import Client, User
from .passwords import hash_secret, needs_rehash, verify_secret
from .settings import IdentitySettings

SPA_ORIGIN = "http://localhost:8080"
USER_API_SCOPES = (
    "read:timesheets",
    "create:timesheets",
    "delete:timesheets",
    "approve:timesheets",
    "read:audit",
)

DEMO_USERS = (
    ("alice", "Alice Employee", "alice@example.com", ("employee",)),
    ("bob", "Bob Manager", "bob@example.com", ("manager",)),
    ("carol", "Carol Auditor", "carol@example.com", ("auditor",)),
)


def demo_clients(batch_secret_hash: str) -> list[Client]:
    oidc = ("openid", "profile", "email", "offline_access")
    return [
        Client(
            client_id="timesheets-spa",
            name="Timesheets",
            first_party=True,
            secret_hash=None,
            redirect_uris=(f"{SPA_ORIGIN}/", f"{SPA_ORIGIN}/callback"),
            post_logout_redirect_uris=(f"{SPA_ORIGIN}/",),
            web_origins=(SPA_ORIGIN,),
            grant_types=("authorization_code", "implicit", "refresh_token"),
            response_types=("code", "id_token token", "id_token"),
            allowed_scopes=(*oidc, *USER_API_SCOPES),
        ),
        Client(
            client_id="partner-spa",
            name="Partner Time Reports",
            first_party=False,
            secret_hash=None,
            redirect_uris=(f"{SPA_ORIGIN}/partner/", f"{SPA_ORIGIN}/partner/callback"),
            post_logout_redirect_uris=(f"{SPA_ORIGIN}/partner/",),
            web_origins=(SPA_ORIGIN,),
            grant_types=("authorization_code", "implicit", "refresh_token"),
            response_types=("code", "id_token token", "id_token"),
            allowed_scopes=(*oidc, "read:timesheets", "create:timesheets"),
        ),
        Client(
            client_id="timesheets-batch",
            name="Timesheets batch uploader",
            first_party=True,
            secret_hash=batch_secret_hash,
            redirect_uris=(),
            post_logout_redirect_uris=(),
            web_origins=(),
            grant_types=("client_credentials",),
            response_types=(),
            allowed_scopes=("batch:upload",),
        ),
    ]


async def _keep_or_hash(conn: asyncpg.Connection, username: str, password: str) -> str:
    """Re-use the stored hash when the password is unchanged, so re-seeding changes nothing."""
    existing = await store.get_user_by_username(conn, username)
    if (
        existing
        and not needs_rehash(existing.password_hash)
        and verify_secret(existing.password_hash, password)
    ):
        return existing.password_hash
    return hash_secret(password)


async def _batch_secret(conn: asyncpg.Connection, settings: IdentitySettings, secret: str) -> str:
    """The hash to store for ``timesheets-batch`` (the stored one when the secrets stay as they are).

    - a new client (or one without a secret): the variable's secret;
    - the variable holds the current secret: kept (re-hashed only when the hash's parameters are old
      and no overlap runs); if a command had rotated it, the variable manages it again from now on;
    - the variable holds another secret and ``rotate-client-secret`` set the current one: not applied
      (a notice on stderr) — the upgrade Job or a demo pod's init container must not put back the
      secret of before, which the rotation may have retired because it leaked;
    - else the variable was changed: a rotation with the overlap (``CLIENT_SECRET_OVERLAP_SECONDS``),
      the secret of before valid meanwhile, and its audit event.
    """
    client_id = "timesheets-batch"
    existing = await store.get_client(conn, client_id)
    stored = existing.secret_hash if existing else None
    if existing is None or stored is None:
        return hash_secret(secret)
    if verify_secret(stored, secret):
        await store.clear_secret_rotated(conn, client_id)
        if needs_rehash(stored) and existing.previous_secret_hash is None:
            return hash_secret(secret)
        return stored
    rotated_at = await store.secret_rotated_at(conn, client_id)
    if rotated_at is not None:
        print(
            f"BATCH_CLIENT_SECRET is not the current secret of {client_id}, which "
            f"`python -m identity rotate-client-secret` set at {rotated_at.isoformat()}: not applied. Put "
            "the current secret into BATCH_CLIENT_SECRET (docs/runbook.md, \"Rotate the batch client's "
            'secret"); from then on a change of it is applied again.',
            file=sys.stderr,
        )
        return stored
    await rotate_secret(conn, client_id, secret, settings.client_secret_overlap_seconds, by="seed")
    print(
        f"BATCH_CLIENT_SECRET changed: the secret of before of {client_id} stays valid for "
        f"{settings.client_secret_overlap_seconds} s (retire-client-secret ends that)"
    )
    rotated = await store.get_client(conn, client_id)
    assert rotated is not None
    assert rotated.secret_hash is not None
    return rotated.secret_hash


def seed(settings: IdentitySettings, args: list[str]) -> int:
    """Idempotent demo data: alice/bob/carol and the three clients of docs/CONTRACTS.md."""
    argparse.ArgumentParser(prog="python -m identity seed", description=seed.__doc__).parse_args(args)
    if not settings.batch_client_secret:
        print("invalid configuration: BATCH_CLIENT_SECRET is required by seed", file=sys.stderr)
        return 2

    async def work(conn: asyncpg.Connection) -> int:
        async with conn.transaction():
            for username, name, email, roles in DEMO_USERS:
                password_hash = await _keep_or_hash(conn, username, settings.demo_password)
                user = User(subject_for(username), username, email, name, roles, password_hash)
                await store.upsert_user(conn, user)
            assert settings.batch_client_secret is not None
            batch_hash = await _batch_secret(conn, settings, settings.batch_client_secret)
            for client in demo_clients(batch_hash):
                await store.upsert_client(conn, client)
        kid = await ensure_signing_key(conn, settings.signing_alg, KeyCipher(settings.key_encryption_keys))
        print("seeded users alice (employee), bob (manager), carol (auditor)")
        print("seeded clients timesheets-spa, partner-spa, timesheets-batch")
        if kid:
            print(f"created signing key {kid} ({settings.signing_alg})")
        return 0

    return run_with_connection(settings, work)
