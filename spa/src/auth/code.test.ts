/** The code flow's DPoP switch: on with a store (the provider advertised ES256), off otherwise. */
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { resolveConfig } from "../config";
import { dpopStoreFor, userManagerSettings } from "./code";
import { MemoryDpopStore } from "./dpop";
import type { Discovery } from "./types";

const config = resolveConfig({}, { origin: "http://localhost:8080", pathname: "/", search: "" });
const discovery: Discovery = {
  issuer: "http://localhost:9000/",
  authorization_endpoint: "http://localhost:9000/authorize",
  token_endpoint: "http://localhost:9000/oauth/token",
  jwks_uri: "http://localhost:9000/.well-known/jwks.json",
};

describe("code flow settings", () => {
  beforeEach(() => vi.stubGlobal("window", { sessionStorage: {} }));
  afterEach(() => vi.unstubAllGlobals());

  it("bind the code and the tokens to the key when given a DPoP store", () => {
    const store = new MemoryDpopStore();
    expect(userManagerSettings(config, discovery, store).dpop).toEqual({ store, bind_authorization_code: true });
  });

  it("stay Bearer without one", () => {
    expect(userManagerSettings(config, discovery).dpop).toBeUndefined();
  });

  it("use no DPoP store for a provider that does not advertise ES256 proofs, or without IndexedDB", () => {
    expect(dpopStoreFor(discovery)).toBeUndefined();
    expect(dpopStoreFor({ ...discovery, dpop_signing_alg_values_supported: ["RS256"] })).toBeUndefined();
    // advertised, but this runtime (Node) has no IndexedDB: still off
    expect(dpopStoreFor({ ...discovery, dpop_signing_alg_values_supported: ["ES256"] })).toBeUndefined();
  });
});
