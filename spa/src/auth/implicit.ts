/**
 * The scenario's Implicit Grant (`response_type=id_token token`), implemented here because maintained
 * libraries dropped it. The tokens come back in the URL fragment; the fragment is removed from the
 * address bar before anything else happens, the `state` is single-use, and the ID token is validated
 * (signature, iss, aud, nonce, at_hash) before the access token is used. Silent renewal repeats the
 * request with `prompt=none` in a hidden iframe answered by `web_message` (see webmessage.ts).
 */
import { createRemoteJWKSet, type JWTVerifyGetKey } from "jose";
import type { AppConfig } from "../config";
import { validateIdToken } from "./idtoken";
import { checkResponseIssuer } from "./issuer";
import { grantedScopes, logoutUrl, profileFrom, randomToken } from "./tokens";
import { AuthError, type Authenticator, type Discovery, type Session } from "./types";
import { silentWebMessage } from "./webmessage";

const PENDING_PREFIX = "tsp.implicit.";
const PENDING_MAX_AGE_MS = 10 * 60 * 1000;

interface Pending {
  nonce: string;
  returnTo: string;
  createdAt: number;
}

/** Parses a `#a=b&c=d` fragment. */
export function fragmentParams(hash: string): URLSearchParams {
  return new URLSearchParams(hash.startsWith("#") ? hash.slice(1) : hash);
}

export class ImplicitFlow implements Authenticator {
  readonly flow = "implicit" as const;
  private readonly keys: JWTVerifyGetKey;

  constructor(
    private readonly config: AppConfig,
    private readonly discovery: Discovery,
    keys?: JWTVerifyGetKey,
  ) {
    // jose bounds the JWKS fetch itself (5 s unless told): the same bound as the other sign-in requests
    this.keys = keys ?? createRemoteJWKSet(new URL(discovery.jwks_uri), { timeoutDuration: config.requestTimeoutMs });
  }

  private authorizeUrl(state: string, nonce: string, prompt?: "none"): string {
    const url = new URL(this.discovery.authorization_endpoint);
    const params: Record<string, string> = {
      response_type: "id_token token",
      client_id: this.config.clientId,
      redirect_uri: this.config.redirectUri,
      scope: this.config.scopes,
      state,
      nonce,
      audience: this.config.audience,
    };
    if (prompt) {
      params.prompt = prompt;
      params.response_mode = "web_message";
    }
    for (const [key, value] of Object.entries(params)) url.searchParams.set(key, value);
    return url.toString();
  }

  private remember(returnTo: string): { state: string; nonce: string } {
    const state = randomToken();
    const nonce = randomToken();
    const pending: Pending = { nonce, returnTo, createdAt: Date.now() };
    sessionStorage.setItem(PENDING_PREFIX + state, JSON.stringify(pending));
    return { state, nonce };
  }

  /** Takes (and forgets) the request this `state` belongs to: a replayed answer finds nothing. */
  private take(state: string | null): Pending {
    if (!state) throw new AuthError("invalid_response", "the answer has no state");
    const key = PENDING_PREFIX + state;
    const raw = sessionStorage.getItem(key);
    sessionStorage.removeItem(key);
    // Drop abandoned requests as well.
    for (let i = sessionStorage.length - 1; i >= 0; i--) {
      const other = sessionStorage.key(i);
      if (!other?.startsWith(PENDING_PREFIX)) continue;
      try {
        const stale = JSON.parse(sessionStorage.getItem(other) ?? "{}") as Partial<Pending>;
        if (!stale.createdAt || Date.now() - stale.createdAt > PENDING_MAX_AGE_MS) sessionStorage.removeItem(other);
      } catch {
        sessionStorage.removeItem(other);
      }
    }
    if (!raw) throw new AuthError("invalid_state", "this sign-in answer does not belong to a request from this tab");
    const pending = JSON.parse(raw) as Pending;
    if (Date.now() - pending.createdAt > PENDING_MAX_AGE_MS)
      throw new AuthError("invalid_state", "the sign-in request expired");
    return pending;
  }

  async signIn(returnTo: string): Promise<void> {
    const { state, nonce } = this.remember(returnTo);
    window.location.assign(this.authorizeUrl(state, nonce));
  }

  /** Validates a fragment answer and turns it into a session. */
  async process(params: URLSearchParams): Promise<{ session: Session; returnTo: string }> {
    const pending = this.take(params.get("state"));
    checkResponseIssuer(params, this.discovery);
    const error = params.get("error");
    if (error) throw new AuthError(error, params.get("error_description"));
    const accessToken = params.get("access_token");
    const idToken = params.get("id_token");
    if (!accessToken || !idToken)
      throw new AuthError("invalid_response", "the answer lacks the access token or ID token");
    if ((params.get("token_type") ?? "").toLowerCase() !== "bearer") {
      throw new AuthError("invalid_response", "the access token is not a bearer token");
    }
    const claims = await validateIdToken(idToken, this.keys, {
      issuer: this.discovery.issuer,
      clientId: this.config.clientId,
      nonce: pending.nonce,
      accessToken,
    });
    const now = Math.floor(Date.now() / 1000);
    const expiresIn = Number(params.get("expires_in"));
    const session: Session = {
      accessToken,
      tokenType: "Bearer", // the authorization endpoint issues no DPoP-bound tokens (RFC 9449 §10)
      idToken,
      obtainedAt: now,
      expiresAt: now + (Number.isFinite(expiresIn) && expiresIn > 0 ? expiresIn : 300),
      scopes: grantedScopes(accessToken, params.get("scope")),
      profile: profileFrom(claims as Record<string, unknown>),
    };
    return { session, returnTo: pending.returnTo };
  }

  async handleRedirectCallback(fragment: string): Promise<{ session: Session; returnTo: string }> {
    // The tokens must not stay in the address bar (history, screenshots, shoulder-surfing); main.tsx
    // removed the fragment before anything else ran, this makes sure of it.
    if (window.location.hash) window.history.replaceState(null, "", window.location.pathname);
    return this.process(fragmentParams(fragment));
  }

  async signInSilently(): Promise<Session> {
    const { state, nonce } = this.remember("");
    try {
      const answer = await silentWebMessage(this.authorizeUrl(state, nonce, "none"));
      return (await this.process(new URLSearchParams(answer))).session;
    } finally {
      sessionStorage.removeItem(PENDING_PREFIX + state);
    }
  }

  async signOut(session: Session | null): Promise<void> {
    window.location.assign(
      logoutUrl(this.discovery, {
        clientId: this.config.clientId,
        idToken: session?.idToken ?? null,
        returnTo: this.config.postLogoutRedirectUri,
      }),
    );
  }
}
