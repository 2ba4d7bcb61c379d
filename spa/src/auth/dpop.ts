/**
 * DPoP (RFC 9449): access tokens bound to a key this browser holds and cannot export, so a token
 * copied out of the page (an XSS payload, an extension, a log) is refused anywhere else.
 *
 * The key pair is an ECDSA P-256 (ES256) WebCrypto pair generated with `extractable: false` and kept
 * in IndexedDB by oidc-client-ts' `IndexedDbDPoPStore` under the client id: IndexedDB stores the
 * `CryptoKey` objects themselves (structured clone), never the key bytes, so a reload and silent
 * renewal keep the same key while no script can read the private key out. oidc-client-ts signs the
 * token requests' proofs (code exchange and renewal) with it; this module signs the API calls' proofs
 * with the same pair, which is why the thumbprint in the token's `cnf.jkt` matches.
 *
 * A proof's `iat` must be within the servers' leeway (30 s by default) of their clocks, so proofs are
 * dated by the server's clock as last seen in a same-origin `Date` header (`serverClock`), not by this
 * computer's: a laptop whose clock is minutes off, or back from sleep, still gets its proofs accepted.
 *
 * DPoP is on when the provider advertises ES256 in `dpop_signing_alg_values_supported` (the bundled
 * provider, Auth0 with DPoP enabled); otherwise the app keeps sending Bearer tokens.
 */
import type { DPoPState, OidcClientSettings } from "oidc-client-ts";
import { fetchWithin } from "../lib/fetchWithin";
import type { Discovery } from "./types";

/** oidc-client-ts' key store contract (the library does not export the interface by name). */
export type DPoPStore = NonNullable<OidcClientSettings["dpop"]>["store"];

export const DPOP_ALGORITHM = "ES256";

/** Whether the provider issues DPoP-bound tokens for proofs this app can make (ES256 with WebCrypto). */
export function dpopAdvertised(discovery: Pick<Discovery, "dpop_signing_alg_values_supported">): boolean {
  const algs = discovery.dpop_signing_alg_values_supported;
  return Array.isArray(algs) && algs.includes(DPOP_ALGORITHM);
}

/** Whether this browser can hold a non-extractable key across reloads (WebCrypto and IndexedDB). */
export function dpopCapable(): boolean {
  return typeof indexedDB !== "undefined" && typeof globalThis.crypto?.subtle?.generateKey === "function";
}

/** A fresh ES256 key pair whose private half can sign but never be exported. */
export function generateDpopKeys(): Promise<CryptoKeyPair> {
  return globalThis.crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, false, ["sign", "verify"]);
}

function base64url(bytes: ArrayBuffer | Uint8Array): string {
  const view = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  let text = "";
  for (const byte of view) text += String.fromCharCode(byte);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function encodeJson(value: object): string {
  return base64url(new TextEncoder().encode(JSON.stringify(value)));
}

/** `htu`: the request URL as the browser sends it, absolute, without query and fragment (RFC 9449 §4.2). */
export function proofUrl(url: string, base: string = globalThis.location?.href ?? "http://localhost/"): string {
  const absolute = new URL(url, base);
  return `${absolute.origin}${absolute.pathname}`;
}

/** `ath`: base64url(SHA-256(access token)). */
export async function accessTokenHash(accessToken: string): Promise<string> {
  return base64url(await globalThis.crypto.subtle.digest("SHA-256", new TextEncoder().encode(accessToken)));
}

/** Seconds to add to this computer's clock to get the server's (learned from `Date` headers). */
export class ServerClock {
  private offset = 0;

  /** Reads a response's `Date`; true when the offset moved by more than the header's resolution. */
  observe(date: string | null | undefined): boolean {
    const server = date ? Date.parse(date) : Number.NaN;
    if (!Number.isFinite(server)) return false;
    const measured = (server - Date.now()) / 1000;
    if (Math.abs(measured - this.offset) <= 2) return false;
    this.offset = Math.abs(measured) <= 2 ? 0 : measured;
    return true;
  }

  /** The server's time now, epoch seconds (what a proof's `iat` says). */
  now(): number {
    return Math.floor(Date.now() / 1000 + this.offset);
  }
}

export const serverClock = new ServerClock();

/**
 * Learns the server's time from a small same-origin answer (before a token request, whose provider
 * is on another origin and does not expose its `Date`), within `timeoutMs` (config.json
 * `requestTimeoutMs`). Best effort: a failure, or no answer in time, keeps the last offset and the
 * token request goes ahead.
 */
export async function syncServerClock(timeoutMs: number, url = "/config.json"): Promise<void> {
  try {
    const date = await fetchWithin(url, { cache: "no-store", credentials: "omit" }, timeoutMs, async (response) => {
      await response.body?.cancel(); // only the head is wanted
      return response.headers.get("date");
    });
    serverClock.observe(date);
  } catch (error) {
    // offline, blocked or frozen: proofs keep the last known offset
    console.warn("server clock not read:", error instanceof Error ? error.message : error);
  }
}

export interface ProofRequest {
  method: string;
  url: string;
  /** The access token the request carries (its hash goes in `ath`); none at the token endpoint. */
  accessToken?: string | null;
  /** The server's latest `DPoP-Nonce`, when it hands them out. */
  nonce?: string | null;
  /** `iat`; by default the server's time per `serverClock`. */
  iat?: number;
}

/** A DPoP proof JWT for one request, signed with `keys` (a new `jti` each time: proofs are single-use). */
export async function makeProof(keys: CryptoKeyPair, request: ProofRequest): Promise<string> {
  const jwk = await globalThis.crypto.subtle.exportKey("jwk", keys.publicKey);
  const header = { typ: "dpop+jwt", alg: DPOP_ALGORITHM, jwk: { kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y } };
  const claims: Record<string, string | number> = {
    jti: globalThis.crypto.randomUUID(),
    htm: request.method.toUpperCase(),
    htu: proofUrl(request.url),
    iat: request.iat ?? serverClock.now(),
  };
  if (request.accessToken) claims.ath = await accessTokenHash(request.accessToken);
  if (request.nonce) claims.nonce = request.nonce;
  const input = `${encodeJson(header)}.${encodeJson(claims)}`;
  // WebCrypto's ECDSA signature is r || s (IEEE P1363), which is exactly JWS's ES256 form.
  const signature = await globalThis.crypto.subtle.sign(
    { name: "ECDSA", hash: "SHA-256" },
    keys.privateKey,
    new TextEncoder().encode(input),
  );
  return `${input}.${base64url(signature)}`;
}

/** Signs API proofs with the key oidc-client-ts keeps for `clientId` (null when there is none yet). */
export class DpopSigner {
  constructor(
    readonly store: DPoPStore,
    readonly clientId: string,
  ) {}

  async proof(request: ProofRequest): Promise<string | null> {
    let state: DPoPState | undefined;
    try {
      state = await this.store.get(this.clientId);
    } catch {
      state = undefined;
    }
    // No key (storage cleared): the caller sends the token as Bearer, the API refuses it, and the
    // renewal that follows makes a new key and a token bound to it.
    if (!state?.keys) return null;
    return makeProof(state.keys, request);
  }
}

/** A DPoP store in memory (tests, and browsers without IndexedDB); same contract as IndexedDbDPoPStore. */
export class MemoryDpopStore implements DPoPStore {
  private readonly states = new Map<string, DPoPState>();
  async set(key: string, value: DPoPState): Promise<void> {
    this.states.set(key, value);
  }
  async get(key: string): Promise<DPoPState> {
    return this.states.get(key) as DPoPState;
  }
  async remove(key: string): Promise<DPoPState> {
    const value = this.states.get(key) as DPoPState;
    this.states.delete(key);
    return value;
  }
  async getAllKeys(): Promise<string[]> {
    return [...this.states.keys()];
  }
}
