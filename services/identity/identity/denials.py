"""The provider's refusals on the audit trail, aggregated per window like every other denial.

The platform's rule is that every denial has a reason in a metric *and* on the audit trail; the
provider counts its refusals in its metrics (``identity_login_failures_total`` …) and here records them
with the kit's aggregation (:class:`svckit.denials.DenialRecorder`, wired by ``create_service_app
(denial_sink=…)`` to the provider's transactional outbox, which its :class:`svckit.outbox.OutboxRelay`
delivers to the audit service): one ``access.denied`` record per (status, reason, route, method,
address) and window, bounded in keys whatever a flood sends.

Every record is anonymous: the caller of a refused sign-in or client authentication did not prove who
it is, so the user name or client id it *claimed* is never named (as at the gateway, whose records of
unverified callers name nobody either), and nothing it sent — password, client secret, code, token —
is in a record. The address is the client's, resolved through ``IDENTITY_TRUSTED_PROXIES`` (the
provider is reached through an ingress, not through the gateway).
"""

from __future__ import annotations

from starlette.requests import Request
from svckit.denials import DenialRecorder

from .browser import client_address
from .settings import IdentitySettings

#: ``POST /login``: a wrong user name or password (or a disabled user)
INVALID_CREDENTIALS = "invalid_credentials"
#: ``POST /login``, the token and revocation endpoints: the address (or user) failed too often
THROTTLED = "throttled"
#: ``POST /login``, ``POST /authorize/decision``: the form's CSRF token did not verify
CSRF = "csrf"
#: the token and revocation endpoints: the client did not authenticate
INVALID_CLIENT = "invalid_client"
#: the token endpoint: an authorization code presented a second time (what it issued is revoked)
CODE_REPLAY = "code_replay"
#: the token endpoint: a rotated refresh token presented again (its family is revoked)
REFRESH_TOKEN_REUSE = "refresh_token_reuse"  # noqa: S105 - a reason, not a secret


def dpop_binding(binding: str) -> str:
    """The token endpoint: a ``code``, ``refresh_token`` or ``client`` bound to a DPoP key the request
    did not prove (``identity_dpop_binding_refusals_total{binding}``)."""
    return f"dpop_binding_{binding}"


def deny(request: Request, settings: IdentitySettings, status: int, reason: str) -> None:
    """Count one refusal of ``request`` for the trail (no I/O: the recorder's task writes it later)."""
    recorder: DenialRecorder | None = getattr(request.app.state, "denials", None)
    if recorder is not None:
        address = client_address(request, settings.trusted_proxy_networks)
        recorder.deny(request.scope, status, reason, address=address)
