/** The bounded fetch every sign-in request and API call goes through, against real loopback servers. */
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { afterEach, describe, expect, it, vi } from "vitest";
import { NetworkError, TimeoutError } from "../api/errors";
import { fetchWithin, within } from "./fetchWithin";
import { hangingServer, until, type HangingServer } from "./frozen.testing";

let server: HangingServer | null = null;

afterEach(async () => {
  vi.useRealTimers();
  await server?.close();
  server = null;
});

const text = (response: Response): Promise<string> => response.text();

describe("fetchWithin", () => {
  it("gives up a request that gets no answer at its bound, as a TimeoutError naming it", async () => {
    server = await hangingServer();
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout"] });
    const url = `${server.origin}/slow`;
    const outcome = fetchWithin(url, { method: "POST", body: "x" }, 12_500, text).catch((e: unknown) => e);
    await until(() => server?.seen.length === 1);
    await vi.advanceTimersByTimeAsync(12_499);
    expect(await Promise.race([outcome, "pending"])).toBe("pending");
    await vi.advanceTimersByTimeAsync(1);
    const error = await outcome;
    expect(error).toBeInstanceOf(TimeoutError);
    expect(error).toBeInstanceOf(NetworkError);
    expect((error as Error).message).toBe(`POST ${url}: no answer within 12.5 s`);
  });

  it("bounds the reading of the answer too: one that stops halfway times out", async () => {
    server = await hangingServer((res) => {
      res.writeHead(200, { "content-type": "application/json", "content-length": "100" });
      res.write('{"issuer": ');
    });
    const error = await fetchWithin(`${server.origin}/half`, {}, 300, text).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(TimeoutError);
    expect((error as Error).message).toMatch(/^GET .*\/half: no answer within 300 ms$/);
  });

  it("answers what `read` makes of an answer in time, and leaves no timer behind", async () => {
    const answering = createServer((_req, res) => res.end("hello"));
    await new Promise<void>((resolve) => answering.listen(0, "127.0.0.1", resolve));
    try {
      vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout"] });
      const port = (answering.address() as AddressInfo).port;
      expect(await fetchWithin(`http://127.0.0.1:${port}/`, {}, 1000, text)).toBe("hello");
      expect(vi.getTimerCount()).toBe(0);
    } finally {
      await new Promise<void>((resolve) => {
        answering.close(() => resolve());
        answering.closeAllConnections();
      });
    }
  });

  it("reports a refused connection as a network failure, not a timeout", async () => {
    server = await hangingServer();
    const origin = server.origin;
    await server.close();
    server = null;
    const error = await fetchWithin(`${origin}/`, {}, 5000, text).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(NetworkError);
    expect(error).not.toBeInstanceOf(TimeoutError);
  });

  it("lets `read`'s own failures through as they are", async () => {
    const answering = createServer((_req, res) => res.end("not json"));
    await new Promise<void>((resolve) => answering.listen(0, "127.0.0.1", resolve));
    try {
      const port = (answering.address() as AddressInfo).port;
      const error = await fetchWithin(`http://127.0.0.1:${port}/`, {}, 1000, (r) => r.json()).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(SyntaxError);
    } finally {
      await new Promise<void>((resolve) => {
        answering.close(() => resolve());
        answering.closeAllConnections();
      });
    }
  });
});

describe("within", () => {
  it("rejects at its bound with a TimeoutError naming the work, not a millisecond before", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout"] });
    const outcome = within(new Promise<string>(() => {}), 15_000, "the token exchange").catch((e: unknown) => e);
    await vi.advanceTimersByTimeAsync(14_999);
    expect(await Promise.race([outcome, "pending"])).toBe("pending");
    await vi.advanceTimersByTimeAsync(1);
    const error = await outcome;
    expect(error).toBeInstanceOf(TimeoutError);
    expect((error as Error).message).toBe("the token exchange: no answer within 15 s");
  });

  it("answers the work's outcome, its failure as it is, and leaves no timer behind", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout"] });
    expect(await within(Promise.resolve("tokens"), 1000, "x")).toBe("tokens");
    const failure = new Error("invalid_grant");
    expect(await within(Promise.reject(failure), 1000, "x").catch((e: unknown) => e)).toBe(failure);
    expect(vi.getTimerCount()).toBe(0);
  });
});
