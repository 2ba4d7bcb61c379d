/**
 * Authorization Code + PKCE through oidc-client-ts (a maintained client library).
 * Tokens are kept in an in-memory user store; only the PKCE verifier and `state` sit in sessionStorage
 * for the few seconds of the redirect, which is the library's normal practice. Silent renewal is a
 * `prompt=none` request in a hidden iframe answered by `web_message` (see webmessage.ts); the code it
 * returns is exchanged by the library exactly like a redirect's, PKCE and state checks included.
 *
 * DPoP (see dpop.ts): when discovery advertises ES256 proofs, the library keeps a non-extractable key
 * in IndexedDB, binds each authorization code to it (`dpop_jkt`), sends a proof with every token
 * request (retrying once with the provider's `DPoP-Nonce` when asked) and forgets the key at sign-out;
 * the API calls' proofs are signed with the same key.
 */
import {
  DPoPState,
  ErrorResponse,
  ErrorTimeout,
  IndexedDbDPoPStore,
  InMemoryWebStorage,
  OidcClient,
  UserManager,
  WebStorageStateStore,
  type SigninResponse,
  type User,
  type UserManagerSettings,
} from "oidc-client-ts";
import { TimeoutError } from "../api/errors";
import type { AppConfig } from "../config";
import { within } from "../lib/fetchWithin";
import {
  dpopAdvertised,
  dpopCapable,
  DpopSigner,
  generateDpopKeys,
  makeProof,
  syncServerClock,
  type DPoPStore,
  type ProofRequest,
} from "./dpop";
import { checkResponseIssuer } from "./issuer";
import { grantedScopes, logoutUrl, profileFrom } from "./tokens";
import { AuthError, type Authenticator, type Discovery, type Session } from "./types";
import { silentWebMessage } from "./webmessage";

/**
 * `dpopStore`: where the DPoP key lives (IndexedDB in the browser); without it tokens stay Bearer.
 */
export function userManagerSettings(
  config: AppConfig,
  discovery?: Discovery,
  dpopStore?: DPoPStore,
): UserManagerSettings {
  return {
    authority: config.issuer,
    ...(discovery ? { metadata: discovery } : {}),
    client_id: config.clientId,
    redirect_uri: config.redirectUri,
    post_logout_redirect_uri: config.postLogoutRedirectUri,
    response_type: "code",
    scope: config.scopes,
    extraQueryParams: { audience: config.audience },
    userStore: new WebStorageStateStore({ store: new InMemoryWebStorage() }),
    stateStore: new WebStorageStateStore({ store: window.sessionStorage, prefix: "tsp.oidc." }),
    automaticSilentRenew: false,
    monitorSession: false,
    loadUserInfo: false,
    silentRequestTimeoutInSeconds: 10,
    // each token request (the code exchange, a renewal's, the retry with the provider's DPoP nonce):
    // the library's fetch has no bound without it, and a frozen provider would hang the sign-in
    requestTimeoutInSeconds: config.requestTimeoutMs / 1000,
    ...(dpopStore ? { dpop: { store: dpopStore, bind_authorization_code: true } } : {}),
  };
}

/** The DPoP key store for this provider and browser, or undefined when DPoP stays off. */
export function dpopStoreFor(discovery: Discovery): DPoPStore | undefined {
  return dpopAdvertised(discovery) && dpopCapable() ? new IndexedDbDPoPStore() : undefined;
}

function toSession(user: User | SigninResponse): Session {
  const now = Math.floor(Date.now() / 1000);
  return {
    accessToken: user.access_token,
    tokenType: (user.token_type ?? "").toLowerCase() === "dpop" ? "DPoP" : "Bearer",
    idToken: user.id_token ?? null,
    obtainedAt: now,
    expiresAt: user.expires_at ?? now + 300,
    scopes: grantedScopes(user.access_token, user.scope),
    profile: profileFrom(user.profile as Record<string, unknown>),
  };
}

function asAuthError(error: unknown): AuthError {
  if (error instanceof ErrorResponse) return new AuthError(error.error ?? "error", error.error_description ?? null);
  if (error instanceof AuthError) return error;
  const message = error instanceof Error ? error.message : String(error);
  if (error instanceof ErrorTimeout || error instanceof TimeoutError) return new AuthError("timeout", message);
  if (/timed out|timeout/i.test(message)) return new AuthError("timeout", message);
  return new AuthError("error", message);
}

/**
 * oidc-client-ts' client with the token requests' DPoP proofs made by dpop.ts: the same key and nonce
 * handling as the library's, but dated by the server's clock (see `serverClock`).
 */
class ProofClient extends OidcClient {
  override async getDpopProof(store: DPoPStore, nonce?: string): Promise<string> {
    const clientId = this.settings.client_id;
    let state = (await store.get(clientId)) as DPoPState | undefined;
    if (!state?.keys) {
      state = new DPoPState(await generateDpopKeys());
      await store.set(clientId, state);
    }
    if (nonce && state.nonce !== nonce) {
      state = new DPoPState(state.keys, nonce); // the provider's nonce, for its next token requests
      await store.set(clientId, state);
    }
    const url = await this.metadataService.getTokenEndpoint(false);
    return makeProof(state.keys, { method: "POST", url, nonce: state.nonce ?? null });
  }
}

export class CodeFlow implements Authenticator {
  readonly flow = "code" as const;
  readonly manager: UserManager;
  private readonly client: OidcClient;
  private readonly signer: DpopSigner | null;

  constructor(
    private readonly config: AppConfig,
    private readonly discovery: Discovery,
    dpopStore: DPoPStore | undefined = dpopStoreFor(discovery),
  ) {
    const settings = userManagerSettings(config, discovery, dpopStore);
    this.manager = new UserManager(settings);
    this.client = new ProofClient(settings);
    this.signer = dpopStore ? new DpopSigner(dpopStore, config.clientId) : null;
  }

  /** Whether tokens are requested bound to this browser's key. */
  get dpop(): boolean {
    return this.signer !== null;
  }

  proof(request: ProofRequest): Promise<string | null> {
    return this.signer ? this.signer.proof(request) : Promise.resolve(null);
  }

  async signIn(returnTo: string): Promise<void> {
    await this.manager.signinRedirect({ url_state: returnTo });
  }

  async handleRedirectCallback(): Promise<{ session: Session; returnTo: string }> {
    try {
      checkResponseIssuer(new URL(window.location.href).searchParams, this.discovery);
      if (this.signer) await syncServerClock(this.config.requestTimeoutMs);
      // The answer to manager.signinRedirect(): same settings and state store, and our client's proofs.
      const response = await this.exchange(window.location.href);
      return { session: toSession(response), returnTo: response.url_state ?? this.config.basePath };
    } catch (error) {
      throw asAuthError(error);
    } finally {
      window.history.replaceState(null, "", window.location.pathname);
    }
  }

  async signInSilently(): Promise<Session> {
    try {
      const settings = this.manager.settings.dpop;
      const request = await this.client.createSigninRequest({
        request_type: "si:s",
        // the renewed code is bound to the same key as the first one (created here if it is gone)
        ...(settings ? { dpopJkt: await this.manager.generateDPoPJkt(settings) } : {}),
        redirect_uri: this.config.redirectUri,
        prompt: "none",
        extraQueryParams: { audience: this.config.audience, response_mode: "web_message" },
      });
      const answer = await silentWebMessage(request.url);
      checkResponseIssuer(new URLSearchParams(answer), this.discovery);
      if (this.signer) await syncServerClock(this.config.requestTimeoutMs);
      const response = await this.exchange(`${this.config.redirectUri}?${new URLSearchParams(answer).toString()}`);
      return toSession(response);
    } catch (error) {
      throw asAuthError(error);
    }
  }

  /**
   * The code in `url` exchanged for tokens by the library, within two token requests' bounds (the
   * first and the retry with the provider's DPoP nonce): the library's `requestTimeoutInSeconds` ends
   * at each answer's head, and a provider frozen halfway through its body would hang the sign-in.
   */
  private exchange(url: string): Promise<SigninResponse> {
    const bound = 2 * this.config.requestTimeoutMs;
    return within(this.client.processSigninResponse(url), bound, "the token exchange");
  }

  async signOut(session: Session | null): Promise<void> {
    await this.manager.removeUser();
    window.location.assign(
      logoutUrl(this.discovery, {
        clientId: this.config.clientId,
        idToken: session?.idToken ?? null,
        returnTo: this.config.postLogoutRedirectUri,
      }),
    );
  }
}
