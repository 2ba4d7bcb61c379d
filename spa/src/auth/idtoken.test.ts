import { SignJWT, createLocalJWKSet, exportJWK, generateKeyPair } from "jose";
import { beforeAll, describe, expect, it } from "vitest";
import { atHash, validateIdToken } from "./idtoken";
import { AuthError } from "./types";

const ISSUER = "http://localhost:9000/";
const CLIENT = "timesheets-spa";
const ACCESS = "the-access-token";

let keys: ReturnType<typeof createLocalJWKSet>;
let signing: CryptoKey;
let otherKey: CryptoKey;

beforeAll(async () => {
  const pair = await generateKeyPair("RS256", { extractable: true });
  const other = await generateKeyPair("RS256");
  signing = pair.privateKey;
  otherKey = other.privateKey;
  const jwk = { ...(await exportJWK(pair.publicKey)), kid: "k1", alg: "RS256", use: "sig" };
  keys = createLocalJWKSet({ keys: [jwk] });
});

async function idToken(claims: Record<string, unknown>, key: CryptoKey = signing): Promise<string> {
  return new SignJWT({ nonce: "n-1", at_hash: await atHash(ACCESS, "RS256"), ...claims })
    .setProtectedHeader({ alg: "RS256", kid: "k1" })
    .setIssuer(ISSUER)
    .setAudience(CLIENT)
    .setSubject("alice")
    .setIssuedAt()
    .setExpirationTime("5m")
    .sign(key);
}

const expect_ = { issuer: ISSUER, clientId: CLIENT, nonce: "n-1", accessToken: ACCESS };

async function failure(token: string, overrides: Partial<typeof expect_> = {}): Promise<string> {
  try {
    await validateIdToken(token, keys, { ...expect_, ...overrides });
  } catch (error) {
    expect(error).toBeInstanceOf(AuthError);
    return (error as AuthError).description ?? "";
  }
  throw new Error("accepted");
}

describe("validateIdToken", () => {
  it("accepts a correct token", async () => {
    const claims = await validateIdToken(await idToken({}), keys, expect_);
    expect(claims.sub).toBe("alice");
  });

  it("computes at_hash as OIDC Core specifies", async () => {
    // Example from OIDC Core Appendix A.3/A.4 style: left half of SHA-256, base64url.
    expect(await atHash("jHkWEdUXMU1BwAsC4vtUsZwnNvTIxEl0z9K3vx5KF0Y", "RS256")).toBe("77QmUPtjPfzWtF2AnpK9RQ");
  });

  it("refuses a wrong nonce, audience, issuer, signature, at_hash or expiry", async () => {
    expect(await failure(await idToken({ nonce: "other" }))).toMatch(/nonce/);
    expect(await failure(await idToken({ nonce: undefined }))).toMatch(/nonce/);
    expect(await failure(await idToken({}), { clientId: "partner-spa" })).toMatch(/aud/);
    expect(await failure(await idToken({}), { issuer: "https://evil/" })).toMatch(/iss/);
    expect(await failure(await idToken({}, otherKey))).toMatch(/signature/);
    expect(await failure(await idToken({ at_hash: "AAAAAAAAAAAAAAAAAAAAAA" }))).toMatch(/at_hash/);
    expect(await failure(await idToken({ at_hash: undefined }))).toMatch(/at_hash/);
    expect(await failure(await idToken({ azp: "someone-else" }))).toMatch(/azp/);
    const old = await new SignJWT({ nonce: "n-1" })
      .setProtectedHeader({ alg: "RS256", kid: "k1" })
      .setIssuer(ISSUER)
      .setAudience(CLIENT)
      .setSubject("alice")
      .setIssuedAt(Math.floor(Date.now() / 1000) - 7200)
      .setExpirationTime(Math.floor(Date.now() / 1000) - 3600)
      .sign(signing);
    expect(await failure(old)).toMatch(/exp/);
  });

  it("refuses alg none", async () => {
    const enc = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64url");
    const unsigned = `${enc({ alg: "none" })}.${enc({ iss: ISSUER, aud: CLIENT, sub: "a", nonce: "n-1", exp: 9e9, iat: 1 })}.`;
    await failure(unsigned);
  });
});
