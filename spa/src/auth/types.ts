/** What the rest of the app knows about a signed-in user: tokens live only in memory, in this object. */
import type { ProofRequest } from "./dpop";

export interface Profile {
  sub: string;
  name: string | null;
  email: string | null;
}

export interface Session {
  accessToken: string;
  /**
   * `DPoP` when the provider bound the token to this browser's key (every API call then carries a
   * proof, see dpop.ts), else `Bearer`.
   */
  tokenType: "Bearer" | "DPoP";
  idToken: string | null;
  /** Access-token expiry, epoch seconds (client clock). */
  expiresAt: number;
  /** When the tokens were obtained, epoch seconds (client clock). */
  obtainedAt: number;
  /** Scopes actually granted (the provider may grant fewer than were asked for). */
  scopes: ReadonlySet<string>;
  profile: Profile;
}

/** A provider answer such as `login_required` or `access_denied`, or a failed check of its answer. */
export class AuthError extends Error {
  override name = "AuthError";
  constructor(
    readonly code: string,
    readonly description: string | null = null,
  ) {
    super(description ? `${code}: ${description}` : code);
  }
}

/** One sign-in protocol (Authorization Code + PKCE, or the Implicit Grant). */
export interface Authenticator {
  readonly flow: "code" | "implicit";
  /** Sends the browser to the provider; `returnTo` is the app path to come back to. */
  signIn(returnTo: string): Promise<void>;
  /**
   * Reads the provider's answer at the redirect URI (top window). `fragment` is the URL fragment the
   * page was loaded with, already removed from the address bar.
   */
  handleRedirectCallback(fragment: string): Promise<{ session: Session; returnTo: string }>;
  /** `prompt=none` in a hidden iframe; rejects with AuthError (`login_required`, …) when it cannot. */
  signInSilently(): Promise<Session>;
  /** Ends the session at the provider (navigates away). */
  signOut(session: Session | null): Promise<void>;
  /** A DPoP proof for an API request (null when this flow holds no DPoP key). */
  proof?(request: ProofRequest): Promise<string | null>;
}

/** OIDC discovery document (the parts used here). */
export interface Discovery {
  issuer: string;
  authorization_endpoint: string;
  token_endpoint: string;
  jwks_uri: string;
  userinfo_endpoint?: string;
  end_session_endpoint?: string;
  dpop_signing_alg_values_supported?: string[];
  [key: string]: unknown;
}
