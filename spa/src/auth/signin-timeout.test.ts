/**
 * Every request of the sign-in is bounded: browsers give a fetch no timeout of their own, so a frozen
 * gateway (serving `/config.json`) or identity provider (discovery, the token exchange, the JWKS)
 * would otherwise leave the page on "Loading Timesheets…" for ever. Each one here goes to a loopback
 * server that takes the request and answers nothing, and must fail within its bound with a timeout
 * (the fake clock moves the bound's length, not real time, where the library's timer is `setTimeout`).
 */
import { OidcClient } from "oidc-client-ts";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { describeError, TimeoutError } from "../api/errors";
import { CONFIG_TIMEOUT_MS, loadConfig, resolveConfig, type AppConfig } from "../config";
import { hangingServer, MemoryStorage, until, type HangingServer } from "../lib/frozen.testing";
import { CodeFlow, userManagerSettings } from "./code";
import { serverClock, syncServerClock } from "./dpop";
import { ImplicitFlow } from "./implicit";
import { describeAuthError } from "./messages";
import { fetchDiscovery } from "./tokens";
import { AuthError, type Discovery } from "./types";

let server: HangingServer;
const realFetch = globalThis.fetch;
const location = { origin: "http://localhost:8080", pathname: "/", search: "" };

beforeEach(async () => {
  server = await hangingServer();
});

afterEach(async () => {
  vi.useRealTimers();
  vi.unstubAllGlobals();
  await server.close();
});

function configFor(requestTimeoutMs: number): AppConfig {
  return resolveConfig({ issuer: `${server.origin}/`, requestTimeoutMs }, location);
}

function discoveryAt(origin: string): Discovery {
  return {
    issuer: `${origin}/`,
    authorization_endpoint: `${origin}/authorize`,
    token_endpoint: `${origin}/oauth/token`,
    jwks_uri: `${origin}/.well-known/jwks.json`,
  };
}

/**
 * A tab back from the provider with a code, the state of the sign-in it started there (as
 * signinRedirect() leaves it) in its storage, and the code flow that will exchange it at `server`.
 */
async function returnedWithCode(
  requestTimeoutMs: number,
): Promise<{ config: AppConfig; discovery: Discovery; flow: CodeFlow }> {
  const config = configFor(requestTimeoutMs);
  const window = {
    location: { href: "", pathname: "/callback" },
    history: { replaceState: vi.fn() },
    sessionStorage: new MemoryStorage(),
  };
  vi.stubGlobal("window", window);
  const discovery = discoveryAt(server.origin);
  const request = await new OidcClient(userManagerSettings(config, discovery)).createSigninRequest({
    request_type: "si:r",
  });
  window.location.href = `${config.redirectUri}?code=c-1&state=${request.state.id}`;
  return { config, discovery, flow: new CodeFlow(config, discovery, undefined) };
}

/**
 * What `call` ends with once the server has its `requests` and the fake clock has moved `boundMs`
 * (checked to be still waiting a millisecond before).
 */
async function endsAt(call: () => Promise<unknown>, boundMs: number, requests = 1): Promise<unknown> {
  vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout"] });
  const outcome = call().then(
    () => "resolved",
    (error: unknown) => error,
  );
  await until(() => server.seen.length >= requests);
  await vi.advanceTimersByTimeAsync(boundMs - 1);
  expect(await Promise.race([outcome, "pending"])).toBe("pending");
  await vi.advanceTimersByTimeAsync(1);
  return outcome;
}

describe("the sign-in's requests to a frozen peer", () => {
  it("/config.json: fails after CONFIG_TIMEOUT_MS, the config not being known yet, saying the server did not answer", async () => {
    vi.stubGlobal("window", { location });
    vi.stubGlobal("sessionStorage", new MemoryStorage());
    // the page's relative URL, sent to the frozen server
    vi.stubGlobal("fetch", (input: string, init?: RequestInit) => realFetch(new URL(input, server.origin), init));
    const error = await endsAt(() => loadConfig(), CONFIG_TIMEOUT_MS);
    expect(error).toBeInstanceOf(TimeoutError); // not the local defaults: they name another provider
    expect(server.seen).toEqual(["GET /config.json"]);
    expect(describeError(error, "load the app's settings")).toMatchObject({
      kind: "unavailable",
      title: "The server did not answer",
    });
  });

  it("OIDC discovery: fails after requestTimeoutMs", async () => {
    const error = await endsAt(() => fetchDiscovery(`${server.origin}/`, 7_000), 7_000);
    expect(error).toBeInstanceOf(TimeoutError);
    expect(server.seen).toEqual(["GET /.well-known/openid-configuration"]);
  });

  it("the code exchange by oidc-client-ts: fails after requestTimeoutMs as an AuthError `timeout`", async () => {
    const { config, discovery, flow } = await returnedWithCode(7_500);
    expect(userManagerSettings(config, discovery).requestTimeoutInSeconds).toBe(7.5);
    const error = await endsAt(() => flow.handleRedirectCallback(), 7_500);
    expect(error).toBeInstanceOf(AuthError);
    expect((error as AuthError).code).toBe("timeout");
    expect(server.seen).toEqual(["POST /oauth/token"]);
    expect(describeAuthError(error)).toMatchObject({
      kind: "unavailable",
      title: "The sign-in service didn't answer",
      text: expect.stringMatching(/sign in again/i),
    });
  });

  it("the code exchange whose answer stops halfway through its body: fails as an AuthError `timeout` too", async () => {
    // oidc-client-ts' own timer ends at the answer's head; the body of a provider frozen mid-answer
    // would be awaited for ever. The exchange as a whole is bounded: two token requests at most (the
    // retry with the provider's DPoP nonce), each within requestTimeoutMs.
    await server.close();
    server = await hangingServer((res) => {
      res.writeHead(200, { "content-type": "application/json", "content-length": "400" });
      res.write('{"access_token": "');
    });
    const { flow } = await returnedWithCode(7_500);
    const error = await endsAt(() => flow.handleRedirectCallback(), 15_000);
    expect(error).toBeInstanceOf(AuthError);
    expect((error as AuthError).code).toBe("timeout");
    expect(server.seen).toEqual(["POST /oauth/token"]);
  });

  it("the server-clock fetch before a DPoP token request: gives up after requestTimeoutMs, keeping the clock", async () => {
    const before = serverClock.now();
    const outcome = await endsAt(() => syncServerClock(6_000, `${server.origin}/config.json`), 6_000);
    expect(outcome).toBe("resolved"); // best effort: the token request follows with the last offset
    expect(serverClock.now() - before).toBeLessThanOrEqual(1);
  });

  it("the JWKS of the Implicit Grant's ID token check: fails after requestTimeoutMs as an AuthError `timeout`", async () => {
    // jose's timer is AbortSignal.timeout, which a fake clock does not move: a short bound, real time
    const config = { ...configFor(1_000), requestTimeoutMs: 300 };
    vi.stubGlobal("sessionStorage", new MemoryStorage());
    const flow = new ImplicitFlow(config, discoveryAt(server.origin));
    const state = "s-1";
    sessionStorage.setItem(
      `tsp.implicit.${state}`,
      JSON.stringify({ nonce: "n", returnTo: "/", createdAt: Date.now() }),
    );
    const part = (value: object): string => Buffer.from(JSON.stringify(value)).toString("base64url");
    const idToken = `${part({ alg: "RS256", kid: "k1" })}.${part({ iss: `${server.origin}/` })}.c2ln`;
    const params = new URLSearchParams({ state, access_token: "a", id_token: idToken, token_type: "Bearer" });
    const started = Date.now();
    const error = await flow.process(params).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(AuthError);
    expect((error as AuthError).code).toBe("timeout");
    expect(Date.now() - started).toBeLessThan(3_000);
    expect(server.seen).toEqual(["GET /.well-known/jwks.json"]);
  });
});
