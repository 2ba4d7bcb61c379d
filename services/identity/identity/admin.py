"""Administration commands: ``rotate-keys``, ``add-user``, ``add-client``, ``after-restore``,
``rotate-client-secret``, ``retire-client-secret`` (``seed`` is in seed.py).

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
from typing import Annotated
from urllib.parse import urlsplit

import asyncpg
from pydantic import TypeAdapter, ValidationError
from svckit.contracts.audit import AuditEvent
from svckit.contracts.fields import NameText
from svckit.db import milliseconds
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
    """The admin commands' connection, bounded as the service's pooled ones are: a statement waits
    at most ``DB_LOCK_TIMEOUT_SECONDS`` for a lock another session holds (then the kit's CLI says so
    in one line, svckit.db.LOCK_REFUSAL) and at most ``DB_STATEMENT_TIMEOUT_SECONDS`` in all.
    Without them ``add-user`` behind an operator's forgotten ``LOCK TABLE`` waited, silent, for ever."""
    return await asyncpg.connect(
        settings.database_url,
        timeout=settings.db_connect_timeout_seconds,
        command_timeout=settings.db_statement_timeout_seconds,
        server_settings={
            "search_path": "identity,public",
            "application_name": "identity-admin",
            "lock_timeout": milliseconds(settings.db_lock_timeout_seconds),
        },
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


def cutoff_keep_seconds(settings: IdentitySettings) -> int:
    """How long a cutoff is held: every token it refuses was issued before it, so has expired by then
    (the access-token lifetime), plus the largest leeway a gateway grants past ``exp``."""
    return settings.access_token_ttl_seconds + GATEWAY_LEEWAY_SECONDS


def after_restore(settings: IdentitySettings, args: list[str]) -> int:
    """Acknowledge a restore of the identity schema: end everything issued before it, rotate the key.

    Run once after restoring the schema from a backup and before the provider serves again
    (docs/runbook.md, "Backup and restore"). The restored rows undo what happened since the backup —
    a rotated refresh token (perhaps copied by a thief) is fresh again, a signed-out session lives, a
    redeemed code redeems, a revocation is gone — and nothing outside the database remembers which
    rows that concerns, so every credential issued before now ends (store.end_everything_issued):
    every user signs in again. A new signing key is published as well (it signs after the grace), so
    that a rotation made after the backup, perhaps of a leaked key, is not undone for good. The
    provider publishes the revocations to the gateways when it starts. The access tokens issued after
    the backup are in no restored row, so a revocation cutoff is recorded as well (reason
    ``restore``): the provider publishes it when it starts, and the gateways refuse every access
    token of this issuer issued before it (its ``iat``) until the longest of them has expired.
    Running it twice is harmless.
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
            ended = await store.end_everything_issued(
                conn,
                leeway_seconds=GATEWAY_LEEWAY_SECONDS,
                cutoff_keep_seconds=cutoff_keep_seconds(settings),
            )
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
                "tokens_issued_before": ended.cutoff.issued_before.isoformat(),
                "cutoff_until": ended.cutoff.keep_until.isoformat(),
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
        # the cutoff is the next whole second (an iat is whole seconds): wait until Postgres's clock
        # has passed it, so that a provider started after this command (the runbook's order) issues
        # no token the gateways would take for one issued before it (a fresh sign-in refused 401)
        remaining = await conn.fetchval(
            "SELECT extract(epoch FROM $1::timestamptz - clock_timestamp())::float8",
            ended.cutoff.issued_before,
        )
        if remaining > 0:
            await asyncio.sleep(min(float(remaining), 1.0) + 0.01)
        print(
            f"ended everything issued before the restore: {ended.access_tokens} access tokens and "
            f"{ended.refresh_tokens} refresh tokens revoked, {ended.sessions} sessions ended, "
            f"{ended.codes} codes expired; {ended.republished} revocations will be published again"
        )
        print(
            f"the gateways refuse every access token issued before {ended.cutoff.issued_before.isoformat()} "
            f"until {ended.cutoff.keep_until.isoformat()} (published when the provider starts)"
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


#: What a user's name and e-mail address may be: the kit's rule for a name (svckit NameText, as the
#: services hold a project's name to) — not blank, no control characters (C0, DEL, C1), no
#: bidirectional controls. They become the ``name`` and ``email`` claims of ID tokens and userinfo,
#: which the gateway forwards as the caller's name and the services keep in rows and the audit trail:
#: "Alice\u202eecila" would read as another name in a manager's queue. At most 200 characters for a
#: name (what the gateway forwards of it), 254 for an address (RFC 5321's path).
_USER_TEXT = {
    "--name": TypeAdapter(Annotated[str, NameText(200, "A user's display name.")]),
    "--email": TypeAdapter(Annotated[str, NameText(254, "A user's e-mail address.")]),
}
#: A client's name, by the same rule: the consent page says "<name> wants to …", and an override
#: would draw "Trusted \u202eppA" as "TrustedApp".
_CLIENT_NAME = TypeAdapter(Annotated[str, NameText(200, "A client's name, shown on the consent page.")])


def user_text(option: str, value: str) -> str:
    """``value`` as the user's ``option`` (``--name`` or ``--email``) is stored: without surrounding
    whitespace (which the rule strips first, a trailing NEL among it); ValueError with the kit's
    message (it names a bidirectional control by its code point and name) when refused."""
    return _checked(_USER_TEXT[option], option, value)


def _checked(rule: TypeAdapter[str], option: str, value: str) -> str:
    try:
        return rule.validate_python(value)
    except ValidationError as refused:
        message = str(refused.errors()[0]["msg"]).removeprefix("Value error, ")
        raise ValueError(f"{option} {message}") from None


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
    try:
        name, email = user_text("--name", parsed.name), user_text("--email", parsed.email)
    except ValueError as refused:
        parser.error(str(refused))
    if "@" not in email:
        parser.error("--email must be an e-mail address")
    password = _read_secret(parsed.password_env, "password")
    if len(password) < 4:
        parser.error("the password must have at least 4 characters")

    async def work(conn: asyncpg.Connection) -> int:
        user = User(
            subject_for(parsed.username),
            parsed.username,
            email,
            name,
            tuple(dict.fromkeys(parsed.role)),
            hash_secret(password),
        )
        inserted = await store.upsert_user(conn, user)
        print(f"{'added' if inserted else 'updated'} user {parsed.username} ({user.subject})")
        return 0

    return run_with_connection(settings, work)


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def encrypted_or_loopback(uri: str) -> bool:
    """RFC 9700 §2.6: an authorization response (a code, tokens) never travels unencrypted, so a
    client's redirect URI — and its logout URLs and web origins, the pages that read those tokens —
    is https, or http on the loopback interface (RFC 8252 §7.3: never leaves the machine; and the
    seeded SPA's ``http://localhost:8080`` on a developer's machine)."""
    parts = urlsplit(uri)
    return parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS)


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
    try:
        name = _checked(_CLIENT_NAME, "--name", parsed.name)
    except ValueError as refused:
        parser.error(str(refused))
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
        if not (settings.identity_allow_insecure_http or encrypted_or_loopback(uri)):
            parser.error(
                f"{uri!r} must be https (plain http only on the loopback interface: localhost, "
                "127.0.0.1, [::1]; or set IDENTITY_ALLOW_INSECURE_HTTP for a plain-http test deployment)"
            )
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
        name=name,
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


def _client_secret_event(action: str, client_id: str, details: dict[str, object]) -> AuditEvent:
    """The audit event of a change to a client's secrets (never a secret nor a hash in it)."""
    return AuditEvent.create(
        action=action,
        resource_type="client",
        resource_id=client_id,
        outcome="success",
        actor=Identity.service("identity"),
        source="identity",
        details=details,
    )


async def rotate_secret(
    conn: asyncpg.Connection, client_id: str, secret: str, overlap_seconds: int, *, by: str
) -> store.SecretRotation | None:
    """Rotate in one transaction with its audit event (``by``: ``command`` or ``seed``). None when there
    is no such confidential client."""
    async with conn.transaction():
        rotation = await store.rotate_client_secret(
            conn, client_id, hash_secret(secret), overlap_seconds, by_command=by == "command"
        )
        if rotation is not None:
            details: dict[str, object] = {
                "overlap_seconds": overlap_seconds,
                "previous_valid_until": rotation.previous_valid_until.isoformat(),
                "ended_an_earlier_overlap": rotation.ended_earlier,
                "by": by,
            }
            await enqueue(conn, _client_secret_event("identity.client_secret_rotated", client_id, details))
    return rotation


def rotate_client_secret(settings: IdentitySettings, args: list[str]) -> int:
    """Give a confidential client a new generated secret, printed once; the current one stays valid
    for the overlap, so that the client can change over without a failed request.

    A client holds two secrets at most: rotating again during an overlap ends the secret of before it
    at once. ``retire-client-secret`` ends the overlap early. The seed (BATCH_CLIENT_SECRET) does not
    put back the secret of before a rotation by this command (docs/runbook.md).
    """
    parser = argparse.ArgumentParser(
        prog="python -m identity rotate-client-secret", description=rotate_client_secret.__doc__
    )
    parser.add_argument("client_id")
    parser.add_argument(
        "--overlap-seconds",
        type=int,
        default=settings.client_secret_overlap_seconds,
        help="seconds the current secret stays valid beside the new one (default "
        "CLIENT_SECRET_OVERLAP_SECONDS); 0 ends it now, as after a leak",
    )
    parsed = parser.parse_args(args)
    if not 0 <= parsed.overlap_seconds <= 30 * 86400:
        parser.error("--overlap-seconds must be between 0 and 2592000 (30 days)")
    secret = new_secret()

    async def work(conn: asyncpg.Connection) -> int:
        rotation = await rotate_secret(conn, parsed.client_id, secret, parsed.overlap_seconds, by="command")
        if rotation is None:
            print(f"no confidential client {parsed.client_id}", file=sys.stderr)
            return 2
        if rotation.ended_earlier:
            print("the secret of before the previous rotation is no longer valid")
        print(
            f"rotated the secret of client {parsed.client_id}; the secret of before is valid until "
            f"{rotation.previous_valid_until.isoformat()}"
        )
        print(f"client secret (shown once): {secret}")
        return 0

    return run_with_connection(settings, work)


def retire_client_secret(settings: IdentitySettings, args: list[str]) -> int:
    """End a rotation's overlap now: only the client's current secret is valid from now on."""
    parser = argparse.ArgumentParser(
        prog="python -m identity retire-client-secret", description=retire_client_secret.__doc__
    )
    parser.add_argument("client_id")
    parsed = parser.parse_args(args)

    async def work(conn: asyncpg.Connection) -> int:
        async with conn.transaction():
            client = await store.get_client(conn, parsed.client_id)
            if client is None or client.is_public:
                print(f"no confidential client {parsed.client_id}", file=sys.stderr)
                return 2
            retired = await store.retire_previous_client_secret(conn, parsed.client_id)
            if retired:
                event = _client_secret_event("identity.client_secret_retired", parsed.client_id, {})
                await enqueue(conn, event)
        print(
            f"retired the secret of before of client {parsed.client_id}: only the current one is valid"
            if retired
            else f"client {parsed.client_id} has no secret of before in an overlap: nothing to retire"
        )
        return 0

    return run_with_connection(settings, work)
