"""TLS to Redis as strict as the database's (:mod:`svckit.dbtls`): a managed Redis with in-transit
encryption (``rediss://``) is verified against the CA the deployment names, and nothing in a URL can
quietly switch the check off.

What redis-py does alone, and why the kit does not leave it there:

* ``rediss://`` verifies the chain against the system store *plus* an ``ssl_ca_certs`` file: a
  deployment that names its provider's private CA still trusts every public CA. The kit trusts only
  the CA named (``REDIS_TLS_CA_FILE``), or the image's store when it says ``system``
  (:class:`PinnedSSLConnection`).
* the URL's query string wins over the client's options (``?ssl_cert_reqs=none``,
  ``?ssl_check_hostname=false``): a Secret edited by hand turned verification off without a trace.
  The kit refuses such a URL at start-up, one line naming what to use instead
  (``REDIS_TLS_VERIFY=ca`` for a server whose certificate does not name the host the pods use).
* ``REDIS_TLS_CA_FILE`` with a ``redis://`` URL would be ignored: refused as contradictory, as
  ``DB_SSLROOTCERT`` with ``sslmode=disable`` is.

The whole rule lives in :func:`resolve`; :class:`RedisTls` gives the client's options.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from redis.asyncio.connection import RedisSSLContext, SSLConnection

from .dbtls import SYSTEM, verifying_context

Verify = Literal["full", "ca"]
#: URL query options that would loosen or replace the kit's verification
_LOOSENING = ("ssl_cert_reqs", "ssl_check_hostname", "ssl_ca_certs", "ssl_ca_path", "ssl_ca_data")


class RedisTlsError(ValueError):
    """``REDIS_URL``, ``REDIS_TLS_CA_FILE`` and ``REDIS_TLS_VERIFY`` do not describe a set-up that can
    work (a ValueError: the settings report it as a configuration error naming the variable)."""


@dataclass(frozen=True)
class RedisTls:
    """A ``rediss://`` URL's verification, resolved: the CA (a file, or ``system``) and whether the
    certificate must name the host."""

    ca_file: str
    verify: Verify

    def context(self) -> ssl.SSLContext:
        """Trusts only the CA named (or the image's store): never both."""
        return verifying_context(self.ca_file, check_hostname=self.verify == "full")

    def client_options(self) -> dict[str, Any]:
        """Options for ``redis.asyncio.Redis.from_url``: the kit's connection class with this context."""
        return {"connection_class": PinnedSSLConnection, "ssl_context_override": self.context()}


class PinnedSSLConnection(SSLConnection):
    """redis-py's TLS connection with the kit's own :class:`ssl.SSLContext` (:meth:`RedisTls.context`)
    in place of the one redis-py builds from the system store and its ``ssl_*`` options."""

    def __init__(self, *, ssl_context_override: ssl.SSLContext, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ssl_context = _FixedContext(ssl_context_override)


class _FixedContext(RedisSSLContext):
    """redis-py's context holder answering with the kit's context; its fields (read by redis-py's
    properties) say what that context does."""

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__(cert_reqs="required", check_hostname=context.check_hostname)
        self.context = context

    def get(self) -> ssl.SSLContext:
        assert self.context is not None
        return self.context


def resolve(url: str, ca_file: str = "", verify: str = "full") -> RedisTls | None:
    """The verification of ``url`` (None: not a TLS URL), or :class:`RedisTlsError` saying what to fix."""
    if verify not in ("full", "ca"):
        raise RedisTlsError(f"REDIS_TLS_VERIFY must be full or ca, not {verify!r}")
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        if ca_file:
            raise RedisTlsError(
                "REDIS_TLS_CA_FILE is set but REDIS_URL is not rediss://: the connection would not use TLS"
            )
        return None
    query = parse_qs(parts.query)
    if loosened := sorted(set(query) & set(_LOOSENING)):
        raise RedisTlsError(
            f"REDIS_URL must not set {', '.join(loosened)}: the CA is REDIS_TLS_CA_FILE (a file or "
            "system) and a certificate that does not name the host needs REDIS_TLS_VERIFY=ca"
        )
    ca = ca_file or SYSTEM
    if ca != SYSTEM and (not Path(ca).is_file() or not os.access(ca, os.R_OK)):
        raise RedisTlsError(f"REDIS_TLS_CA_FILE: CA file {ca} does not exist or cannot be read")
    tls = RedisTls(ca, verify)  # type: ignore[arg-type]
    try:
        tls.context()
    except (ssl.SSLError, OSError) as exc:
        raise RedisTlsError(f"REDIS_TLS_CA_FILE: the CA in {ca} cannot be loaded: {exc}") from None
    return tls
