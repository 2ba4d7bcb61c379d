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

import logging
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
from svckit.proxies import throttle_key

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
from .throttle import FailureThrottle, LocalWindows
from .tokens import TOKEN_REASONS, InvalidAccessToken, user_info, verify_access_token

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

log = logging.getLogger("identity.endpoints")

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
token_throttled = Counter(
    "identity_token_throttled_total",
    "Token and revocation requests refused (429) before their DPoP proof was remembered, by reason "
    "(token_failures: the address's failed requests used up TOKEN_MAX_FAILURES_PER_ADDRESS).",
    ["reason"],
)
token_throttled.labels(denials.TOKEN_FAILURES)

#: the grants the token endpoint answers, and the parameter without which each can never succeed
TOKEN_GRANTS = {"authorization_code": "code", "refresh_token": "refresh_token", "client_credentials": None}


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


def futile_token_request(params: list[tuple[str, str]]) -> Response | None:
    """The refusal of a token request that cannot succeed whatever the provider stores: a grant type it
    does not answer at this endpoint, a code exchange without its code, a refresh without its refresh
    token — answered as Authlib would (``unsupported_grant_type``, ``invalid_request``), before any DPoP
    proof it carries is remembered and before any client secret is checked. Why: such a proof needs no
    replay protection (the request used up nothing and issued nothing, so the proof's one use is still
    ahead of it), and remembering it cost a Redis key for the proof's window. Not counted against the
    address's failure budget either: it costs the provider no I/O. A proof whose request reaches the
    grant is remembered before the grant runs, as before: soundness does not depend on this check."""
    form = dict(params)  # each name at most once (_token_params)
    grant_type = form.get("grant_type", "")
    if grant_type not in TOKEN_GRANTS:
        return oauth_error(
            400, "unsupported_grant_type", f"grant_type={quotable(grant_type)} is not supported"
        )
    needed = TOKEN_GRANTS[grant_type]
    if needed is not None and not form.get(needed):
        return oauth_error(400, "invalid_request", f"Missing '{needed}' in request.")
    return None


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


#: body parameters of client authentication methods (RFC 6749 §2.3.1 ``client_secret_post``; RFC 7521
#: §4.2 ``client_assertion``, which this provider does not support, but a request carrying one beside
#: another method presents two all the same)
BODY_METHODS = {"client_secret": "client_secret_post", "client_assertion": "client_assertion"}


def client_auth_methods(request: Request, params: list[tuple[str, str]]) -> list[str]:
    """The client authentication methods a token or revocation request uses: ``client_secret_basic``
    for any ``Authorization: Basic`` header (well-formed or not), ``client_secret_post`` for a
    non-empty ``client_secret``, ``client_assertion`` for a non-empty assertion. A ``client_id``
    alone is no method (it names a public client, method ``none``, or repeats Basic's id).

    RFC 6749 §2.3.1: "The client MUST NOT use more than one authentication method in each request."
    A request using two is refused (:meth:`ProtocolEndpoints._authenticating_client`): Authlib tries
    the methods in turn and takes the first that succeeds, so a failed one beside another — a wrong
    Basic secret, Basic naming another client — was passed over, and which client a request
    authenticated as depended on the order of Authlib's list."""
    scheme, _, _ = request.headers.get("authorization", "").strip().partition(" ")
    methods = ["client_secret_basic"] if scheme.lower() == "basic" else []
    methods.extend(method for name, method in BODY_METHODS.items() if dict(params).get(name))
    return methods


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
        token_failures: FailureThrottle,
        publisher: RevocationPublisher,
        proofs: ProofVerifier,
        replays: ReplayGuard,
    ) -> None:
        self.settings = settings
        self.database = database
        self.keys = keys
        self.server = server
        self.client_auth_throttle = client_auth_throttle
        self.token_failures = token_failures
        self.publisher = publisher
        self.proofs = proofs
        self.replays = replays
        # addresses whose throttling this process logged, until the refusal's Retry-After
        self._throttled_logged = LocalWindows()

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
        await self.keys.refresh_if_stale(self.database.queries)
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
        await self.keys.refresh_if_stale(self.database.queries)
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
        futile = futile_token_request(params)
        if futile is not None:
            return futile
        token_url = self.settings.url("oauth/token")

        async def run() -> Result:
            proof = await self._proof(request, token_url, 400)
            if isinstance(proof, ProofError):  # 400 (RFC 9449 §5): nothing was used up
                return self._proof_refusal(proof)
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
        await self.keys.refresh_if_stale(self.database.queries)
        params = await _token_params(request)
        if isinstance(params, Response):
            return params
        if any(not store.storable(v) for _, v in params) or unquotable_parameter(params):
            return oauth_error(400, "invalid_request", "A parameter holds characters that are not allowed.")
        revoke_url = self.settings.url("oauth/revoke")

        async def run() -> Result:
            # a DPoP-bound refresh token is revoked only with a proof by its key (oauth.Revocation)
            proof = await self._proof(request, revoke_url, 400)
            if isinstance(proof, ProofError):  # 400, as at the token endpoint: nothing was revoked
                return self._proof_refusal(proof)
            oreq = OAuthRequest("POST", revoke_url, request.headers, [], params)
            oreq.dpop_jkt = proof
            result = await self._in_transaction("revocation", oreq)
            if oreq.denial is not None:  # a refresh token bound to a key the request did not prove
                denials.deny(request, self.settings, result.status, oreq.denial)
            if proof is not None:
                result.headers.extend(self._nonce_headers().items())
            result.futile = oreq.found_nothing  # 200 all the same (RFC 7009 §2.2)
            return result

        return await self._authenticating_client(request, params, run)

    def _proof_refusal(self, proof: ProofError) -> Result:
        """A refused DPoP proof as the token and revocation endpoints answer it (400, RFC 9449 §5; the
        next nonce with ``use_dpop_nonce``)."""
        headers = self._nonce_headers() if proof.use_nonce else {}
        body = {"error": proof.error, "error_description": proof.description}
        return Result(400, body, list(headers.items()))

    async def _authenticating_client(
        self,
        request: Request,
        params: list[tuple[str, str]],
        run: Callable[[], Awaitable[Result]],
    ) -> Response:
        """``run`` (where the DPoP proof is remembered and Authlib authenticates the client) within
        the address's two budgets, shared by the token and revocation endpoints, 429 once either is
        used up:

        * failed client authentications (``CLIENT_AUTH_MAX_FAILURES_PER_ADDRESS``): a wrong secret
          costs an Argon2 verification;
        * failed requests, whatever failed (``TOKEN_MAX_FAILURES_PER_ADDRESS``): each may have had its
          DPoP proof remembered in Redis for the proof's window. A slot is taken before the proof is
          remembered (and before a secret is checked) and given back by a request that did not fail,
          so successes — an SPA refreshing, every user behind one NAT address — spend nothing, and a
          burst gets no more than the budget. Not failures: the DPoP nonce step (the protocol's, and
          its proof is not remembered), a database outage (not the client's doing)."""
        address = client_address(
            request, self.settings.trusted_proxy_networks, self.settings.identity_proxy_header
        )
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
        failed = False  # client authentication
        try:
            if len(client_auth_methods(request, params)) > 1:
                # RFC 6749 §2.3.1; a failed client authentication (counted in the address's budget,
                # on the audit trail), refused before any secret is checked
                failed = True
                denials.deny(request, self.settings, 400, denials.INVALID_CLIENT)
                return oauth_error(
                    400,
                    "invalid_request",
                    "Authenticate the client by one method only: HTTP Basic or client_secret in the "
                    "body, not both (RFC 6749 section 2.3.1).",
                )
            budget = await self.token_failures.take(address)
            if not budget.allowed:
                return self._throttled(request, address, budget.retry_after)
            spent = False  # this request failed: its slot stays taken
            try:
                with settled_in_request():
                    wrong = [not await self._check_secret(c, s) for c, s in presented]
                    result = await run()
                error = result.body.get("error") if isinstance(result.body, dict) else None
                failed = error == "invalid_client" or any(wrong)
                spent = failed or result.futile or (result.status >= 400 and error != "use_dpop_nonce")
                if error == "invalid_client":
                    denials.deny(request, self.settings, result.status, denials.INVALID_CLIENT)
                return _json_result(result)
            finally:
                if not spent:
                    await self.token_failures.give_back(address)
        finally:
            await self.client_auth_throttle.end(address, presents_secret=presents_secret, failed=failed)

    def _throttled(self, request: Request, address: str, retry_after: int) -> Response:
        """429 for an address whose failed token and revocation requests used up its budget: counted,
        on the audit trail, and logged once per address and window by this process (a flood's every
        request would otherwise be a log line)."""
        token_throttled.labels(denials.TOKEN_FAILURES).inc()
        denials.deny(request, self.settings, 429, denials.TOKEN_FAILURES)
        key = throttle_key(address)
        if self._throttled_logged.get(key)[0] == 0:
            self._throttled_logged.incr(key, retry_after)
            log.warning(
                "token requests throttled",
                extra={"address": key, "reason": denials.TOKEN_FAILURES, "retry_after": retry_after},
            )
        return oauth_error(
            429,
            "too_many_attempts",
            f"Too many failed token requests from this address; retry in {retry_after} seconds.",
            {"Retry-After": str(retry_after)},
        )

    async def _check_secret(self, client_id: str, secret: str) -> bool:
        """A presented client secret checked before Authlib's transaction (its verdict settled for the
        request: :func:`settled_in_request`); the client is read on a connection held only for that.
        False: a confidential client's secret that did not verify — a failed client authentication
        whatever the request is answered (a refused DPoP proof is answered before Authlib checks the
        client, and a wrong secret sent with one was never counted: Argon2 work without limit)."""
        client = await store.get_client(self.database.queries, client_id)
        if client is not None and not client.is_public:
            verified: bool = await anyio.to_thread.run_sync(
                client_secrets.verify_any, client.secret_hashes, secret
            )
            return verified
        return True

    async def userinfo(self, request: Request) -> Response:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        scheme = scheme.lower()
        token = credentials.strip()
        if scheme not in ("bearer", "dpop") or not token:
            self._refused(request, denials.MISSING_TOKEN)
            return oauth_error(
                401, "invalid_request", "Send the access token as a Bearer token.", _bearer_challenge()
            )
        await self.keys.refresh_if_stale(self.database.queries)
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
        pool = self.database.queries
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
