/**
 * The API client's per-attempt timeout, against a real HTTP server on loopback (node:http) that takes
 * requests and answers nothing, or answers late, or stops halfway through its answer: what a frozen
 * gateway or a hung ingress does. Browsers give a fetch no timeout of their own.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { ApiClient, DEFAULT_REQUEST_TIMEOUT_MS, type TokenSource } from "./client";
import { ApiError, NetworkError, TimeoutError, describeError, isTransient, outcomeUnknown } from "./errors";

type Handler = (req: IncomingMessage, res: ServerResponse, body: string) => void;
let handler: Handler = (_req, res) => res.end();
let server: Server;
let base = "";
/**
 * The timeout of the tests whose attempts must reach the server before they time out (real time, so
 * generous for a loaded computer: a loopback request takes a millisecond or two).
 */
const TIMEOUT_MS = 400;
/** Requests the server took, with the Idempotency-Key they carried. */
let seen: { method: string; url: string; key: string | undefined }[] = [];
/** Answers left hanging, ended after each test so the server can close. */
const hanging: ServerResponse[] = [];

beforeAll(async () => {
  server = createServer((req, res) => {
    let body = "";
    req.on("data", (chunk) => (body += chunk));
    req.on("end", () => {
      seen.push({ method: req.method ?? "", url: req.url ?? "", key: req.headers["idempotency-key"] as string });
      handler(req, res, body);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}/api`;
  // fetch's first use loads its machinery (a good part of a second): not in a test's timeout
  await (await fetch(`${base}/warm-up`)).text();
  seen = [];
});

afterEach(() => {
  vi.useRealTimers();
  for (const res of hanging.splice(0)) res.destroy();
  seen = [];
});

afterAll(
  () =>
    new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections(); // the client's idle keep-alive connections too
    }),
);

const tokens: TokenSource = { accessToken: () => "t1", renew: async () => false };
const hang: Handler = (_req, res) => void hanging.push(res);
const created = (res: ServerResponse, body: string): void => {
  res.writeHead(201, { "content-type": "application/json" });
  res.end(JSON.stringify({ id: "e1", ...JSON.parse(body) }));
};
const entry = { date: "2026-11-23", project: "p", hours: 1, notes: "" };
const until = async (check: () => boolean): Promise<void> => {
  while (!check()) await new Promise((resolve) => setImmediate(resolve));
};

describe("ApiClient request timeout", () => {
  it("gives up an attempt that gets no answer as a TimeoutError: a network failure, outcome unknown", async () => {
    handler = hang;
    const started = Date.now();
    const error = await new ApiClient(base, tokens, { timeoutMs: TIMEOUT_MS }).listApprovals().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(TimeoutError);
    expect(error).toBeInstanceOf(NetworkError);
    expect(isTransient(error)).toBe(true);
    expect(outcomeUnknown(error)).toBe(true); // the request got there: a write may have been stored
    expect(Date.now() - started).toBeGreaterThanOrEqual(TIMEOUT_MS - 10);
    expect(seen).toHaveLength(1);
    expect(describeError(error, "load the queue")).toMatchObject({
      kind: "unavailable",
      title: "The server did not answer",
    });
  });

  it("times out an answer that stops halfway: the timer runs until the body is read", async () => {
    handler = (_req, res) => {
      res.writeHead(200, { "content-type": "application/json", "content-length": "100" });
      res.write('{"items": [');
      hanging.push(res);
    };
    const error = await new ApiClient(base, tokens, { timeoutMs: TIMEOUT_MS }).listApprovals().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(TimeoutError);
  });

  it("leaves an answer within the timeout alone, and a later request has a timer of its own", async () => {
    handler = (_req, res) => setTimeout(() => res.end(JSON.stringify({ items: [] })), 250);
    const api = new ApiClient(base, tokens, { timeoutMs: TIMEOUT_MS });
    expect(await api.listApprovals()).toEqual([]);
    expect(await api.listApprovals()).toEqual([]); // 2 × 250 ms: not one timer for the client
    expect(seen).toHaveLength(2);
  });

  it("retries a create whose attempt timed out with the same Idempotency-Key", async () => {
    handler = (req, res, body) => (seen.length === 1 ? hang(req, res, body) : created(res, body));
    const api = new ApiClient(base, tokens, { timeoutMs: TIMEOUT_MS });
    expect(await api.createEntry(entry, "k-timeout", [10, 10, 10])).toMatchObject({ id: "e1", project: "p" });
    expect(seen.map((s) => s.key)).toEqual(["k-timeout", "k-timeout"]);
  });

  it("ends a create whose every attempt timed out with the outcome unknown, after its retries", async () => {
    handler = hang;
    const api = new ApiClient(base, tokens, { timeoutMs: TIMEOUT_MS });
    const error = await api.createEntry(entry, "k-all", [10, 10, 10]).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(TimeoutError);
    expect(outcomeUnknown(error)).toBe(true);
    expect(seen.map((s) => s.key)).toEqual(["k-all", "k-all", "k-all", "k-all"]);
  });

  it("takes a decision whose timed-out attempt was recorded as done when the retry's 409 shows it", async () => {
    handler = (req, res, body) => {
      if (seen.length === 1) return hang(req, res, body); // recorded; the answer never comes
      res.writeHead(409, { "content-type": "application/problem+json" });
      res.end(JSON.stringify({ status: 409, decision: { decision: "approved", comment: "ok", by: "u1" } }));
    };
    const api = new ApiClient(base, tokens, { timeoutMs: TIMEOUT_MS });
    expect(await api.decide("e1", "approved", "ok", { delaysMs: [10] })).toMatchObject({ decision: "approved" });
    expect(seen.map((s) => s.method)).toEqual(["PUT", "PUT"]);
  });

  it("runs on setTimeout, so a fake clock moves past it without real waiting", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout"] });
    handler = hang;
    const outcome = new ApiClient(base, tokens).listApprovals().catch((e: unknown) => e);
    await until(() => seen.length === 1);
    await vi.advanceTimersByTimeAsync(DEFAULT_REQUEST_TIMEOUT_MS - 1);
    expect(await Promise.race([outcome, "pending"])).toBe("pending");
    await vi.advanceTimersByTimeAsync(1);
    expect(await outcome).toBeInstanceOf(TimeoutError);
  });

  it("still reports other failures as they are", async () => {
    handler = (_req, res) => {
      res.writeHead(504, { "content-type": "application/problem+json" });
      res.end(JSON.stringify({ status: 504, title: "Gateway Timeout" }));
    };
    const error = await new ApiClient(base, tokens, { timeoutMs: 1000 }).listApprovals().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ApiError);
    expect(error).not.toBeInstanceOf(NetworkError);
  });
});
