"""Machine-facing endpoints: discovery, JWKS, token, revocation (RFC 7009), userinfo.

DPoP (RFC 9449) at the token endpoint: a ``DPoP`` proof is verified here, before Authlib runs, with
the kit's :mod:`svckit.dpop` (the checks the gateway makes too; ``htu`` is the published token
endpoint, ``jti`` used once across replicas), so that a ``use_dpop_nonce`` answer or a bad proof
never uses up a code or a refresh token; the grants then bind what they issue to the proof's key
(:class:`identity.oauth.SenderConstrained`). ``/userinfo`` accepts DPoP-bound tokens with their proof.
Every refused proof (but the ``dpop_nonce`` step: :mod:`identity.denials`) and every token ``/userinfo``
refuses is a denial: counted by reason and recorded for the audit trail.

The token and revocation endpoints run Authlib inside one database transaction per request (see
:mod:`identity.oauth`): a code exchange uses up the code, records the access token and saves the
refresh token together, or not at all. Revocations made on the way (a replayed code, a reused refresh
token, withdrawn consent, ``/oauth/revoke`` itself) are published to the gateways after the commit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio.to_thread
from prometheus_client import Counter
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from svckit.body import NotAccepted, content_charset, parse_json
from svckit.db import Database
from svckit.dpop import NONCE_HEADER, ProofError, ProofVerifier, ReplayGuard
from svckit.problems import Problem

from . import denials, store
from .authorize import RESPONSE_MODES
from .bodies import FORM_MEDIA_TYPE, coded_refusal, media_type, read_body, read_form
from .browser import client_address
from .keystore import KeyStore
from .oauth import CURRENT_DB, IdentityServer, Result, basic_credentials, quotable, unquotable_parameter
from .oauth import Request as OAuthRequest
from .passwords import client_secrets, settled_in_request
from .revocation import RevocationPublisher
from .scopes import ALL_SCOPES
from .settings import IdentitySettings
from .throttle import FailureThrottle
from .tokens import TOKEN_REASONS, InvalidAccessToken, user_info, verify_access_token

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

dpop_refusals = Counter(
    "identity_dpop_proof_refusals_total",
    "DPoP proofs refused at the token endpoint and /userinfo, by reason (dpop_nonce is the nonce step).",
    ["reason"],
)
userinfo_refusals = Counter(
    "identity_userinfo_refusals_total",
    "Access tokens /userinfo refused, by reason (refused DPoP proofs: identity_dpop_proof_refusals_total).",
    ["reason"],
)
#: what /userinfo refuses, 0 from the start (a panel shows "none", not "no data")
USERINFO_REASONS = (
    denials.MISSING_TOKEN,
    *TOKEN_REASONS,
    denials.REVOKED,
    denials.USER_GONE,
    denials.DPOP_BOUND_BEARER,
    denials.DPOP_PROOF_MISSING,
    denials.DPOP_UNBOUND_TOKEN,
)
for _reason in USERINFO_REASONS:
    userinfo_refusals.labels(_reason)
dpop_refusals.labels("dpop_nonce")  # the series exists from the start too
client_auth_throttled = Counter(
    "identity_client_auth_throttled_total",
    "Token and revocation requests refused because their address failed client authentication too often.",
)


def discovery_document(s: IdentitySettings) -> dict[str, Any]:
    return {
        "issuer": s.identity_issuer,
        "authorization_endpoint": s.url("authorize"),
        "token_endpoint": s.url("oauth/token"),
        "userinfo_endpoint": s.url("userinfo"),
        "jwks_uri": s.url(".well-known/jwks.json"),
        "end_session_endpoint": s.url("oidc/logout"),
        "revocation_endpoint": s.url("oauth/revoke"),
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "scopes_supported": list(ALL_SCOPES),
        "response_types_supported": ["code", "id_token token", "token id_token", "id_token"],
        "response_modes_supported": list(RESPONSE_MODES),
        "authorization_response_iss_parameter_supported": True,  # RFC 9207 (authorize.Delivery)
        "grant_types_supported": ["authorization_code", "implicit", "client_credentials", "refresh_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [s.signing_alg],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "code_challenge_methods_supported": ["S256"],
        "dpop_signing_alg_values_supported": list(s.dpop_algorithms),
        "claims_supported": [
            "sub",
            "iss",
            "aud",
            "exp",
            "iat",
            "auth_time",
            "nonce",
            "azp",
            "at_hash",
            "name",
            "nickname",
            "preferred_username",
            "email",
            "email_verified",
        ],
        "prompt_values_supported": ["none", "login", "consent"],
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
        "claims_parameter_supported": False,
        "frontchannel_logout_supported": False,
    }


def oauth_error(status: int, error: str, description: str, headers: dict[str, str] | None = None) -> Response:
    body = {"error": error, "error_description": description}
    return JSONResponse(body, status_code=status, headers={**NO_STORE, **(headers or {})})


async def _token_params(request: Request) -> list[tuple[str, str]] | Response:
    """Form (RFC 6749) or JSON (as Auth0 also accepts) body to parameter pairs. A body in a content
    coding is the kit's 415 (``Accept-Encoding: identity``), a form Starlette will not parse (more than
    1,000 fields) its 400: both answered as OAuth errors (§5.2), not as the kit's problem documents.
    A parameter's name is the client's input: it is quoted (:func:`identity.oauth.quotable`)."""
    refusal = coded_refusal(request)
    if refusal is not None:
        return oauth_error(refusal.status, "invalid_request", refusal.detail or "", refusal.headers)
    sent = media_type(request)  # any other (multipart too) is refused unread, below
    if sent == FORM_MEDIA_TYPE:
        try:
            form = await read_form(request)
        except HTTPException as refused:  # Starlette's MultiPartException: "Too many fields …"
            return oauth_error(400, "invalid_request", quotable(refused.detail))
        except Problem as refused:  # a charset the form is not read in (415), or not in its charset
            return oauth_error(
                refused.status, "invalid_request", quotable(refused.detail or ""), refused.headers
            )
        pairs = [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
        seen: set[str] = set()
        for name, _ in pairs:
            # RFC 6749 §3.2: no parameter more than once (Authlib's checks and this service's own code
            # would otherwise read different copies of one: the first, or the last)
            if name in seen:
                return oauth_error(
                    400, "invalid_request", f"The parameter '{quotable(name)}' is sent more than once."
                )
            seen.add(name)
        return pairs
    if sent == "application/json":
        charset = content_charset(request)
        if charset is not None and charset not in ("utf-8", "utf8"):
            # as every service reads JSON (svckit.body.read_json): never bytes of another charset read
            # as UTF-8 (a UTF-16 body was "not valid JSON", a Latin-1 one read as if it were UTF-8)
            return oauth_error(
                415,
                "invalid_request",
                "A JSON body is UTF-8 (RFC 8259); send charset=utf-8 or no charset.",
                {"Accept": f"{FORM_MEDIA_TYPE}, application/json"},
            )
        try:
            document = parse_json(await read_body(request))
        except NotAccepted:
            return oauth_error(400, "invalid_request", "The body is not valid JSON.")
        if not isinstance(document, dict) or not all(
            isinstance(v, str | int) and not isinstance(v, bool) for v in document.values()
        ):
            return oauth_error(400, "invalid_request", "The JSON body must be an object of strings.")
        return [(str(k), str(v)) for k, v in document.items()]
    return oauth_error(
        400,
        "invalid_request",
        "Send the parameters as application/x-www-form-urlencoded (or application/json).",
    )


class _Refused(Exception):
    """A refused token or revocation request: raised to roll its transaction back."""

    def __init__(self, result: Result) -> None:
        super().__init__(result.status)
        self.result = result


def _bearer_challenge(error: str | None = None, description: str | None = None) -> dict[str, str]:
    value = 'Bearer realm="userinfo"'
    if error:
        value += f', error="{error}"'
    if description:
        value += f', error_description="{description}"'
    return {"WWW-Authenticate": value}


def presented_secrets(request: Request, params: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (client id, secret) pairs a token or revocation request presents, as Authlib reads them:
    HTTP Basic (``client_secret_basic``), then the form's ``client_id`` and ``client_secret``
    (``client_secret_post``)."""
    presented = []
    basic = basic_credentials(request.headers)  # form-urlencoded inside, as client_secret_basic reads it
    if basic is not None and all(basic):
        presented.append(basic)
    form = dict(params)
    if form.get("client_id") and form.get("client_secret"):
        presented.append((form["client_id"], form["client_secret"]))
    return presented


def _json_result(result: Result) -> Response:
    headers = {**NO_STORE, **dict(result.headers)}
    headers.pop("Content-Type", None)
    return JSONResponse(result.body, status_code=result.status, headers=headers)


class ProtocolEndpoints:
    """Discovery, JWKS, ``/oauth/token``, ``/oauth/revoke`` and ``/userinfo``."""

    def __init__(
        self,
        settings: IdentitySettings,
        database: Database,
        keys: KeyStore,
        server: IdentityServer,
        client_auth_throttle: FailureThrottle,
        publisher: RevocationPublisher,
        proofs: ProofVerifier,
        replays: ReplayGuard,
    ) -> None:
        self.settings = settings
        self.database = database
        self.keys = keys
        self.server = server
        self.client_auth_throttle = client_auth_throttle
        self.publisher = publisher
        self.proofs = proofs
        self.replays = replays

    def _nonce_headers(self) -> dict[str, str]:
        nonces = self.proofs.nonces
        return {NONCE_HEADER: nonces.current()} if nonces is not None else {}

    async def _proof(
        self,
        request: Request,
        url: str,
        status: int,
        access_token: str | None = None,
        jkt: str | None = None,
    ) -> str | ProofError | None:
        """The thumbprint of the key a valid ``DPoP`` proof demonstrates; ``None`` without a proof. A
        refused proof is counted and, unless it only lacked the nonce (the protocol's retry step, not a
        denial), recorded for the trail as answered with ``status``."""
        values = request.headers.getlist("dpop")
        if not values:
            return None
        if len(values) > 1:
            error = ProofError("dpop_multiple", "Send exactly one DPoP header.")
        else:
            try:
                proof = self.proofs.verify(
                    values[0], method=request.method, url=url, access_token=access_token, jkt=jkt
                )
            except ProofError as exc:
                error = exc
            else:
                if await self.replays.first_use(proof):
                    return proof.jkt
                error = ProofError("dpop_replay", "This DPoP proof was used before; make one per request.")
        dpop_refusals.labels(error.reason).inc()
        if not error.use_nonce:
            denials.deny(request, self.settings, status, error.reason)
        return error

    async def openid_configuration(self, request: Request) -> Response:
        document = discovery_document(self.settings)
        return JSONResponse(document, headers={"Cache-Control": "public, max-age=300"})

    async def jwks(self, request: Request) -> Response:
        await self.keys.refresh_if_stale(self.database.pool)
        return JSONResponse(self.keys.jwks(), headers={"Cache-Control": "public, max-age=60"})

    async def _in_transaction(self, endpoint: str, oreq: OAuthRequest) -> Result:
        """Run Authlib on one transaction; publish what it revoked once that committed.

        Authlib answers a refusal instead of raising, after the grant may already have used up the
        code or refresh token (checks such as the PKCE verifier, the client and the scope come after
        the lookup): a refusal is rolled back, unless it revoked something (``commit_refusal``)."""
        try:
            async with self.database.transaction() as conn:
                oreq.db = conn
                current = CURRENT_DB.set(conn)  # copied into the worker thread with the rest of the context
                try:
                    if endpoint == "token":
                        result: Result = await anyio.to_thread.run_sync(
                            self.server.create_token_response, oreq
                        )
                    else:
                        result = await anyio.to_thread.run_sync(
                            self.server.create_endpoint_response, endpoint, oreq
                        )
                finally:
                    CURRENT_DB.reset(current)
                if result.status >= 400 and not oreq.commit_refusal:
                    raise _Refused(result)
        except _Refused as refused:
            return refused.result
        await self.publisher.publish(oreq.revoked_tokens)
        return result

    async def token(self, request: Request) -> Response:
        await self.keys.refresh_if_stale(self.database.pool)
        params = await _token_params(request)
        if isinstance(params, Response):
            return params
        bad = unquotable_parameter(params) or next((k for k, v in params if not store.storable(v)), None)
        if bad is not None:
            return oauth_error(
                400,
                "invalid_request",
                f"The {quotable(bad)} parameter holds characters that are not allowed.",
            )
        token_url = self.settings.url("oauth/token")

        async def run() -> Result | Response:
            proof = await self._proof(request, token_url, 400)
            if isinstance(proof, ProofError):  # 400 (RFC 9449 §5): nothing was used up
                headers = self._nonce_headers() if proof.use_nonce else {}
                return oauth_error(400, proof.error, proof.description, headers)
            oreq = OAuthRequest("POST", token_url, request.headers, [], params)
            oreq.dpop_jkt = proof
            result = await self._in_transaction("token", oreq)
            if oreq.denial is not None:  # a replayed code, a reused refresh token, a DPoP binding
                denials.deny(request, self.settings, result.status, oreq.denial)
            if proof is not None:
                result.headers.extend(self._nonce_headers().items())  # RFC 9449 §8.2: the next nonce
            return result

        return await self._authenticating_client(request, params, run)

    async def revoke(self, request: Request) -> Response:
        """RFC 7009 token revocation, through Authlib's endpoint (client authentication included)."""
        await self.keys.refresh_if_stale(self.database.pool)
        params = await _token_params(request)
        if isinstance(params, Response):
            return params
        if any(not store.storable(v) for _, v in params) or unquotable_parameter(params):
            return oauth_error(400, "invalid_request", "A parameter holds characters that are not allowed.")
        revoke_url = self.settings.url("oauth/revoke")

        async def run() -> Result | Response:
            # a DPoP-bound refresh token is revoked only with a proof by its key (oauth.Revocation)
            proof = await self._proof(request, revoke_url, 400)
            if isinstance(proof, ProofError):  # 400, as at the token endpoint: nothing was revoked
                headers = self._nonce_headers() if proof.use_nonce else {}
                return oauth_error(400, proof.error, proof.description, headers)
            oreq = OAuthRequest("POST", revoke_url, request.headers, [], params)
            oreq.dpop_jkt = proof
            result = await self._in_transaction("revocation", oreq)
            if oreq.denial is not None:  # a refresh token bound to a key the request did not prove
                denials.deny(request, self.settings, result.status, oreq.denial)
            if proof is not None:
                result.headers.extend(self._nonce_headers().items())
            return result

        return await self._authenticating_client(request, params, run)

    async def _authenticating_client(
        self,
        request: Request,
        params: list[tuple[str, str]],
        run: Callable[[], Awaitable[Result | Response]],
    ) -> Response:
        """``run`` (where Authlib authenticates the client) within the address's budget of failed
        client authentications (:class:`FailureThrottle`), shared by the token and revocation
        endpoints: 429 once it is used up."""
        address = client_address(request, self.settings.trusted_proxy_networks)
        presented = presented_secrets(request, params)
        presents_secret = bool(presented)
        verdict = await self.client_auth_throttle.begin(address, presents_secret=presents_secret)
        if not verdict.allowed:
            client_auth_throttled.inc()
            denials.deny(request, self.settings, 429, denials.THROTTLED)
            return oauth_error(
                429,
                "too_many_attempts",
                f"Too many failed client authentications; retry in {verdict.retry_after} seconds.",
                {"Retry-After": str(verdict.retry_after)},
            )
        failed = False
        try:
            with settled_in_request():
                for client_id, secret in presented:
                    await self._check_secret(client_id, secret)
                result = await run()
            if isinstance(result, Response):
                return result
            failed = isinstance(result.body, dict) and result.body.get("error") == "invalid_client"
            if failed:
                denials.deny(request, self.settings, result.status, denials.INVALID_CLIENT)
            return _json_result(result)
        finally:
            await self.client_auth_throttle.end(address, presents_secret=presents_secret, failed=failed)

    async def _check_secret(self, client_id: str, secret: str) -> None:
        """A presented client secret checked before Authlib's transaction (its verdict settled for the
        request: :func:`settled_in_request`); the client is read on a connection held only for that."""
        client = await store.get_client(self.database.pool, client_id)
        if client is not None and not client.is_public:
            await anyio.to_thread.run_sync(client_secrets.verify_any, client.secret_hashes, secret)

    async def userinfo(self, request: Request) -> Response:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        scheme = scheme.lower()
        token = credentials.strip()
        if scheme not in ("bearer", "dpop") or not token:
            self._refused(request, denials.MISSING_TOKEN)
            return oauth_error(
                401, "invalid_request", "Send the access token as a Bearer token.", _bearer_challenge()
            )
        await self.keys.refresh_if_stale(self.database.pool)
        try:
            claims = verify_access_token(self.settings, self.keys, token)
        except InvalidAccessToken as exc:
            self._refused(request, exc.reason)
            return _invalid_token("The access token is invalid or expired")
        cnf = claims.get("cnf")
        jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
        if scheme == "bearer" and jkt:  # RFC 9449 §7.1: a bound token is never a bearer token
            self._refused(request, denials.DPOP_BOUND_BEARER)
            return _invalid_token("The access token is DPoP-bound: send it with the DPoP scheme and a proof")
        if scheme == "dpop":
            proof = await self._proof(request, self.settings.url("userinfo"), 401, token, str(jkt or ""))
            if proof is None or isinstance(proof, ProofError) or not jkt:
                error = proof if isinstance(proof, ProofError) else None
                if error is None:  # (a refused proof is counted and recorded by _proof)
                    self._refused(request, denials.DPOP_PROOF_MISSING if jkt else denials.DPOP_UNBOUND_TOKEN)
                code = error.error if error else ("invalid_dpop_proof" if jkt else "invalid_token")
                description = error.description if error else "A DPoP proof by the token's key is required"
                challenge = f'DPoP algs="{" ".join(self.proofs.algorithms)}", error="{code}"'
                headers = {"WWW-Authenticate": challenge}
                if error is not None and error.use_nonce:
                    headers.update(self._nonce_headers())
                return oauth_error(401, code, description, headers)
        pool = self.database.pool
        if await store.token_revoked(pool, str(claims["jti"])):
            self._refused(request, denials.REVOKED)
            return _invalid_token("The access token was revoked")
        user = await store.get_user(pool, str(claims["sub"]))
        if user is None or user.disabled:
            self._refused(request, denials.USER_GONE)
            return _invalid_token("The user no longer exists")
        return JSONResponse(user_info(user, str(claims.get("scope", ""))), headers=NO_STORE)

    def _refused(self, request: Request, reason: str) -> None:
        """A token ``/userinfo`` refuses (401): counted, and recorded for the trail (anonymous: the
        token did not prove its holder)."""
        userinfo_refusals.labels(reason).inc()
        denials.deny(request, self.settings, 401, reason)


def _invalid_token(description: str) -> Response:
    return oauth_error(401, "invalid_token", description, _bearer_challenge("invalid_token", description))
