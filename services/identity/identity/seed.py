"""The idempotent demo seed: users alice, bob and carol and the clients of docs/CONTRACTS.md.

Running it again changes nothing (unchanged passwords and secrets keep their stored hashes); a
changed ``DEMO_PASSWORD`` or ``BATCH_CLIENT_SECRET`` is applied. It also makes sure a signing key exists.
"""

from __future__ import annotations

import argparse
import sys

import asyncpg

from . import store
from .admin import run_with_connection, subject_for
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


async def _keep_or_hash_client(conn: asyncpg.Connection, client_id: str, secret: str) -> str:
    existing = await store.get_client(conn, client_id)
    stored = existing.secret_hash if existing else None
    if stored and not needs_rehash(stored) and verify_secret(stored, secret):
        return stored
    return hash_secret(secret)


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
            batch_hash = await _keep_or_hash_client(conn, "timesheets-batch", settings.batch_client_secret)
            for client in demo_clients(batch_hash):
                await store.upsert_client(conn, client)
        kid = await ensure_signing_key(conn, settings.signing_alg, KeyCipher(settings.key_encryption_keys))
        print("seeded users alice (employee), bob (manager), carol (auditor)")
        print("seeded clients timesheets-spa, partner-spa, timesheets-batch")
        if kid:
            print(f"created signing key {kid} ({settings.signing_alg})")
        return 0

    return run_with_connection(settings, work)
