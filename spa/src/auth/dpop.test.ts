/** DPoP proofs made with WebCrypto (Node's, the same API as the browser's), checked with jose. */
import { calculateJwkThumbprint, decodeProtectedHeader, EmbeddedJWK, jwtVerify } from "jose";
import { DPoPState } from "oidc-client-ts";
import { describe, expect, it } from "vitest";
import {
  accessTokenHash,
  dpopAdvertised,
  DpopSigner,
  generateDpopKeys,
  makeProof,
  MemoryDpopStore,
  proofUrl,
  ServerClock,
} from "./dpop";

describe("DPoP proofs", () => {
  it("are ES256 dpop+jwt with the public key only, for the method, URL, token and nonce", async () => {
    const keys = await generateDpopKeys();
    const proof = await makeProof(keys, {
      method: "post",
      url: "https://app.example/api/timesheets?limit=5#top",
      accessToken: "tok",
      nonce: "n-1",
    });
    const header = decodeProtectedHeader(proof);
    expect(header).toMatchObject({ typ: "dpop+jwt", alg: "ES256" });
    expect(Object.keys(header.jwk ?? {}).sort()).toEqual(["crv", "kty", "x", "y"]); // nothing private
    const { payload } = await jwtVerify(proof, EmbeddedJWK, { typ: "dpop+jwt", algorithms: ["ES256"] });
    expect(payload).toMatchObject({
      htm: "POST",
      htu: "https://app.example/api/timesheets",
      ath: await accessTokenHash("tok"),
      nonce: "n-1",
    });
    expect(Math.abs((payload.iat ?? 0) - Date.now() / 1000)).toBeLessThan(5);
    const again = await makeProof(keys, { method: "GET", url: "https://app.example/api/x" });
    const second = await jwtVerify(again, EmbeddedJWK);
    expect(second.payload.jti).not.toBe(payload.jti); // one proof per request
    expect(second.payload.ath).toBeUndefined();
    expect(await calculateJwkThumbprint(decodeProtectedHeader(again).jwk!)).toBe(
      await calculateJwkThumbprint(header.jwk!),
    );
  });

  it("come from a key that cannot be exported", async () => {
    const keys = await generateDpopKeys();
    expect(keys.privateKey.extractable).toBe(false);
    await expect(crypto.subtle.exportKey("jwk", keys.privateKey)).rejects.toThrow();
  });

  it("ath is base64url(SHA-256(token)) (RFC 9449 example)", async () => {
    expect(await accessTokenHash("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU")).toBe(
      "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo",
    );
  });

  it("htu resolves a relative API path against the page", () => {
    expect(proofUrl("/api/timesheets?from=x", "http://localhost:8080/week")).toBe(
      "http://localhost:8080/api/timesheets",
    );
  });

  it("use the key the OIDC library stored for the client, and none when it is gone", async () => {
    const store = new MemoryDpopStore();
    const signer = new DpopSigner(store, "timesheets-spa");
    expect(await signer.proof({ method: "GET", url: "https://a.example/api" })).toBeNull();
    const keys = await generateDpopKeys();
    await store.set("timesheets-spa", new DPoPState(keys));
    const proof = await signer.proof({ method: "GET", url: "https://a.example/api", accessToken: "t" });
    const jwk = decodeProtectedHeader(proof!).jwk!;
    const exported = await crypto.subtle.exportKey("jwk", keys.publicKey);
    expect(await calculateJwkThumbprint(jwk)).toBe(await calculateJwkThumbprint(exported as never));
  });

  it("are dated by the server's clock as its Date headers tell it", () => {
    const clock = new ServerClock();
    const local = Math.floor(Date.now() / 1000);
    expect(clock.observe(new Date().toUTCString())).toBe(false); // within the header's resolution
    expect(Math.abs(clock.now() - local)).toBeLessThanOrEqual(1);
    expect(clock.observe(new Date(Date.now() - 16 * 60_000).toUTCString())).toBe(true); // our clock is fast
    expect(Math.abs(clock.now() - (local - 960))).toBeLessThanOrEqual(2);
    expect(clock.observe("not a date")).toBe(false);
    expect(clock.observe(new Date().toUTCString())).toBe(true); // and back
    expect(Math.abs(clock.now() - local)).toBeLessThanOrEqual(1);
  });

  it("are on only when the provider advertises ES256", () => {
    expect(dpopAdvertised({ dpop_signing_alg_values_supported: ["ES256", "RS256"] })).toBe(true);
    expect(dpopAdvertised({ dpop_signing_alg_values_supported: ["RS256"] })).toBe(false);
    expect(dpopAdvertised({})).toBe(false);
  });
});
