"""Browser-facing security helpers: the session cookie, CSRF tokens and response headers.

* Session: a random 256-bit value in an HttpOnly, SameSite=Lax cookie (Secure over HTTPS); only its
  SHA-256 is stored server-side.
* CSRF: signed double-submit. A random value sits in its own HttpOnly cookie; forms carry
  HMAC(IDENTITY_SESSION_SECRET, purpose, value). A cross-site page can neither read the cookie nor
  compute the HMAC, and SameSite=Lax keeps the cookie off cross-site POSTs in the first place.
  The secret is a key ring (:mod:`svckit.keyring`) so that it rotates while the pods roll: a form
  rendered by a pod on one configuration is posted to a pod on the other, so the first key makes the
  tokens (``<kid>.<mac>``; an unnamed single key as before, ``<mac>``) and every key checks them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Iterable

from starlette.requests import Request
from starlette.responses import Response
from svckit.keyring import KeyRing
from svckit.proxies import Network, ProxyHeader, forwarded_client

SESSION_COOKIE = "tsp_idp_session"
CSRF_COOKIE = "tsp_idp_csrf"


def client_address(request: Request, trusted: tuple[Network, ...], header: ProxyHeader) -> str:
    """The address a request came from (the peer, or what a trusted proxy says in ``header``:
    :mod:`svckit.proxies`)."""
    peer = request.client.host if request.client else "unknown"
    return forwarded_client(peer, request.headers.getlist(header), trusted, header)[0]


def new_token() -> str:
    return secrets.token_urlsafe(32)


class CsrfSigner:
    def __init__(self, secret: bytes | KeyRing) -> None:
        ring = secret if isinstance(secret, KeyRing) else KeyRing.single(secret)
        self._ring = ring.derive(lambda key: hashlib.sha256(b"tsp-identity-csrf-v1" + key).digest())

    @staticmethod
    def _mac(key: bytes, cookie_value: str, purpose: str) -> bytes:
        mac = hmac.new(key, f"{purpose}\n{cookie_value}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=")

    def token(self, cookie_value: str, purpose: str) -> str:
        return self._ring.named(self._mac(self._ring.key, cookie_value, purpose).decode())

    def verify(self, cookie_value: str | None, purpose: str, submitted: str | None) -> bool:
        if not cookie_value or not submitted:
            return False
        return self._ring.verify(submitted, lambda key: self._mac(key, cookie_value, purpose))


def csrf_cookie_value(request: Request) -> tuple[str, bool]:
    """The CSRF cookie value, and whether it is new (and must be set on the response)."""
    current = request.cookies.get(CSRF_COOKIE)
    if current and 20 <= len(current) <= 100:
        return current, False
    return new_token(), True


def set_cookie(response: Response, name: str, value: str, *, secure: bool, max_age: int | None) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/", secure=secure, httponly=True, samesite="lax")


def clear_cookie(response: Response, name: str, *, secure: bool) -> None:
    response.delete_cookie(name, path="/", secure=secure, httponly=True, samesite="lax")


def page_headers(nonce: str, frame_ancestors: Iterable[str] = (), *, script: bool = False) -> dict[str, str]:
    """Headers for every HTML page: strict CSP, no framing except by the listed origins, no caching."""
    ancestors = " ".join(sorted(frame_ancestors)) or "'none'"
    csp = [
        "default-src 'none'",
        f"style-src 'nonce-{nonce}'",
        "img-src 'self' data:",
        "base-uri 'none'",
        f"frame-ancestors {ancestors}",
    ]
    if script:
        csp.append(f"script-src 'nonce-{nonce}'")
    headers = {
        "Content-Security-Policy": "; ".join(csp),
        "Cache-Control": "no-store",
        "Pragma": "no-cache",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
    }
    if ancestors == "'none'":
        headers["X-Frame-Options"] = "DENY"
    return headers
