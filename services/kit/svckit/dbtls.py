"""TLS to PostgreSQL that works with a managed database: ``sslmode`` and ``sslrootcert`` as libpq means them.

asyncpg alone looks for ``~/.postgresql/root.crt`` when ``sslmode=verify-ca|verify-full`` names no CA
file, and knows nothing of libpq's ``sslrootcert=system``; in an image with ``HOME=/tmp`` that made
every ``verify-full`` URL fail. So the kit builds the ``ssl.SSLContext`` itself and hands it to every
asyncpg connection (the pool, the migration command, the outbox listener, the identity admin
commands) — one rule everywhere:

* the mode is ``DB_SSLMODE`` when set (a deployment can insist on ``verify-full`` whatever URL its
  Secret holds), else the URL's ``sslmode``, else ``prefer``;
* the CA comes from ``DB_SSLROOTCERT``, else the URL's ``sslrootcert``, else ``PGSSLROOTCERT``, else
  ``~/.postgresql/root.crt`` when it exists. ``system`` means the image's trust store (Debian's
  ``ca-certificates`` bundle, which the images carry; ``SSL_CERT_FILE``/``SSL_CERT_DIR`` move it);
* ``verify-full`` checks the chain and that the certificate names the host; ``verify-ca`` the chain
  only; ``require`` with a CA behaves as ``verify-ca`` (libpq's rule); ``disable``/``allow``/
  ``prefer``/``require`` without a CA are left to asyncpg exactly as before;
* anything contradictory is a configuration error at start-up, one line naming the variable: a
  verifying mode with no CA anywhere, ``system`` with less than ``verify-full`` (libpq refuses it
  too), ``DB_SSLROOTCERT`` with a mode that would not use it, a CA file that cannot be read.

:func:`describe_connect_error` turns a failed connection into a short reason that is safe to show
in ``/readyz`` and in the migration Job's log (no host names, no credentials); a TLS refusal and a
connection pooler refusing the session's start-up settings are named as such.
"""

from __future__ import annotations

import os
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, urlsplit

import asyncpg

from .health import CheckFailed

SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
SSLMODES: tuple[SslMode, ...] = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
VERIFYING = ("verify-ca", "verify-full")
SYSTEM = "system"
# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH: their messages quote the
# host, which /readyz must not show.
NAME_MISMATCH = frozenset({62, 64})


class DatabaseTlsError(ValueError):
    """The database URL and DB_SSLROOTCERT do not describe a TLS set-up that can work."""


@dataclass(frozen=True)
class DatabaseTls:
    """What the URL and the environment ask for, resolved: the mode, and the CA (file, ``system``)."""

    sslmode: SslMode
    rootcert: str | None
    certfile: str | None = None
    keyfile: str | None = None
    imposed: bool = False  # the mode came from DB_SSLMODE, not from the URL

    @property
    def verifies(self) -> bool:
        return self.rootcert is not None and self.sslmode in (*VERIFYING, "require")

    def describe(self) -> str:
        return f"sslmode={self.sslmode}" + (f", sslrootcert={self.rootcert}" if self.rootcert else "")

    def context(self) -> ssl.SSLContext | SslMode | None:
        """asyncpg's ``ssl=``: a verifying context; the mode itself when it was imposed by
        ``DB_SSLMODE`` without verification; ``None`` to leave the URL's sslmode to asyncpg."""
        if not self.verifies:
            return self.sslmode if self.imposed else None
        assert self.rootcert is not None
        context = verifying_context(self.rootcert, check_hostname=self.sslmode == "verify-full")
        if self.certfile:
            context.load_cert_chain(self.certfile, keyfile=self.keyfile)
        return context


def verifying_context(ca: str, *, check_hostname: bool) -> ssl.SSLContext:
    """A client context that trusts ``ca`` alone (a PEM file), or the image's store (``system``):
    never both; the certificate required, its host name checked when asked (Redis uses it too,
    :mod:`svckit.redistls`)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # TLS 1.2 at least
    context.check_hostname = check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    if ca == SYSTEM:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        context.load_verify_locations(cafile=ca)
    return context


def _query(dsn: str) -> dict[str, str]:
    return {key: values[-1] for key, values in parse_qs(urlsplit(dsn).query).items()}


def _default_rootcert() -> str | None:
    if env := os.environ.get("PGSSLROOTCERT"):
        return env
    home_ca = Path.home() / ".postgresql" / "root.crt"
    return str(home_ca) if home_ca.is_file() else None


def resolve(dsn: str, rootcert_override: str = "", sslmode_override: str = "") -> DatabaseTls:
    """The TLS set-up of ``dsn`` with ``DB_SSLROOTCERT`` and ``DB_SSLMODE``, or
    :class:`DatabaseTlsError` saying what to fix."""
    query = _query(dsn)
    mode_source = "DB_SSLMODE" if sslmode_override else "DATABASE_URL sslmode"
    requested = sslmode_override or query.get("sslmode", "prefer")
    if requested not in SSLMODES:
        raise DatabaseTlsError(f"{mode_source} must be one of {', '.join(SSLMODES)}, not {requested!r}")
    sslmode: SslMode = requested
    if rootcert_override and sslmode not in (*VERIFYING, "require"):
        raise DatabaseTlsError(
            f"DB_SSLROOTCERT is set but the sslmode is {sslmode}, which never checks the server's "
            "certificate: use sslmode=verify-full"
        )
    rootcert = rootcert_override or query.get("sslrootcert") or None
    if rootcert is None and sslmode in VERIFYING:
        rootcert = _default_rootcert()
        if rootcert is None:
            raise DatabaseTlsError(
                f"sslmode={sslmode} needs the server's CA but none is named: add sslrootcert=<file> or "
                "sslrootcert=system to DATABASE_URL, or set DB_SSLROOTCERT (chart: externalDatabase.caBundle)"
            )
    if rootcert == SYSTEM and sslmode != "verify-full":
        raise DatabaseTlsError(f"sslrootcert=system needs sslmode=verify-full, not {sslmode}")
    if rootcert and rootcert != SYSTEM and sslmode in (*VERIFYING, "require"):
        source = "DB_SSLROOTCERT" if rootcert_override else "DATABASE_URL sslrootcert"
        if not os.access(rootcert, os.R_OK) or not Path(rootcert).is_file():
            raise DatabaseTlsError(f"{source}: CA file {rootcert} does not exist or cannot be read")
    tls = DatabaseTls(
        sslmode,
        rootcert,
        query.get("sslcert") or None,
        query.get("sslkey") or None,
        imposed=bool(sslmode_override),
    )
    try:
        tls.context()
    except (ssl.SSLError, OSError) as exc:
        raise DatabaseTlsError(f"the database CA ({tls.describe()}) cannot be loaded: {exc}") from None
    return tls


def client_ssl(
    dsn: str, rootcert_override: str = "", sslmode_override: str = ""
) -> ssl.SSLContext | SslMode | None:
    """``ssl=`` for ``asyncpg.connect``/``create_pool`` (see :meth:`DatabaseTls.context`)."""
    return resolve(dsn, rootcert_override, sslmode_override).context()


def describe_connect_error(exc: BaseException, tls: DatabaseTls | None = None) -> str:
    """Why connecting failed, in words safe for ``/readyz`` and logs (no host names or credentials)."""
    where = f" ({tls.describe()})" if tls is not None else ""
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code in NAME_MISMATCH:
            reason = "the certificate does not name the database host"
        else:
            reason = exc.verify_message or exc.reason or "verification failed"
        return f"TLS: the database server's certificate was refused: {reason}{where}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: the handshake with the database failed: {exc.reason or type(exc).__name__}{where}"
    if isinstance(exc, ConnectionError) and "rejected SSL upgrade" in str(exc):
        return f"TLS: the database server does not offer TLS{where}"
    if isinstance(exc, CheckFailed):
        return str(exc)  # its words are already safe to publish (svckit.db's "no connection slot")
    if parameter := refused_startup_parameter(exc):
        return (
            f"a connection pooler refused the session's settings (unsupported startup parameter: "
            f"{parameter}): the services connect to PostgreSQL directly, not through PgBouncer "
            '(docs/runbook.md, "Connection poolers")'
        )
    return type(exc).__name__


#: PgBouncer's refusal of a start-up parameter it does not pass on (``search_path``, ``lock_timeout``…)
_UNSUPPORTED_PARAMETER = re.compile(r"unsupported startup parameter: ([a-z_]{1,63})")


def refused_startup_parameter(exc: BaseException) -> str | None:
    """The parameter a pooler in front of PostgreSQL refused at connection start-up (PgBouncer: a
    ``ProtocolViolationError`` naming it), or None. Why it matters: every connection of the kit sends
    its session settings at start-up (:meth:`svckit.db.Database._connect_options`), so such a pooler
    refuses them all, and waiting never helps."""
    if not isinstance(exc, asyncpg.ProtocolViolationError):
        return None
    found = _UNSUPPORTED_PARAMETER.search(str(exc))
    return found.group(1) if found else None
