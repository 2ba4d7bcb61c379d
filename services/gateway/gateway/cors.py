"""CORS for the configured SPA origins. Preflights are answered here and never forwarded.

Only exact origins from ``CORS_ORIGINS`` get allow headers; any other origin gets none (the browser
then blocks the response). No credentials mode: the SPA sends access tokens (and DPoP proofs), not cookies.
"""

from __future__ import annotations

from collections.abc import Iterable

ALLOWED_REQUEST_HEADERS = frozenset(
    {
        "authorization",
        "dpop",  # the proof of RFC 9449
        "content-type",
        "x-request-id",
        "accept",
        "accept-language",
        "content-language",
        "if-match",
        "if-none-match",
        "idempotency-key",  # offered on createEntry and uploadEntries (the published document)
    }
)
# WWW-Authenticate and DPoP-Nonce: a DPoP client reads use_dpop_nonce and the nonce to retry with;
# Idempotent-Replayed: whether a create with an Idempotency-Key was this request's or an earlier one's
EXPOSED_HEADERS = (
    b"X-Request-Id, Retry-After, WWW-Authenticate, DPoP-Nonce, Location, Content-Disposition, "
    b"Idempotent-Replayed"
)
MAX_AGE = b"600"
VARY = (b"vary", b"Origin")


class Cors:
    def __init__(self, origins: Iterable[str]) -> None:
        self.origins = frozenset(origin.rstrip("/").encode("latin-1") for origin in origins)

    def allowed(self, origin: bytes | None) -> bool:
        return origin is not None and origin in self.origins

    def response_headers(self, origin: bytes | None) -> list[tuple[bytes, bytes]]:
        """Headers for an actual (non-preflight) API response."""
        if origin is not None and origin in self.origins:
            return [
                (b"access-control-allow-origin", origin),
                (b"access-control-expose-headers", EXPOSED_HEADERS),
                VARY,
            ]
        return [VARY]

    def preflight(
        self,
        origin: bytes | None,
        requested_method: bytes,
        requested_headers: bytes | None,
        methods: tuple[str, ...],
    ) -> tuple[list[tuple[bytes, bytes]] | None, str]:
        """Allow headers for a valid preflight, or ``None`` and why it is refused."""
        if origin is None or origin not in self.origins:
            return None, "The origin is not allowed to call this API."
        method = requested_method.decode("latin-1").upper()
        if method not in methods:
            return None, f"{method} is not allowed on this path."
        names = [
            name.strip().lower()
            for name in (requested_headers or b"").decode("latin-1").split(",")
            if name.strip()
        ]
        refused = [name for name in names if name not in ALLOWED_REQUEST_HEADERS]
        if refused:
            return None, f"Request header(s) not allowed: {', '.join(refused[:5])}."
        headers = [
            (b"access-control-allow-origin", origin),
            (b"access-control-allow-methods", ", ".join(methods).encode()),
            (b"access-control-max-age", MAX_AGE),
            (b"vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
        ]
        if names:
            headers.append((b"access-control-allow-headers", ", ".join(names).encode()))
        return headers, ""
