/**
 * Runtime configuration. The same build runs against the bundled identity service or Auth0: the gateway
 * serves `/config.json` from its environment, and nothing about the provider is baked into the bundle.
 *
 * When the app is loaded under `/partner/` it plays the third-party client `partner-spa` (the consent
 * demo). The only query override accepted is `?flow=code|implicit` — it carries no secret and lets a
 * tester pick the scenario's Implicit Grant without redeploying.
 */

import { TimeoutError } from "./api/errors";
import { fetchWithin } from "./lib/fetchWithin";

export type Flow = "code" | "implicit";

export interface AppConfig {
  /** OIDC issuer URL, always ending in `/` (Auth0 style: `https://tenant.auth0.com/`). */
  issuer: string;
  clientId: string;
  /** API identifier sent as `audience` on `/authorize`, Auth0 style. */
  audience: string;
  flow: Flow;
  /** Space-delimited scopes requested at sign-in. */
  scopes: string;
  /** Base URL of the API, relative to the page's origin. */
  apiBase: string;
  /** Path the app is mounted at: `/` normally, `/partner/` for the third-party client. */
  basePath: string;
  /** Absolute redirect URI registered at the provider for this client. */
  redirectUri: string;
  /** Absolute URL the provider sends the browser back to after sign-out. */
  postLogoutRedirectUri: string;
  /**
   * How long one API request waits for its answer before it is given up as a network failure (see
   * `ApiClient`). The gateway derives it from its own timeouts, which it always answers within. The
   * sign-in's requests once the configuration is known have the same bound: OIDC discovery, each
   * token request (oidc-client-ts' `requestTimeoutInSeconds`), the Implicit Grant's JWKS, the
   * server-clock fetch before a DPoP token request.
   */
  requestTimeoutMs: number;
}

export const DEFAULT_SCOPES =
  "openid profile email read:timesheets create:timesheets delete:timesheets approve:timesheets read:audit";

export const DEFAULTS = {
  issuer: "http://localhost:9000/",
  clientId: "timesheets-spa",
  partnerClientId: "partner-spa",
  audience: "https://timesheets.abc.example/api",
  flow: "code" as Flow,
  scopes: DEFAULT_SCOPES,
  /** What the third-party demo client is registered for: it cannot ask for more. */
  partnerScopes: "openid profile email read:timesheets create:timesheets",
  apiBase: "/api",
  /** A gateway from before `requestTimeoutMs`: above its default worst case (see client.ts). */
  requestTimeoutMs: 45_000,
};

/** The bounds a served `requestTimeoutMs` must lie within (1 s to 15 min). */
export const REQUEST_TIMEOUT_BOUNDS_MS = [1_000, 900_000] as const;

export const PARTNER_BASE = "/partner/";
const FLOW_KEY = "tsp.flow";

export class ConfigError extends Error {
  override name = "ConfigError";
}

function str(raw: Record<string, unknown>, key: string): string | undefined {
  const value = raw[key];
  if (value === undefined || value === null || value === "") return undefined;
  if (typeof value !== "string") throw new ConfigError(`config.json: "${key}" must be a string`);
  return value.trim();
}

function timeoutMs(raw: Record<string, unknown>, key: string): number | undefined {
  const value = raw[key];
  if (value === undefined || value === null) return undefined;
  const [low, high] = REQUEST_TIMEOUT_BOUNDS_MS;
  if (typeof value !== "number" || !Number.isInteger(value) || value < low || value > high)
    throw new ConfigError(`config.json: "${key}" must be a whole number of milliseconds from ${low} to ${high}`);
  return value;
}

function parseFlow(value: string | undefined | null): Flow | undefined {
  if (value === undefined || value === null || value === "") return undefined;
  if (value === "code" || value === "implicit") return value;
  throw new ConfigError(`unknown sign-in flow "${value}" (expected "code" or "implicit")`);
}

/** The path the app is mounted at, derived from the page path. */
export function basePathOf(pathname: string): string {
  return pathname === "/partner" || pathname.startsWith(PARTNER_BASE) ? PARTNER_BASE : "/";
}

export interface LocationLike {
  origin: string;
  pathname: string;
  search: string;
}

/**
 * Combines the served configuration, the page location and the (safe) query override into the
 * settings the app runs with. `storedFlow` is the flow this browser tab chose earlier, so that a
 * redirect back from the provider (which drops the query) keeps using it.
 */
export function resolveConfig(
  raw: Record<string, unknown>,
  location: LocationLike,
  storedFlow?: string | null,
): AppConfig {
  let issuer = str(raw, "issuer") ?? DEFAULTS.issuer;
  if (!/^https?:\/\//.test(issuer)) throw new ConfigError(`config.json: issuer "${issuer}" is not a URL`);
  if (!issuer.endsWith("/")) issuer += "/";
  const basePath = basePathOf(location.pathname);
  const partner = basePath === PARTNER_BASE;
  const clientId = partner
    ? (str(raw, "partnerClientId") ?? DEFAULTS.partnerClientId)
    : (str(raw, "clientId") ?? DEFAULTS.clientId);
  const scopes = partner
    ? (str(raw, "partnerScopes") ?? DEFAULTS.partnerScopes)
    : (str(raw, "scopes") ?? DEFAULTS.scopes);
  const queryFlow = new URLSearchParams(location.search).get("flow");
  const flow = parseFlow(queryFlow) ?? parseFlow(storedFlow) ?? parseFlow(str(raw, "flow")) ?? DEFAULTS.flow;
  const apiBase = (str(raw, "apiBase") ?? DEFAULTS.apiBase).replace(/\/+$/, "");
  return {
    issuer,
    clientId,
    audience: str(raw, "audience") ?? DEFAULTS.audience,
    flow,
    scopes: scopes.split(/\s+/).filter(Boolean).join(" "),
    apiBase,
    basePath,
    redirectUri: `${location.origin}${basePath}callback`,
    postLogoutRedirectUri: `${location.origin}${basePath}`,
    requestTimeoutMs: timeoutMs(raw, "requestTimeoutMs") ?? DEFAULTS.requestTimeoutMs,
  };
}

/**
 * How long `/config.json` may take, before the configuration (and its `requestTimeoutMs`) is known: a
 * fixed 10 s. The gateway answers it from memory, asking no service, right after serving the page
 * itself, so it comes in milliseconds; 10 s still covers a slow link's lost packets (a connection's
 * retransmitted SYNs at 1 s and 3 s) while a frozen gateway leaves the user on "Loading Timesheets…"
 * no longer than that before they are told and offered Try again.
 */
export const CONFIG_TIMEOUT_MS = 10_000;

/**
 * Fetches `/config.json` within `timeoutMs`; falls back to the local-run defaults when the server has
 * none (`vite`, a 404). No answer in time rejects with a `TimeoutError` instead: the defaults name a
 * provider on this computer, which a deployed app must not send its users to.
 */
export async function loadConfig(timeoutMs: number = CONFIG_TIMEOUT_MS): Promise<AppConfig> {
  let raw: Record<string, unknown> = {};
  try {
    const init = { cache: "no-store", headers: { accept: "application/json" } } as const;
    const answer = await fetchWithin("/config.json", init, timeoutMs, async (response) =>
      response.ok ? ((await response.json()) as Record<string, unknown>) : response.status,
    );
    if (typeof answer === "number") console.warn(`/config.json answered ${answer}; using local defaults`);
    else raw = answer;
  } catch (error) {
    if (error instanceof TimeoutError) throw error;
    console.warn("/config.json unavailable; using local defaults", error);
  }
  const query = new URLSearchParams(window.location.search).get("flow");
  const config = resolveConfig(raw, window.location, sessionStorage.getItem(FLOW_KEY));
  if (query) sessionStorage.setItem(FLOW_KEY, config.flow);
  return config;
}

/** Only same-app paths are followed after sign-in (no open redirect through `returnTo`). */
export function safeReturnPath(returnTo: string | undefined, basePath: string): string {
  if (!returnTo || !returnTo.startsWith(basePath) || returnTo.startsWith("//") || returnTo.includes("\\"))
    return basePath;
  return returnTo.endsWith("/callback") ? basePath : returnTo;
}
