/**
 * Small, pure helpers about tokens: reading the granted scopes (for deciding what to show — the API
 * enforces them), building the sign-out URL and choosing when to renew.
 */
import { decodeJwt } from "jose";
import { fetchWithin } from "../lib/fetchWithin";
import type { Discovery, Profile } from "./types";

/**
 * Granted scopes. The access token's own `scope` / `scp` / Auth0 `permissions` claims win when it is a
 * JWT; otherwise the token response's `scope` parameter.
 */
export function grantedScopes(accessToken: string, responseScope?: string | null): Set<string> {
  const scopes = new Set<string>();
  try {
    const claims = decodeJwt(accessToken);
    const add = (value: unknown): void => {
      if (typeof value === "string")
        value
          .split(/\s+/)
          .filter(Boolean)
          .forEach((s) => scopes.add(s));
      else if (Array.isArray(value))
        value.filter((s): s is string => typeof s === "string").forEach((s) => scopes.add(s));
    };
    add(claims.scope);
    add(claims.scp);
    add(claims.permissions);
  } catch {
    // An opaque access token: only the response says what was granted.
  }
  if (scopes.size === 0 && responseScope)
    responseScope
      .split(/\s+/)
      .filter(Boolean)
      .forEach((s) => scopes.add(s));
  return scopes;
}

export function profileFrom(claims: Record<string, unknown>): Profile {
  const text = (key: string): string | null =>
    typeof claims[key] === "string" && claims[key] ? (claims[key] as string) : null;
  return {
    sub: text("sub") ?? "",
    name: text("name") ?? text("preferred_username") ?? text("nickname") ?? text("email"),
    email: text("email"),
  };
}

/**
 * Where to send the browser to end the provider session: OIDC RP-initiated logout when the provider
 * advertises `end_session_endpoint`, otherwise Auth0's `/v2/logout?client_id=…&returnTo=…`.
 */
export function logoutUrl(
  discovery: Pick<Discovery, "issuer" | "end_session_endpoint">,
  args: { clientId: string; idToken: string | null; returnTo: string },
): string {
  if (discovery.end_session_endpoint) {
    const url = new URL(discovery.end_session_endpoint);
    url.searchParams.set("client_id", args.clientId);
    url.searchParams.set("post_logout_redirect_uri", args.returnTo);
    if (args.idToken) url.searchParams.set("id_token_hint", args.idToken);
    return url.toString();
  }
  const base = discovery.issuer.endsWith("/") ? discovery.issuer : `${discovery.issuer}/`;
  const url = new URL("v2/logout", base);
  url.searchParams.set("client_id", args.clientId);
  url.searchParams.set("returnTo", args.returnTo);
  return url.toString();
}

/**
 * Seconds (epoch) at which to renew silently: a fifth of the lifetime before expiry, between 5 s and
 * 60 s, so that short test tokens and hour-long production tokens both renew in time.
 */
export function renewAt(obtainedAt: number, expiresAt: number): number {
  const lifetime = Math.max(0, expiresAt - obtainedAt);
  const before = Math.min(60, Math.max(5, lifetime * 0.2));
  return Math.max(obtainedAt, expiresAt - before);
}

export function randomToken(bytes = 32): string {
  const data = crypto.getRandomValues(new Uint8Array(bytes));
  let text = "";
  for (const byte of data) text += String.fromCharCode(byte);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/**
 * The provider's OIDC discovery document, within `timeoutMs` (config.json `requestTimeoutMs`): a
 * frozen provider fails it with a `TimeoutError`, never an endless "Loading Timesheets…".
 */
export async function fetchDiscovery(issuer: string, timeoutMs: number): Promise<Discovery> {
  const doc = await fetchWithin(
    `${issuer}.well-known/openid-configuration`,
    { headers: { accept: "application/json" } },
    timeoutMs,
    async (response) => {
      if (!response.ok) throw new Error(`discovery answered ${response.status}`);
      return (await response.json()) as Discovery;
    },
  );
  if (doc.issuer.replace(/\/$/, "") !== issuer.replace(/\/$/, "")) {
    throw new Error(`discovery issuer ${doc.issuer} does not match the configured ${issuer}`);
  }
  return doc;
}
