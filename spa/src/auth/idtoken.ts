/**
 * ID token checks for the Implicit Grant, where the tokens arrive in the URL fragment and nothing but the
 * token's own signature vouches for them (OIDC Core §3.2.2.11): signature against the provider's JWKS,
 * `iss`, `aud`/`azp`, `exp`/`iat`, the `nonce` this tab generated, and `at_hash` binding the access token.
 */
import { errors, jwtVerify, type JWTPayload, type JWTVerifyGetKey } from "jose";
import { AuthError } from "./types";

export const ALLOWED_ALGORITHMS = ["RS256", "PS256", "ES256", "ES384", "RS384", "RS512", "PS384", "PS512", "EdDSA"];

const HASH_FOR_ALG: Record<string, string> = {
  RS256: "SHA-256",
  PS256: "SHA-256",
  ES256: "SHA-256",
  RS384: "SHA-384",
  PS384: "SHA-384",
  ES384: "SHA-384",
  RS512: "SHA-512",
  PS512: "SHA-512",
  ES512: "SHA-512",
  EdDSA: "SHA-512",
};

function base64url(bytes: Uint8Array): string {
  let text = "";
  for (const byte of bytes) text += String.fromCharCode(byte);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** `at_hash`: base64url of the left half of the hash of the access token (OIDC Core §3.2.2.9). */
export async function atHash(accessToken: string, alg: string): Promise<string> {
  const hash = HASH_FOR_ALG[alg];
  if (!hash) throw new AuthError("invalid_id_token", `no at_hash rule for alg ${alg}`);
  const digest = new Uint8Array(await crypto.subtle.digest(hash, new TextEncoder().encode(accessToken)));
  return base64url(digest.slice(0, digest.length / 2));
}

export interface IdTokenExpectations {
  issuer: string;
  clientId: string;
  nonce: string;
  /** When given, `at_hash` must be present and match. */
  accessToken?: string;
  clockToleranceSeconds?: number;
  currentDate?: Date;
}

export async function validateIdToken(
  idToken: string,
  keys: JWTVerifyGetKey,
  expect: IdTokenExpectations,
): Promise<JWTPayload> {
  let payload: JWTPayload;
  let alg: string;
  try {
    const result = await jwtVerify(idToken, keys, {
      issuer: expect.issuer,
      audience: expect.clientId,
      algorithms: ALLOWED_ALGORITHMS,
      clockTolerance: expect.clockToleranceSeconds ?? 60,
      requiredClaims: ["iss", "sub", "aud", "exp", "iat"],
      ...(expect.currentDate ? { currentDate: expect.currentDate } : {}),
    });
    payload = result.payload;
    alg = result.protectedHeader.alg;
  } catch (error) {
    // the provider's keys did not come in time: nothing was checked, so nothing was found wrong
    if (error instanceof errors.JWKSTimeout)
      throw new AuthError("timeout", "the sign-in service's keys did not come in time");
    throw new AuthError("invalid_id_token", error instanceof Error ? error.message : String(error));
  }
  const audiences = Array.isArray(payload.aud) ? payload.aud : [payload.aud];
  if (audiences.length > 1 && payload.azp !== expect.clientId) {
    throw new AuthError("invalid_id_token", "azp does not name this client");
  }
  if (payload.azp !== undefined && payload.azp !== expect.clientId) {
    throw new AuthError("invalid_id_token", "azp does not name this client");
  }
  if (typeof payload.nonce !== "string" || payload.nonce !== expect.nonce) {
    throw new AuthError("invalid_id_token", "nonce does not match the sign-in request");
  }
  if (expect.accessToken !== undefined) {
    if (typeof payload.at_hash !== "string") throw new AuthError("invalid_id_token", "at_hash missing");
    if (payload.at_hash !== (await atHash(expect.accessToken, alg))) {
      throw new AuthError("invalid_id_token", "at_hash does not match the access token");
    }
  }
  return payload;
}
