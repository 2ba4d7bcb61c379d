"""Administration commands: ``rotate-keys``, ``add-user``, ``add-client``, ``after-restore`` (``seed`` is
in seed.py).

Run as ``python -m identity <command> --help``. Secrets are never taken from the command line (where
``ps`` would show them): passwords come from stdin or an environment variable, generated client
secrets are printed once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable

import asyncpg
from svckit.contracts.audit import AuditEvent
from svckit.identity import Identity
from svckit.outbox import enqueue

from . import store
from .keys import KeyCipher, new_secret, rotate_keys
from .models import Client, User
from .passwords import hash_secret
from .revocation import GATEWAY_LEEWAY_SECONDS
from .scopes import ALL_SCOPES, KNOWN_ROLES, OIDC_SCOPES
from .settings import IdentitySettings


def subject_for(username: str) -> str:
    """Stable subject of a local user: ``local|<user name>`` (Auth0-shaped ``connection|id``)."""
    return f"local|{username}"


async def connect(settings: IdentitySettings) -> asyncpg.Connection:
    return await asyncpg.connect(
        settings.database_url,
        timeout=settings.db_connect_timeout_seconds,
        server_settings={"search_path": "identity,public", "application_name": "identity-admin"},
        ssl=settings.database_tls.context(),  # sslmode/sslrootcert as the kit applies them (svckit.dbtls)
    )


def run_with_connection(
    settings: IdentitySettings, work: Callable[[asyncpg.Connection], Awaitable[int]]
) -> int:
    async def main() -> int:
        conn = await connect(settings)
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(main())


def rotate(settings: IdentitySettings, args: list[str]) -> int:
    """Publish a new signing key now; it signs after the grace period, old keys stay published."""
    parser = argparse.ArgumentParser(prog="python -m identity rotate-keys", description=rotate.__doc__)
    parser.add_argument(
        "--grace-seconds",
        type=int,
        default=settings.key_rotation_grace_seconds,
        help="seconds between publishing and signing (default KEY_ROTATION_GRACE_SECONDS)",
    )
    parser.add_argument("--alg", choices=("RS256", "ES256"), default=settings.signing_alg)
    parsed = parser.parse_args(args)
    if parsed.grace_seconds < 0:
        parser.error("--grace-seconds must not be negative")

    async def work(conn: asyncpg.Connection) -> int:
        kid, starts = await rotate_keys(
            conn,
            parsed.alg,
            KeyCipher(settings.key_encryption_keys),
            grace_seconds=parsed.grace_seconds,
            max_token_ttl_seconds=settings.max_token_ttl_seconds,
        )
        print(f"published key {kid} ({parsed.alg}); it signs from {starts.isoformat()}")
        return 0

    return run_with_connection(settings, work)


def after_restore(settings: IdentitySettings, args: list[str]) -> int:
    """Acknowledge a restore of the identity schema: end everything issued before it, rotate the key.

    Run once after restoring the schema from a backup and before the provider serves again
    (docs/runbook.md, "Backup and restore"). The restored rows undo what happened since the backup —
    a rotated refresh token (perhaps copied by a thief) is fresh again, a signed-out session lives, a
    redeemed code redeems, a revocation is gone — and nothing outside the database remembers which
    rows that concerns, so every credential issued before now ends (store.end_everything_issued):
    every user signs in again. A new signing key is published as well (it signs after the grace), so
    that a rotation made after the backup, perhaps of a leaked key, is not undone for good. The
    provider publishes the revocations to the gateways when it starts. Running it twice is harmless.
    """
    parser = argparse.ArgumentParser(
        prog="python -m identity after-restore", description=after_restore.__doc__
    )
    parser.add_argument(
        "--key-grace-seconds",
        type=int,
        default=settings.key_rotation_grace_seconds,
        help="seconds until the new key signs (default KEY_ROTATION_GRACE_SECONDS); 0 when a key "
        "retired after the backup had leaked",
    )
    parsed = parser.parse_args(args)
    if parsed.key_grace_seconds < 0:
        parser.error("--key-grace-seconds must not be negative")

    async def work(conn: asyncpg.Connection) -> int:
        async with conn.transaction():
            ended = await store.end_everything_issued(conn, leeway_seconds=GATEWAY_LEEWAY_SECONDS)
            kid, starts = await rotate_keys(
                conn,
                settings.signing_alg,
                KeyCipher(settings.key_encryption_keys),
                grace_seconds=parsed.key_grace_seconds,
                max_token_ttl_seconds=settings.max_token_ttl_seconds,
            )
            details = {
                "access_tokens_revoked": ended.access_tokens,
                "refresh_tokens_revoked": ended.refresh_tokens,
                "sessions_ended": ended.sessions,
                "codes_expired": ended.codes,
                "revocations_to_publish": ended.republished,
                "new_key": kid,
            }
            await enqueue(
                conn,
                AuditEvent.create(
                    action="identity.restored",
                    resource_type="identity",
                    resource_id=settings.identity_issuer,
                    outcome="success",
                    actor=Identity.service("identity"),
                    source="identity",
                    details=details,
                ),
            )
        print(
            f"ended everything issued before the restore: {ended.access_tokens} access tokens and "
            f"{ended.refresh_tokens} refresh tokens revoked, {ended.sessions} sessions ended, "
            f"{ended.codes} codes expired; {ended.republished} revocations will be published again"
        )
        print(f"published key {kid} ({settings.signing_alg}); it signs from {starts.isoformat()}")
        return 0

    return run_with_connection(settings, work)


def _read_secret(env_name: str | None, what: str) -> str:
    if env_name:
        value = os.environ.get(env_name)
        if not value:
            raise SystemExit(f"{what}: environment variable {env_name} is empty or not set")
        return value
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass(f"{what}: ")
    value = sys.stdin.readline().rstrip("\n")
    if not value:
        raise SystemExit(f"{what}: nothing on stdin")
    return value


def add_user(settings: IdentitySettings, args: list[str]) -> int:
    """Add or update a user; the password is read from stdin (or --password-env VAR)."""
    parser = argparse.ArgumentParser(prog="python -m identity add-user", description=add_user.__doc__)
    parser.add_argument("username")
    parser.add_argument("--name", required=True)
    parser.add_argument("--email", required=True)
    parser.add_argument("--role", action="append", choices=sorted(KNOWN_ROLES), required=True)
    parser.add_argument("--password-env", metavar="VAR")
    parsed = parser.parse_args(args)
    if not parsed.username.replace(".", "").replace("-", "").replace("_", "").isalnum():
        parser.error("username may only hold letters, digits, '.', '-' and '_'")
    if "@" not in parsed.email:
        parser.error("--email must be an e-mail address")
    password = _read_secret(parsed.password_env, "password")
    if len(password) < 4:
        parser.error("the password must have at least 4 characters")

    async def work(conn: asyncpg.Connection) -> int:
        user = User(
            subject_for(parsed.username),
            parsed.username,
            parsed.email,
            parsed.name,
            tuple(dict.fromkeys(parsed.role)),
            hash_secret(password),
        )
        inserted = await store.upsert_user(conn, user)
        print(f"{'added' if inserted else 'updated'} user {parsed.username} ({user.subject})")
        return 0

    return run_with_connection(settings, work)


def add_client(settings: IdentitySettings, args: list[str]) -> int:
    """Add or update an OAuth client. Confidential clients get a generated secret, printed once."""
    parser = argparse.ArgumentParser(prog="python -m identity add-client", description=add_client.__doc__)
    parser.add_argument("client_id")
    parser.add_argument("--name", required=True)
    kind = parser.add_mutually_exclusive_group(required=True)
    kind.add_argument("--public", action="store_true", help="a browser or native app (PKCE)")
    kind.add_argument("--confidential", action="store_true", help="a server that keeps a secret")
    parser.add_argument("--first-party", action="store_true", help="skip the consent page")
    parser.add_argument("--redirect-uri", action="append", default=[])
    parser.add_argument("--logout-uri", action="append", default=[])
    parser.add_argument("--web-origin", action="append", default=[])
    parser.add_argument(
        "--grant-type",
        action="append",
        choices=("authorization_code", "implicit", "client_credentials", "refresh_token"),
        default=[],
    )
    parser.add_argument("--scope", action="append", choices=sorted(ALL_SCOPES), default=[])
    parser.add_argument("--secret-env", metavar="VAR", help="take the secret from VAR instead")
    parser.add_argument(
        "--require-dpop",
        action="store_true",
        help="every token request must carry a DPoP proof (RFC 9449 dpop_bound_access_tokens)",
    )
    parsed = parser.parse_args(args)
    grants = tuple(dict.fromkeys(parsed.grant_type)) or (
        ("client_credentials",) if parsed.confidential else ("authorization_code",)
    )
    if parsed.public and "client_credentials" in grants:
        parser.error("a public client cannot use client_credentials")
    if {"authorization_code", "implicit"} & set(grants) and not parsed.redirect_uri:
        parser.error("--redirect-uri is required for authorization_code and implicit")
    for uri in (*parsed.redirect_uri, *parsed.logout_uri, *parsed.web_origin):
        if not uri.startswith(("https://", "http://")) or "#" in uri:
            parser.error(f"{uri!r} must be an absolute http(s) URL without a fragment")
    response_types: list[str] = []
    if "authorization_code" in grants:
        response_types.append("code")
    if "implicit" in grants:
        response_types += ["id_token token", "id_token"]
    secret: str | None = None
    if parsed.confidential:
        secret = os.environ.get(parsed.secret_env, "") if parsed.secret_env else new_secret()
        if not secret:
            parser.error(f"environment variable {parsed.secret_env} is empty or not set")
    scopes = tuple(dict.fromkeys(parsed.scope)) or tuple(OIDC_SCOPES)[:3]
    client = Client(
        client_id=parsed.client_id,
        name=parsed.name,
        first_party=parsed.first_party,
        secret_hash=hash_secret(secret) if secret else None,
        redirect_uris=tuple(parsed.redirect_uri),
        post_logout_redirect_uris=tuple(parsed.logout_uri),
        web_origins=tuple(parsed.web_origin),
        grant_types=grants,
        response_types=tuple(response_types),
        allowed_scopes=scopes,
        dpop_bound_access_tokens=parsed.require_dpop,
    )

    async def work(conn: asyncpg.Connection) -> int:
        inserted = await store.upsert_client(conn, client)
        print(f"{'added' if inserted else 'updated'} client {client.client_id}")
        if secret and not parsed.secret_env:
            print(f"client secret (shown once): {secret}")
        return 0

    return run_with_connection(settings, work)
