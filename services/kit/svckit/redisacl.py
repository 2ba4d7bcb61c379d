"""Who may do what in Redis: one ACL user per component, its own keys and the commands it uses.

Redis holds losable state, but some of it is relied on: the revocation stream the gateways read
(a writer to it could silence revocations), the sign-in throttle's counters, the rate-limit counters,
the DPoP ``jti`` and signed-request replay memories. No component may touch another's keys, and none
may run what ends Redis for all (``FLUSHALL``, ``CONFIG``, ``SHUTDOWN``, ``CLIENT KILL``...).

This module is the one statement of those rules (docs/CONTRACTS.md, "Redis keys"): devstack creates
its users from it, the tests run the services as these users, and a test checks that the chart's
bundled Redis (charts/timesheets/templates/secret.yaml, ``redis-users.acl``) renders the same lines.

Key patterns are under ``REDIS_KEY_PREFIX`` (:func:`pattern` escapes the glob characters in it):

========== ========================================= ===========================================
component  keys (read and write)                      commands
========== ========================================= ===========================================
gateway    ``gateway:*`` (key-set cache, rate-limit   GET SET INCRBY EXPIRE; XREAD on
           counters), ``dpop-jti:*``;                 ``revocations``, which it may only read
           ``revocations`` read-only
identity   ``identity:*`` (sign-in and client-auth    GET SET INCR DECR EXPIRE PTTL EVAL (the
           throttles), ``identity-dpop-jti:*``,       throttle's scripts: their commands are
           ``revocations``, ``revocations:complete``  checked too) INCRBY EXISTS XADD XTRIM
timesheets ``identity-replay:timesheets:*``           SET (``NX EX``: the replay memory); EXISTS
                                                      (the same keys, while Redis refuses writes)
approvals  ``identity-replay:approvals:*``            SET EXISTS
audit      ``identity-replay:audit:*``,               SET EXISTS; GET and EVAL (the watermark's
           ``audit:*`` (the trail's watermark)        raise-only write: GET and SET inside)
========== ========================================= ===========================================

Every user may also ``PING`` (the gateway's probe of Redis) and ``SELECT`` (a ``/db`` in the URL);
``AUTH`` and ``HELLO`` need no permission, and the kit's clients send no ``CLIENT SETINFO``
(svckit.redisguard). ``-@dangerous -@admin`` comes last for every user, so that no edit above can
let one in by mistake. No channels (pub/sub) for anyone.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

#: The components that connect to Redis, in the order the chart and devstack list them.
COMPONENTS: tuple[str, ...] = ("gateway", "identity", "timesheets", "approvals", "audit")

#: What every user may run: connection set-up and PING.
CONNECTION_COMMANDS: tuple[str, ...] = ("ping", "select")


@dataclass(frozen=True)
class Grant:
    """One component's commands, and key patterns (suffixes after the prefix) it may read and write
    (``keys``) or only read (``read_keys``)."""

    commands: tuple[str, ...]
    keys: tuple[str, ...]
    read_keys: tuple[str, ...] = ()


def _replay(service: str) -> Grant:
    # svckit.replay: SET <prefix>identity-replay:<service>:<nonce> 1 NX EX <window>; EXISTS of the
    # same key when Redis refused the SET but serves reads (full: a nonce recorded before is a replay)
    return Grant(commands=("set", "exists"), keys=(f"identity-replay:{service}:*",))


GRANTS: Mapping[str, Grant] = {
    "gateway": Grant(
        # jwks.py GET/SET gateway:jwks:<issuer>, SET NX PX gateway:jwks-refresh:<issuer>;
        # ratelimit.py INCRBY+EXPIRE (something to push) or GET (nothing to push) gateway:rl:...;
        # svckit.dpop SET dpop-jti:<digest> NX EX (GET of it while Redis refuses writes); revocations.py
        # XREAD revocations
        commands=("get", "set", "incrby", "expire", "xread"),
        keys=("gateway:*", "dpop-jti:*"),
        read_keys=("revocations",),
    ),
    "identity": Grant(
        # throttle.py EVAL (GET PTTL INCR EXPIRE DECR inside) and GET/PTTL/INCRBY/EXPIRE pipelines on
        # identity:login:*, identity:client-auth-fail:*, identity:token-fail:* and identity:authorize:*;
        # svckit.dpop SET identity-dpop-jti:<digest> (GET of it while Redis refuses writes);
        # revocation.py XADD/XTRIM revocations (TIME: entries' age on Redis's clock), EXISTS/SET
        # revocations:complete
        commands=(
            *("get", "set", "incr", "incrby", "decr", "expire", "pttl", "eval"),
            *("exists", "xadd", "xtrim", "time"),
        ),
        keys=("identity:*", "identity-dpop-jti:*", "revocations", "revocations:complete"),
    ),
    "timesheets": _replay("timesheets"),
    "approvals": _replay("approvals"),
    "audit": Grant(
        # svckit.replay as the others; audit.watermark GET and EVAL (GET, SET inside) of
        # audit:watermark:<database>: the newest checkpoint signed, which a restore cannot roll back
        commands=("set", "exists", "get", "eval"),
        keys=("identity-replay:audit:*", "audit:*"),
    ),
}

_GLOB = re.compile(r"([*?\[\]\\])")


def pattern(prefix: str, suffix: str) -> str:
    """The key pattern ``suffix`` under ``prefix``: the prefix's glob characters escaped."""
    return _GLOB.sub(r"\\\1", prefix) + suffix


def rules(component: str, prefix: str) -> str:
    """The ACL rules of ``component``'s user (no name, no password), for keys under ``prefix``."""
    if " " in prefix or not prefix.isprintable():
        raise ValueError("REDIS_KEY_PREFIX: no spaces or control characters in an ACL key pattern")
    grant = GRANTS[component]
    parts = ["resetchannels", "-@all"]
    parts += [f"+{command}" for command in (*CONNECTION_COMMANDS, *grant.commands)]
    parts += ["-@dangerous", "-@admin"]
    parts += [f"~{pattern(prefix, key)}" for key in grant.keys]
    parts += [f"%R~{pattern(prefix, key)}" for key in grant.read_keys]
    return " ".join(parts)


def password_hash(password: str) -> str:
    """The SHA-256 form Redis accepts for a password (``#<hex>``): the ACL file holds no password."""
    return "#" + hashlib.sha256(password.encode()).hexdigest()


def user_url(server_url: str, username: str, password: str) -> str:
    """``server_url`` (the Redis server's, any user's or none) as ``username`` connects with it."""
    parts = urlsplit(server_url)
    host = parts.hostname or "127.0.0.1"
    if ":" in host:  # an IPv6 literal: urlsplit took its brackets off (RFC 3986 §3.2.2)
        host = f"[{host}]"
    netloc = f"{quote(username, safe='')}:{quote(password, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def user_line(component: str, username: str, password: str, prefix: str) -> str:
    """One line of an ACL file: ``user <name> on #<sha256> <rules>``."""
    return f"user {username} on {password_hash(password)} {rules(component, prefix)}"


def setuser_args(component: str, password: str, prefix: str) -> list[str]:
    """Arguments of ``ACL SETUSER <name> ...`` creating (or resetting) the component's user."""
    return ["reset", "on", f">{password}", *rules(component, prefix).split(" ")]


#: The bundled Redis's probe user (the chart's readiness probe): PING only.
PROBE_RULES = "resetchannels -@all +ping"

#: What the bundled Redis's ``admin`` user (the operators', docs/runbook.md "Diagnosing the bundled
#: Redis") may run: the read-only diagnostics, by subcommand. No key pattern (no command that names a
#: key runs: GET, SCAN, MEMORY USAGE), no channel, nothing that writes, reads the users' password
#: hashes (ACL LIST, GETUSER), changes the configuration or the users, watches every command's
#: arguments (MONITOR), or ends Redis or its clients for all (FLUSH*, SHUTDOWN, CLIENT KILL/PAUSE).
#: Most of these sit in ``@admin``/``@dangerous``, so unlike the components' rules there is no
#: ``-@dangerous -@admin`` tail: ``-@all`` first and only what is named. ``ACL LOG`` (the refused
#: commands and keys behind a component's NOPERM) takes ``RESET`` too, which Redis cannot tell apart.
#: Two of them do show data, by design of the diagnostics: ``SLOWLOG GET`` the arguments of slow
#: commands (key names and values, up to 128 bytes each: rate-limit keys name subjects and client
#: addresses) and ``ACL LOG`` the refused keys; the runbook says so. Without them a slow or refused
#: command could not be told apart, so the admin password is an operator's secret like the others.
ADMIN_COMMANDS: tuple[str, ...] = (
    *CONNECTION_COMMANDS,
    "info",
    "dbsize",
    "slowlog|get",
    "slowlog|len",
    "client|list",
    "client|info",
    "memory|stats",
    "memory|doctor",
    "latency|latest",
    "latency|history",
    "latency|doctor",
    "acl|log",
    "acl|whoami",
)
ADMIN_RULES = "resetchannels -@all " + " ".join(f"+{command}" for command in ADMIN_COMMANDS)


def acl_file(
    usernames: Mapping[str, str],
    passwords: Mapping[str, str],
    prefix: str,
    *,
    probe_password: str | None = None,
    admin_password: str | None = None,
) -> str:
    """An ACL file (``--aclfile``): the default user off, the probe user (PING only) and the
    operators' admin user (:data:`ADMIN_RULES`) when given their passwords, then one user per
    component given (``usernames``: component → user name)."""
    lines = ["user default off resetchannels -@all"]
    if probe_password is not None:
        lines.append(f"user probe on {password_hash(probe_password)} {PROBE_RULES}")
    if admin_password is not None:
        lines.append(f"user admin on {password_hash(admin_password)} {ADMIN_RULES}")
    lines += [user_line(c, usernames[c], passwords[c], prefix) for c in COMPONENTS if c in usernames]
    return "\n".join(lines) + "\n"
