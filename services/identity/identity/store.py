"""Every query the identity service runs, in one place (asyncpg, schema ``identity`` on the path)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
from svckit.db import PooledQueries

from .models import AuthorizationCode, Client, RefreshToken, User

Conn = asyncpg.Connection | asyncpg.Pool | asyncpg.pool.PoolConnectionProxy | PooledQueries


def digest(value: str) -> bytes:
    """SHA-256 of a bearer secret (code, session id): only digests are stored."""
    return hashlib.sha256(value.encode()).digest()


def storable(value: str) -> bool:
    """Postgres text cannot hold NUL; a lookup by such a value finds nothing instead of failing."""
    return "\x00" not in value


def _user(row: asyncpg.Record) -> User:
    return User(
        subject=row["subject"],
        username=row["username"],
        email=row["email"],
        name=row["name"],
        roles=tuple(row["roles"]),
        password_hash=row["password_hash"],
        disabled=row["disabled"],
    )


def _client(row: asyncpg.Record) -> Client:
    return Client(
        client_id=row["client_id"],
        name=row["name"],
        first_party=row["first_party"],
        secret_hash=row["secret_hash"],
        redirect_uris=tuple(row["redirect_uris"]),
        post_logout_redirect_uris=tuple(row["post_logout_redirect_uris"]),
        web_origins=tuple(row["web_origins"]),
        grant_types=tuple(row["grant_types"]),
        response_types=tuple(row["response_types"]),
        allowed_scopes=tuple(row["allowed_scopes"]),
        dpop_bound_access_tokens=row["dpop_bound_access_tokens"],
        previous_secret_hash=row["live_previous_secret_hash"],
    )


#: a client row with the secret of before only while its overlap lasts (the database's clock decides,
#: the same for every replica)
CLIENT_COLUMNS = """c.*, CASE WHEN c.previous_secret_expires_at > now() THEN c.previous_secret_hash END
    AS live_previous_secret_hash"""


# --- users -------------------------------------------------------------------------------------


async def get_user_by_username(db: Conn, username: str) -> User | None:
    if not storable(username):
        return None
    row = await db.fetchrow("SELECT * FROM users WHERE username = $1", username)
    return _user(row) if row else None


async def get_user(db: Conn, subject: str) -> User | None:
    row = await db.fetchrow("SELECT * FROM users WHERE subject = $1", subject)
    return _user(row) if row else None


async def upsert_user(db: Conn, user: User) -> bool:
    """Insert or update by user name; True when the row was inserted."""
    inserted: bool = await db.fetchval(
        """INSERT INTO users (subject, username, email, name, password_hash, roles)
           VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT (username) DO UPDATE
             SET email = EXCLUDED.email, name = EXCLUDED.name,
                 password_hash = EXCLUDED.password_hash, roles = EXCLUDED.roles, updated_at = now()
           RETURNING (xmax = 0)""",
        user.subject,
        user.username,
        user.email,
        user.name,
        user.password_hash,
        list(user.roles),
    )
    return inserted


async def update_password_hash(db: Conn, subject: str, password_hash: str) -> None:
    await db.execute(
        "UPDATE users SET password_hash = $2, updated_at = now() WHERE subject = $1",
        subject,
        password_hash,
    )


# --- clients -----------------------------------------------------------------------------------


async def get_client(db: Conn, client_id: str) -> Client | None:
    if not storable(client_id):
        return None
    row = await db.fetchrow(f"SELECT {CLIENT_COLUMNS} FROM clients c WHERE client_id = $1", client_id)
    return _client(row) if row else None


async def all_clients(db: Conn) -> list[Client]:
    return [
        _client(row) for row in await db.fetch(f"SELECT {CLIENT_COLUMNS} FROM clients c ORDER BY client_id")
    ]


async def upsert_client(db: Conn, client: Client) -> bool:
    """Insert or update by client id; True when inserted. A changed secret replaces the client's
    secrets outright: a rotation's secret of before ends with it (:func:`rotate_client_secret` keeps it)."""
    inserted: bool = await db.fetchval(
        """INSERT INTO clients (client_id, name, first_party, secret_hash, redirect_uris,
                                post_logout_redirect_uris, web_origins, grant_types,
                                response_types, allowed_scopes, dpop_bound_access_tokens)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
           ON CONFLICT (client_id) DO UPDATE
             SET name = EXCLUDED.name, first_party = EXCLUDED.first_party,
                 secret_hash = EXCLUDED.secret_hash, redirect_uris = EXCLUDED.redirect_uris,
                 post_logout_redirect_uris = EXCLUDED.post_logout_redirect_uris,
                 web_origins = EXCLUDED.web_origins, grant_types = EXCLUDED.grant_types,
                 response_types = EXCLUDED.response_types,
                 allowed_scopes = EXCLUDED.allowed_scopes,
                 dpop_bound_access_tokens = EXCLUDED.dpop_bound_access_tokens, updated_at = now(),
                 previous_secret_hash = CASE WHEN clients.secret_hash IS NOT DISTINCT FROM
                     EXCLUDED.secret_hash THEN clients.previous_secret_hash END,
                 previous_secret_expires_at = CASE WHEN clients.secret_hash IS NOT DISTINCT FROM
                     EXCLUDED.secret_hash THEN clients.previous_secret_expires_at END
           RETURNING (xmax = 0)""",
        client.client_id,
        client.name,
        client.first_party,
        client.secret_hash,
        list(client.redirect_uris),
        list(client.post_logout_redirect_uris),
        list(client.web_origins),
        list(client.grant_types),
        list(client.response_types),
        list(client.allowed_scopes),
        client.dpop_bound_access_tokens,
    )
    return inserted


@dataclass(frozen=True)
class SecretRotation:
    previous_valid_until: datetime  # the secret of before is taken until then (now, with no overlap)
    ended_earlier: bool  # the rotation ended the overlap of an earlier one (its secret of before ends)


async def rotate_client_secret(
    db: Conn, client_id: str, secret_hash: str, overlap_seconds: int, *, by_command: bool
) -> SecretRotation | None:
    """Make ``secret_hash`` the confidential client's secret; the current one stays valid for
    ``overlap_seconds`` (two secrets at most: the secret of before an earlier rotation ends now).
    ``by_command`` marks the secret as set by the command (the seed leaves it: seed.py). None when
    there is no such confidential client."""
    row = await db.fetchrow(
        """UPDATE clients c
              SET previous_secret_hash = secret_hash,
                  previous_secret_expires_at = now() + make_interval(secs => $3),
                  secret_hash = $2,
                  secret_rotated_at = CASE WHEN $4 THEN now() END,
                  updated_at = now()
             FROM (SELECT previous_secret_expires_at > now() AS live FROM clients WHERE client_id = $1
                   FOR UPDATE) before
            WHERE c.client_id = $1 AND c.secret_hash IS NOT NULL
        RETURNING c.previous_secret_expires_at, coalesce(before.live, false) AS ended_earlier""",
        client_id,
        secret_hash,
        float(overlap_seconds),
        by_command,
    )
    return SecretRotation(row["previous_secret_expires_at"], row["ended_earlier"]) if row else None


async def retire_previous_client_secret(db: Conn, client_id: str) -> bool:
    """End a rotation's overlap now: only the current secret is taken. False when none was running."""
    retired: bool = await db.fetchval(
        """WITH retired AS (
               UPDATE clients SET previous_secret_hash = NULL, previous_secret_expires_at = NULL,
                                  updated_at = now()
                WHERE client_id = $1 AND previous_secret_expires_at > now() RETURNING 1)
           SELECT count(*) > 0 FROM retired""",
        client_id,
    )
    return retired


async def clear_secret_rotated(db: Conn, client_id: str) -> None:
    """The seed's value is the current secret again: from now on the seed manages it (seed.py)."""
    await db.execute(
        "UPDATE clients SET secret_rotated_at = NULL WHERE client_id = $1 AND secret_rotated_at IS NOT NULL",
        client_id,
    )


async def secret_rotated_at(db: Conn, client_id: str) -> datetime | None:
    """When a command last rotated the client's secret (None: never, or the seed manages it again)."""
    value: datetime | None = await db.fetchval(
        "SELECT secret_rotated_at FROM clients WHERE client_id = $1", client_id
    )
    return value


# --- sessions ----------------------------------------------------------------------------------


async def create_session(
    db: Conn, session_id: str, subject: str, ttl_seconds: int, auth_time: float | None = None
) -> datetime:
    """A new sign-in session. ``auth_time`` comes from the service's clock (the one that decides
    whether a sign-in is newer than an authorization request), not the database's."""
    created: datetime = await db.fetchval(
        """INSERT INTO sessions (id_hash, subject, auth_time, expires_at)
           VALUES ($1, $2, to_timestamp($4), now() + make_interval(secs => $3))
           RETURNING auth_time""",
        digest(session_id),
        subject,
        float(ttl_seconds),
        time.time() if auth_time is None else auth_time,
    )
    return created


async def get_session(db: Conn, session_id: str) -> tuple[User, datetime] | None:
    row = await db.fetchrow(
        """SELECT u.*, s.auth_time FROM sessions s JOIN users u USING (subject)
           WHERE s.id_hash = $1 AND s.expires_at > now() AND NOT u.disabled""",
        digest(session_id),
    )
    return (_user(row), row["auth_time"]) if row else None


async def delete_session(db: Conn, session_id: str) -> bytes:
    """End a sign-in session; returns its hash (revoke what it issued with :func:`revoke_session`)."""
    session_hash = digest(session_id)
    await db.execute("DELETE FROM sessions WHERE id_hash = $1", session_hash)
    return session_hash


# --- consents ----------------------------------------------------------------------------------


async def get_consent(db: Conn, subject: str, client_id: str) -> frozenset[str]:
    scopes = await db.fetchval(
        "SELECT scopes FROM consents WHERE subject = $1 AND client_id = $2", subject, client_id
    )
    return frozenset(scopes or ())


async def add_consent(db: Conn, subject: str, client_id: str, scopes: Sequence[str]) -> None:
    """Remember the scopes the user allowed, adding to what they allowed before."""
    await db.execute(
        """INSERT INTO consents (subject, client_id, scopes) VALUES ($1, $2, $3)
           ON CONFLICT (subject, client_id) DO UPDATE
             SET scopes = ARRAY(SELECT DISTINCT unnest(consents.scopes || EXCLUDED.scopes)),
                 granted_at = now()""",
        subject,
        client_id,
        list(scopes),
    )


async def list_consents(db: Conn, subject: str) -> list[tuple[Client, list[str], datetime]]:
    rows = await db.fetch(
        f"""SELECT {CLIENT_COLUMNS}, k.scopes AS granted, k.granted_at FROM consents k
           JOIN clients c USING (client_id) WHERE k.subject = $1 ORDER BY c.name""",
        subject,
    )
    return [(_client(row), list(row["granted"]), row["granted_at"]) for row in rows]


async def revoke_consent(db: Conn, subject: str, client_id: str) -> bool:
    if not storable(client_id):
        return False
    result: str = await db.execute(
        "DELETE FROM consents WHERE subject = $1 AND client_id = $2", subject, client_id
    )
    return result.endswith(" 1")


# --- authorization codes -----------------------------------------------------------------------


async def save_code(db: Conn, code: str, item: AuthorizationCode, ttl_seconds: int) -> None:
    await db.execute(
        """INSERT INTO authorization_codes (code_hash, client_id, subject, redirect_uri, scope,
               audience, nonce, code_challenge, code_challenge_method, auth_time, expires_at,
               session_hash, dpop_jkt)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now() + make_interval(secs => $11), $12,
                   $13)""",
        digest(code),
        item.client_id,
        item.subject,
        item.redirect_uri,
        item.scope,
        item.audience,
        item.nonce,
        item.code_challenge,
        item.code_challenge_method,
        item.auth_time,
        float(ttl_seconds),
        item.session_hash,
        item.dpop_jkt,
    )
    # Housekeeping: codes are useless a day after they expired (kept that long to spot replays).
    await db.execute("DELETE FROM authorization_codes WHERE expires_at < now() - interval '1 day'")


class CodeState:
    FRESH = "fresh"
    UNKNOWN = "unknown"
    REPLAYED = "replayed"
    EXPIRED = "expired"
    WRONG_KEY = "wrong_key"  # bound by dpop_jkt to another key (or none was proven): left unused


async def consume_code(
    db: Conn, code: str, dpop_jkt: str | None = None
) -> tuple[str, AuthorizationCode | None]:
    """Mark a code used, atomically, and say whether this was its first, valid use.

    A second use finds ``used_at`` set: the caller refuses it and revokes what the first use issued.
    A code bound to a DPoP key (``dpop_jkt``) is used only by a request proving that key; any other
    attempt is ``WRONG_KEY`` and changes nothing, used or not (whoever intercepted it can neither burn
    it for the client nor, by presenting it after its use, revoke what it issued): the binding is
    checked before replay detection.
    """
    code_hash = digest(code)
    row = await db.fetchrow(
        """UPDATE authorization_codes SET used_at = now()
           WHERE code_hash = $1 AND used_at IS NULL AND (dpop_jkt IS NULL OR dpop_jkt = $2)
           RETURNING *, (expires_at <= now()) AS expired""",
        code_hash,
        dpop_jkt,
    )
    if row is None:
        found = await db.fetchrow(
            "SELECT used_at IS NOT NULL AS used, dpop_jkt FROM authorization_codes WHERE code_hash = $1",
            code_hash,
        )
        if found is None:
            return CodeState.UNKNOWN, None
        if found["dpop_jkt"] is not None and found["dpop_jkt"] != dpop_jkt:
            return CodeState.WRONG_KEY, None
        return (CodeState.REPLAYED if found["used"] else CodeState.WRONG_KEY), None
    item = AuthorizationCode(
        code_hash=code_hash,
        client_id=row["client_id"],
        subject=row["subject"],
        redirect_uri=row["redirect_uri"],
        scope=row["scope"],
        audience=row["audience"],
        nonce=row["nonce"],
        code_challenge=row["code_challenge"],
        code_challenge_method=row["code_challenge_method"],
        auth_time=row["auth_time"],
        expires_at=row["expires_at"],
        session_hash=row["session_hash"],
        dpop_jkt=row["dpop_jkt"],
    )
    return (CodeState.EXPIRED if row["expired"] else CodeState.FRESH), item


async def nonce_used(db: Conn, client_id: str, nonce: str) -> bool:
    found = await db.fetchval(
        "SELECT 1 FROM authorization_codes WHERE client_id = $1 AND nonce = $2 LIMIT 1",
        client_id,
        nonce,
    )
    return found is not None


# --- issued tokens (ledger for revocation) -----------------------------------------------------


@dataclass(frozen=True)
class RevokedToken:
    """A revoked access token, as published to the gateways (``exp`` = the token's own expiry)."""

    jti: str
    expires_at: datetime
    reason: str


async def record_token(
    db: Conn,
    *,
    jti: str,
    code_hash: bytes | None,
    client_id: str,
    subject: str,
    grant_type: str,
    expires_at: int,
    session_hash: bytes | None = None,
    family_id: str | None = None,
) -> None:
    """One issued access token; ``expires_at`` is its ``exp`` (unix seconds), published on revocation."""
    await db.execute(
        """INSERT INTO issued_tokens (jti, code_hash, client_id, subject, grant_type, expires_at,
                                      session_hash, family_id)
           VALUES ($1, $2, $3, $4, $5, to_timestamp($6), $7, $8)""",
        jti,
        code_hash,
        client_id,
        subject,
        grant_type,
        float(expires_at),
        session_hash,
        family_id,
    )


_REVOKE_ACCESS = """UPDATE issued_tokens SET revoked_at = now(), revocation_reason = $1
                    WHERE ({where}) AND revoked_at IS NULL
                    RETURNING jti, expires_at, revocation_reason"""
_REVOKE_REFRESH = "UPDATE refresh_tokens SET revoked_at = now() WHERE ({where}) AND revoked_at IS NULL"


async def _revoke_access(db: Conn, reason: str, where: str, *args: object) -> list[RevokedToken]:
    rows = await db.fetch(_REVOKE_ACCESS.format(where=where), reason, *args)
    return [RevokedToken(row["jti"], row["expires_at"], row["revocation_reason"]) for row in rows]


async def revoke_access_token(db: Conn, jti: str, reason: str) -> list[RevokedToken]:
    return await _revoke_access(db, reason, "jti = $2", jti)


async def revoke_family(db: Conn, family_id: str, reason: str) -> list[RevokedToken]:
    """A refresh-token family and every access token issued with or from it."""
    await db.execute(_REVOKE_REFRESH.format(where="family_id = $1"), family_id)
    return await _revoke_access(db, reason, "family_id = $2", family_id)


# Codes issued through a session that ended expire with it: redeemed later they would issue tokens
# bound to a session no sign-out can reach any more.
_EXPIRE_CODES = """UPDATE authorization_codes SET expires_at = now()
                   WHERE session_hash = $1 AND used_at IS NULL AND expires_at > now()"""


async def revoke_session(db: Conn, session_hash: bytes, reason: str) -> list[RevokedToken]:
    """Every refresh and access token obtained through one sign-in session (logout), and the codes
    not yet redeemed."""
    await db.execute(_EXPIRE_CODES, session_hash)
    await db.execute(_REVOKE_REFRESH.format(where="session_hash = $1"), session_hash)
    return await _revoke_access(db, reason, "session_hash = $2", session_hash)


async def revoke_session_refresh_tokens(db: Conn, session_hash: bytes) -> None:
    """Only the refresh tokens of a session (it was replaced by a new sign-in: no more renewals), and
    the codes not yet redeemed (they would start a new family)."""
    await db.execute(_EXPIRE_CODES, session_hash)
    await db.execute(_REVOKE_REFRESH.format(where="session_hash = $1"), session_hash)


async def revoke_client_grants(db: Conn, subject: str, client_id: str, reason: str) -> list[RevokedToken]:
    """Every token a client holds for a user (consent withdrawn)."""
    await db.execute(_REVOKE_REFRESH.format(where="subject = $1 AND client_id = $2"), subject, client_id)
    return await _revoke_access(db, reason, "subject = $2 AND client_id = $3", subject, client_id)


async def revoke_code(db: Conn, code: str, reason: str) -> list[RevokedToken]:
    """Everything issued from an authorization code: its access tokens, the refresh-token family it
    started, and every access token that family issued since (a replayed code)."""
    code_hash = digest(code)
    families = [
        row["family_id"]
        for row in await db.fetch(
            """SELECT DISTINCT family_id FROM refresh_tokens WHERE code_hash = $1
               UNION SELECT family_id FROM issued_tokens WHERE code_hash = $1 AND family_id IS NOT NULL""",
            code_hash,
        )
    ]
    await db.execute(_REVOKE_REFRESH.format(where="family_id = ANY($1::text[])"), families)
    return await _revoke_access(
        db, reason, "code_hash = $2 OR family_id = ANY($3::text[])", code_hash, families
    )


async def token_revoked(db: Conn, jti: str) -> bool:
    revoked = await db.fetchval("SELECT revoked_at IS NOT NULL FROM issued_tokens WHERE jti = $1", jti)
    return bool(revoked)


async def unexpired_revocations(
    db: Conn, *, unpublished_only: bool, settle_seconds: float = 0.0, leeway_seconds: float = 0.0
) -> list[RevokedToken]:
    """Revoked access tokens a gateway may still accept: not expired ``leeway_seconds`` ago (the
    gateways' leeway past ``exp``): all of them (to re-publish after Redis lost the stream), or those
    not yet published that were revoked over ``settle_seconds`` ago."""
    rows = await db.fetch(
        """SELECT jti, expires_at, revocation_reason FROM issued_tokens
           WHERE revoked_at IS NOT NULL AND expires_at > now() - make_interval(secs => $3)
             AND (NOT $1 OR (published_at IS NULL
                             AND revoked_at < now() - make_interval(secs => $2)))
           ORDER BY revoked_at""",
        unpublished_only,
        settle_seconds,
        leeway_seconds,
    )
    return [
        RevokedToken(row["jti"], row["expires_at"], row["revocation_reason"] or "revoked") for row in rows
    ]


async def mark_published(db: Conn, jtis: Sequence[str]) -> None:
    await db.execute("UPDATE issued_tokens SET published_at = now() WHERE jti = ANY($1::text[])", list(jtis))


@dataclass(frozen=True)
class Cutoff:
    """A revocation cutoff ("not before"): every access token issued before ``issued_before`` is
    refused by the gateways until ``keep_until`` (by then each such token has expired)."""

    issued_before: datetime
    keep_until: datetime
    reason: str
    published: bool = False


async def record_cutoff(db: Conn, *, reason: str, keep_seconds: float) -> Cutoff:
    """A cutoff at the database's ``now()`` rounded *up* to a whole second (``iat`` is whole seconds:
    a token issued in the same second as the cutoff is refused, never one of before it accepted), kept
    ``keep_seconds`` after it; unpublished, so the provider's periodic check publishes it."""
    row = await db.fetchrow(
        """INSERT INTO revocation_cutoffs AS c (issued_before, keep_until, reason)
           SELECT t, t + make_interval(secs => $2), $1
           FROM (SELECT to_timestamp(ceil(extract(epoch FROM now()))) AS t) AS cutoff
           ON CONFLICT (issued_before) DO UPDATE
               SET keep_until = greatest(c.keep_until, excluded.keep_until), published_at = NULL
           RETURNING issued_before, keep_until, reason""",
        reason,
        keep_seconds,
    )
    assert row is not None  # an INSERT ... RETURNING always returns its row
    return Cutoff(row["issued_before"], row["keep_until"], row["reason"])


async def active_cutoffs(db: Conn) -> list[Cutoff]:
    """Cutoffs still held (``keep_until`` not passed), published or not."""
    rows = await db.fetch(
        """SELECT issued_before, keep_until, reason, published_at IS NOT NULL AS published
           FROM revocation_cutoffs WHERE keep_until > now() ORDER BY issued_before"""
    )
    return [Cutoff(row["issued_before"], row["keep_until"], row["reason"], row["published"]) for row in rows]


async def mark_cutoffs_published(db: Conn, cutoffs: Sequence[Cutoff]) -> None:
    await db.execute(
        "UPDATE revocation_cutoffs SET published_at = now() WHERE issued_before = ANY($1::timestamptz[])",
        [cutoff.issued_before for cutoff in cutoffs],
    )


# --- refresh tokens ----------------------------------------------------------------------------


async def save_refresh_token(
    db: Conn,
    token: str,
    *,
    family_id: str,
    code_hash: bytes | None,
    client_id: str,
    subject: str,
    scope: str,
    auth_time: datetime,
    session_hash: bytes | None,
    idle_seconds: int,
    family_expires_at: datetime | None,
    lifetime_seconds: int,
    dpop_jkt: str | None = None,
) -> None:
    await db.execute(
        """INSERT INTO refresh_tokens (token_hash, family_id, client_id, subject, scope, auth_time,
               session_hash, expires_at, family_expires_at, code_hash, dpop_jkt)
           VALUES ($1, $2, $3, $4, $5, $6, $7,
                   LEAST(now() + make_interval(secs => $8),
                         COALESCE($9, now() + make_interval(secs => $10))),
                   COALESCE($9, now() + make_interval(secs => $10)), $11, $12)""",
        digest(token),
        family_id,
        client_id,
        subject,
        scope,
        auth_time,
        session_hash,
        float(idle_seconds),
        family_expires_at,
        float(lifetime_seconds),
        code_hash,
        dpop_jkt,
    )


class RefreshState:
    FRESH = "fresh"
    UNKNOWN = "unknown"
    REUSED = "reused"
    REVOKED = "revoked"
    EXPIRED = "expired"
    WRONG_KEY = "wrong_key"  # bound to a DPoP key this request did not prove: left unused


async def consume_refresh_token(
    db: Conn, token: str, dpop_jkt: str | None = None
) -> tuple[str, RefreshToken | None, str | None]:
    """Mark a refresh token used, atomically: (state, the token when fresh or expired, its family id).

    A token bound to a DPoP key is used only with a proof by that key (``dpop_jkt``); without one it
    is ``WRONG_KEY`` whatever else is true of it (unused, used, revoked), and nothing changes: a stolen
    bound token is worthless, and presenting it, even an old one its owner has since rotated, cannot
    log the owner out. The binding is therefore checked before reuse: only a presentation by the key
    holder (or of a token bound to no key) that finds the token used is ``REUSED``, and the caller
    revokes the whole family (reuse detection).
    """
    token_hash = digest(token)
    row = await db.fetchrow(
        """UPDATE refresh_tokens SET used_at = now()
           WHERE token_hash = $1 AND used_at IS NULL AND revoked_at IS NULL
             AND (dpop_jkt IS NULL OR dpop_jkt = $2)
           RETURNING *, (expires_at <= now()) AS expired""",
        token_hash,
        dpop_jkt,
    )
    if row is None:
        found = await db.fetchrow(
            "SELECT family_id, used_at, revoked_at, dpop_jkt FROM refresh_tokens WHERE token_hash = $1",
            token_hash,
        )
        if found is None:
            return RefreshState.UNKNOWN, None, None
        if found["dpop_jkt"] is not None and found["dpop_jkt"] != dpop_jkt:
            return RefreshState.WRONG_KEY, None, found["family_id"]
        if found["used_at"] is not None:
            return RefreshState.REUSED, None, found["family_id"]
        if found["revoked_at"] is not None:
            return RefreshState.REVOKED, None, found["family_id"]
        # unused, unrevoked, the key proved, yet not updated: only a race could; refuse, change nothing
        return RefreshState.WRONG_KEY, None, found["family_id"]
    item = RefreshToken(
        token_hash=token_hash,
        family_id=row["family_id"],
        client_id=row["client_id"],
        subject=row["subject"],
        scope=row["scope"],
        auth_time=row["auth_time"],
        session_hash=row["session_hash"],
        family_expires_at=row["family_expires_at"],
        dpop_jkt=row["dpop_jkt"],
    )
    state = RefreshState.EXPIRED if row["expired"] else RefreshState.FRESH
    return state, item, item.family_id


async def refresh_token_owner(db: Conn, token: str) -> tuple[str, str, str | None] | None:
    """(family id, client id, DPoP key thumbprint it is bound to) of a refresh token, used or not, for
    revocation (a bound token is revoked only with a proof by its key)."""
    row = await db.fetchrow(
        "SELECT family_id, client_id, dpop_jkt FROM refresh_tokens WHERE token_hash = $1", digest(token)
    )
    return (row["family_id"], row["client_id"], row["dpop_jkt"]) if row else None


async def access_token_owner(db: Conn, jti: str) -> str | None:
    """The client an access token was issued to (RFC 7009: only that client may revoke it)."""
    client_id: str | None = await db.fetchval("SELECT client_id FROM issued_tokens WHERE jti = $1", jti)
    return client_id


@dataclass(frozen=True)
class RestoreAcknowledged:
    """What :func:`end_everything_issued` ended (counts), for the operator and the audit trail."""

    access_tokens: int
    refresh_tokens: int
    sessions: int
    codes: int
    republished: int
    cutoff: Cutoff


async def end_everything_issued(
    db: Conn, *, leeway_seconds: float, cutoff_keep_seconds: float
) -> RestoreAcknowledged:
    """After the schema was restored from a backup: end every credential issued before now.

    The restored rows are the state of the backup's time, so what happened since is undone: refresh
    tokens rotated or revoked since are usable again, ended sessions live again, redeemed codes are
    unredeemed, revocations are gone. Which rows that concerns is recorded nowhere else, so all of them
    end: every refresh token is revoked, every session deleted, every unredeemed code expired, every
    access token a gateway may still accept revoked (reason ``restore``), and every unexpired revocation
    marked unpublished so that the provider publishes them all again, whatever a restored or flushed
    Redis holds now. The access tokens issued after the backup are in no restored row, so a cutoff
    (:func:`record_cutoff`, reason ``restore``, held ``cutoff_keep_seconds``) ends them: the gateways
    refuse every token issued before it. Call inside one transaction, before the provider serves
    from the restored rows.
    """
    access = await db.fetchval(
        """WITH revoked AS (
               UPDATE issued_tokens SET revoked_at = now(), revocation_reason = 'restore'
               WHERE revoked_at IS NULL AND expires_at > now() - make_interval(secs => $1)
               RETURNING 1)
           SELECT count(*) FROM revoked""",
        leeway_seconds,
    )
    republished = await db.fetchval(
        """WITH marked AS (
               UPDATE issued_tokens SET published_at = NULL
               WHERE revoked_at IS NOT NULL AND expires_at > now() - make_interval(secs => $1)
               RETURNING 1)
           SELECT count(*) FROM marked""",
        leeway_seconds,
    )
    refresh = await db.fetchval(
        """WITH revoked AS (
               UPDATE refresh_tokens SET revoked_at = now() WHERE revoked_at IS NULL RETURNING 1)
           SELECT count(*) FROM revoked"""
    )
    sessions = await db.fetchval(
        "WITH ended AS (DELETE FROM sessions RETURNING 1) SELECT count(*) FROM ended"
    )
    codes = await db.fetchval(
        """WITH expired AS (
               UPDATE authorization_codes SET expires_at = now()
               WHERE used_at IS NULL AND expires_at > now() RETURNING 1)
           SELECT count(*) FROM expired"""
    )
    await db.execute("UPDATE revocation_cutoffs SET published_at = NULL WHERE keep_until > now()")
    cutoff = await record_cutoff(db, reason="restore", keep_seconds=cutoff_keep_seconds)
    return RestoreAcknowledged(access, refresh, sessions, codes, republished, cutoff)


async def purge_expired(db: Conn, older_than: timedelta = timedelta(days=1)) -> None:
    """Drop rows nobody can use any more (called from a periodic task)."""
    await db.execute("DELETE FROM sessions WHERE expires_at < now()")
    await db.execute(
        "DELETE FROM refresh_tokens WHERE family_expires_at < now() - make_interval(secs => $1)",
        older_than.total_seconds(),
    )
    await db.execute(
        "DELETE FROM issued_tokens WHERE expires_at < now() - make_interval(secs => $1)",
        older_than.total_seconds(),
    )
    await db.execute(
        "DELETE FROM revocation_cutoffs WHERE keep_until < now() - make_interval(secs => $1)",
        older_than.total_seconds(),
    )
