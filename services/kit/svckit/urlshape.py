"""Whether a URL holding credentials (DATABASE_URL, REDIS_URL) reads as its author meant, checked
before any client library parses it.

A password must percent-encode ``/``, ``?``, ``#`` and ``@`` (RFC 3986 §3.2.1); base64 passwords hold
``/``. Unencoded, the URL's authority ends inside the password and the clients fail on the pieces:
asyncpg with ``invalid literal for int() with base 10: '<start of the password>'`` or ``bad query
field: '<rest of the password>@host…'``, redis-py with ``Port could not be cast to integer value as
'<…>'`` — messages that then reach a traceback on stderr and the service's log on every retry. So
the settings refuse such a URL at start-up with a reason that quotes nothing of it (this module's
messages are fixed text), before a client has the chance.
"""

from __future__ import annotations

import re

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_PORT = re.compile(r"[0-9]*")
#: ``fd00::5:5432``: an IPv6 literal (two colons at least, hex digits, maybe a dotted IPv4 tail) that
#: RFC 3986 §3.2.2 wants in brackets; no client can tell its port from its last group
_BARE_IPV6 = re.compile(r"[0-9A-Fa-f]*:[0-9A-Fa-f]*:[0-9A-Fa-f:.]*")
_ENCODE = "percent-encode '/', '?', '#' and '@' in the user name and password (%2F, %3F, %23, %40)"


def _stray_at(after: str) -> bool:
    """An '@' after an authority without one: the rest of a password whose '/' or '?' ended the
    authority early — unless it is the value of a ``user=`` or ``password=`` option
    (``?user=admin@server``: Azure's form; both clients take the password as an option too)."""
    path, _, query = after.partition("?")
    if "@" in path:
        return True
    return any("@" in field and not field.startswith(("user=", "password=")) for field in query.split("&"))


def unreadable(url: str) -> str | None:
    """``None`` when ``url``'s authority (``user:password@host:port[,host:port…]``) reads as one, else
    why not, in words that quote nothing of the URL."""
    scheme = _SCHEME.match(url)
    if scheme is None:
        return None  # the scheme check of the setting says what is wrong
    rest = url[scheme.end() :]
    if "#" in rest:
        return f"holds a '#': {_ENCODE}"
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, after = rest[:end], rest[end:]
    if authority.count("@") > 1 or (authority.count("@") == 0 and _stray_at(after)):
        return f"holds an '@' outside the user name and password: {_ENCODE}"
    hosts = authority.rpartition("@")[2]
    for host in hosts.split(",") if hosts else ():
        port = host.rpartition("]")[2] if host.startswith("[") else host
        if _BARE_IPV6.fullmatch(port):
            return "has an IPv6 address without brackets: write the IPv6 address in brackets ([fd00::5]:5432)"
        if port.startswith("[") or not _PORT.fullmatch(port.partition(":")[2]) or port.count(":") > 1:
            return f"has a host or port that cannot be read: {_ENCODE}"
    return None
