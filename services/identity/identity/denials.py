"""The provider's refusals on the audit trail, aggregated per window like every other denial.

The platform's rule is that every denial has a reason in a metric *and* on the audit trail; the
provider counts its refusals in its metrics (``identity_login_failures_total`` …) and here records them
with the kit's aggregation (:class:`svckit.denials.DenialRecorder`, wired by ``create_service_app
(denial_sink=…)`` to the provider's transactional outbox, which its :class:`svckit.outbox.OutboxRelay`
delivers to the audit service): one ``access.denied`` record per (status, reason, route, method,
address) and window, bounded in keys whatever a flood sends.

Records are anonymous: the caller of a refused sign-in, client authentication, DPoP proof or
``/userinfo`` token did not prove who it is, so the user name or client id it *claimed* is never named
(as at the gateway, whose records of unverified callers name nobody either), and nothing it sent —
password, client secret, code, token, proof — is in a record. The one exception is :data:`CODE_LIMIT`:
that caller's session verified, so the record names the signed-in user (the kit's rule: the actor is
the caller when its identity verified). The address is the client's, resolved through
``IDENTITY_TRUSTED_PROXIES`` (the provider is reached through an ingress, not through the gateway).

Unauthenticated callers reach most of these at request rate; they cannot grow the outbox or the trail
at that rate: every reason is a fixed label (never text from the request), and the kit's windows keep
one record per key and window, at most ``AUDIT_DENIAL_MAX_KEYS`` keys a window whatever a flood sends.

Not a denial, so not recorded: the ``dpop_nonce`` step (``use_dpop_nonce``, RFC 9449 §8/§9). With
``DPOP_NONCES`` every DPoP client gets it on its first request and again whenever the nonce rotates,
and retries at once with the nonce it was handed; recording it would fill the trail with well-behaved
clients and bury the refusals. It is counted in ``identity_dpop_proof_refusals_total{reason="dpop_nonce"}``.
"""

from __future__ import annotations

from starlette.requests import Request
from svckit.denials import DenialRecorder
from svckit.identity import Identity

from .browser import client_address
from .settings import IdentitySettings

#: ``POST /login``: a wrong user name or password (or a disabled user)
INVALID_CREDENTIALS = "invalid_credentials"
#: ``POST /login``, the token and revocation endpoints: the address (or user) failed too often
THROTTLED = "throttled"
#: the token and revocation endpoints: the address's failed requests used up its budget
#: (``TOKEN_MAX_FAILURES_PER_ADDRESS``, ``identity_token_throttled_total{reason="token_failures"}``)
TOKEN_FAILURES = "token_failures"  # noqa: S105 - a reason, not a secret
#: ``POST /login``, ``POST /authorize/decision``: the form's CSRF token did not verify
CSRF = "csrf"
#: the token and revocation endpoints: the client did not authenticate
INVALID_CLIENT = "invalid_client"
#: the token endpoint: an authorization code presented a second time (what it issued is revoked)
CODE_REPLAY = "code_replay"
#: the token endpoint: a rotated refresh token presented again (its family is revoked)
REFRESH_TOKEN_REUSE = "refresh_token_reuse"  # noqa: S105 - a reason, not a secret
#: ``/authorize``: the signed-in user had as many codes (or implicit answers) issued in the window as
#: ``AUTHORIZE_MAX_CODES_PER_USER`` allows (``identity_authorize_throttled_total``)
CODE_LIMIT = "code_limit"

# ``/userinfo``: the access token is refused (``identity_userinfo_refusals_total{reason}``); besides
# these, the verification's own reasons (:attr:`identity.tokens.InvalidAccessToken.reason`: ``malformed``,
# ``unknown_kid``, ``expired`` …). Refused DPoP proofs are recorded under the proof's reason
# (``dpop_htm``, ``dpop_ath`` …: :class:`svckit.dpop.ProofError`) at ``/userinfo`` and the token endpoint.
#: no access token in ``Authorization`` (another scheme, or none)
MISSING_TOKEN = "missing_token"  # noqa: S105 - a reason, not a secret
#: the token was revoked (sign-out, code replay, refresh-token reuse, ``/oauth/revoke``)
REVOKED = "revoked"
#: the token's user was deleted or disabled
USER_GONE = "user_gone"
#: a DPoP-bound token sent as a Bearer token (RFC 9449 §7.1)
DPOP_BOUND_BEARER = "dpop_bound_bearer"
#: a DPoP-bound token sent with the DPoP scheme but without a proof
DPOP_PROOF_MISSING = "dpop_proof_missing"
#: a token bound to no key sent with the DPoP scheme
DPOP_UNBOUND_TOKEN = "dpop_unbound_token"  # noqa: S105 - a reason, not a secret


def dpop_binding(binding: str) -> str:
    """The token endpoint: a ``code``, ``refresh_token`` or ``client`` bound to a DPoP key the request
    did not prove; ``/oauth/revoke``: a public client's ``refresh_token`` or ``access_token`` bound to
    a key the request did not prove (``identity_dpop_binding_refusals_total{binding}``)."""
    return f"dpop_binding_{binding}"


def deny(
    request: Request,
    settings: IdentitySettings,
    status: int,
    reason: str,
    identity: Identity | None = None,
) -> None:
    """Count one refusal of ``request`` for the trail (no I/O: the recorder's task writes it later);
    ``identity``: the caller, only when it verified (a signed-in user's session)."""
    recorder: DenialRecorder | None = getattr(request.app.state, "denials", None)
    if recorder is not None:
        address = client_address(request, settings.trusted_proxy_networks, settings.identity_proxy_header)
        recorder.deny(request.scope, status, reason, identity, address=address)
