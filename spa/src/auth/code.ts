/**
 * Authorization Code + PKCE through oidc-client-ts (a maintained client library).
 * Tokens are kept in an in-memory user store; only the PKCE verifier and `state` sit in sessionStorage
 * for the few seconds of the redirect, which is the library's normal practice. Silent renewal is a
 * `prompt=none` request in a hidden iframe answered by `web_message` (see webmessage.ts); the code it
 * returns is exchanged by the library exactly like a redirect's, PKCE and state checks included.
 */
import {
  ErrorResponse,
  InMemoryWebStorage,
  OidcClient,
  UserManager,
  WebStorageStateStore,
  type SigninResponse,
  type User,
  type UserManagerSettings,
} from "oidc-client-ts";
import type { AppConfig } from "../config";
import { grantedScopes, logoutUrl, profileFrom } from "./tokens";
import { AuthError, type Authenticator, type Discovery, type Session } from "./types";
import { silentWebMessage } from "./webmessage";

export function userManagerSettings(config: AppConfig, discovery?: Discovery): UserManagerSettings {
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
  };
}

function toSession(user: User | SigninResponse): Session {
  const now = Math.floor(Date.now() / 1000);
  return {
    accessToken: user.access_token,
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
  if (/timed out|timeout/i.test(message)) return new AuthError("timeout", message);
  return new AuthError("error", message);
}

export class CodeFlow implements Authenticator {
  readonly flow = "code" as const;
  readonly manager: UserManager;
  private readonly client: OidcClient;

  constructor(
    private readonly config: AppConfig,
    private readonly discovery: Discovery,
  ) {
    const settings = userManagerSettings(config, discovery);
    this.manager = new UserManager(settings);
    this.client = new OidcClient(settings);
  }

  async signIn(returnTo: string): Promise<void> {
    await this.manager.signinRedirect({ url_state: returnTo });
  }

  async handleRedirectCallback(): Promise<{ session: Session; returnTo: string }> {
    try {
      const user = await this.manager.signinRedirectCallback();
      return { session: toSession(user), returnTo: user.url_state ?? this.config.basePath };
    } catch (error) {
      throw asAuthError(error);
    } finally {
      window.history.replaceState(null, "", window.location.pathname);
    }
  }

  async signInSilently(): Promise<Session> {
    try {
      const request = await this.client.createSigninRequest({
        request_type: "si:s",
        redirect_uri: this.config.redirectUri,
        prompt: "none",
        extraQueryParams: { audience: this.config.audience, response_mode: "web_message" },
      });
      const answer = await silentWebMessage(request.url);
      const response = await this.client.processSigninResponse(
        `${this.config.redirectUri}?${new URLSearchParams(answer).toString()}`,
      );
      return toSession(response);
    } catch (error) {
      throw asAuthError(error);
    }
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
