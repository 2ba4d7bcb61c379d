/** The API client against a real HTTP server on loopback (node:http), not a stubbed fetch. */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ApiClient, type TokenSource } from "./client";
import { ApiError, NetworkError } from "./errors";
import { EmbeddedJWK, jwtVerify } from "jose";
import { accessTokenHash, generateDpopKeys, makeProof, serverClock } from "../auth/dpop";

type Handler = (req: IncomingMessage, res: ServerResponse, body: string) => void;
let handler: Handler = (_req, res) => res.end();
let server: Server;
let base = "";

beforeAll(async () => {
  server = createServer((req, res) => {
    let body = "";
    req.on("data", (chunk) => (body += chunk));
    req.on("end", () => handler(req, res, body));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}/api`;
});

afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));

function problem(res: ServerResponse, status: number, body: object, headers: Record<string, string> = {}): void {
  res.writeHead(status, { "content-type": "application/problem+json", ...headers });
  res.end(JSON.stringify({ status, ...body }));
}

class Tokens implements TokenSource {
  token = "t1";
  renewals = 0;
  refused: (string | null)[] = [];
  constructor(private readonly next: string | null) {}
  accessToken(): string | null {
    return this.token;
  }
  async renew(refused: string | null): Promise<boolean> {
    this.renewals++;
    this.refused.push(refused);
    if (!this.next) return false;
    this.token = this.next;
    return true;
  }
}

/** A DPoP-bound session: proofs from a real non-extractable WebCrypto key. */
class DpopTokens extends Tokens {
  constructor(
    private readonly keys: CryptoKeyPair,
    next: string | null = null,
  ) {
    super(next);
  }
  proof(method: string, url: string, nonce: string | null): Promise<string | null> {
    return makeProof(this.keys, { method, url, accessToken: this.token, nonce });
  }
}

describe("ApiClient", () => {
  it("sends the bearer token and JSON body", async () => {
    let seen: { auth?: string; type?: string; body?: string } = {};
    handler = (req, res, body) => {
      seen = { auth: req.headers.authorization, type: req.headers["content-type"], body };
      res.writeHead(201, { "content-type": "application/json" });
      res.end(JSON.stringify({ id: "e1", ...JSON.parse(body) }));
    };
    const api = new ApiClient(base, new Tokens(null));
    const created = await api.createEntry({ date: "2026-11-27", project: "Apollo", hours: 7.5, notes: "" }, "k1");
    expect(created).toMatchObject({ id: "e1", project: "Apollo" });
    expect(seen).toEqual({ auth: "Bearer t1", type: "application/json", body: expect.stringContaining('"hours":7.5') });
  });

  it("retries a create that failed transiently with the same Idempotency-Key, and stops at a refusal", async () => {
    const keys: (string | undefined)[] = [];
    const answers = [502, 504, 503, 201];
    handler = (req, res, body) => {
      keys.push(req.headers["idempotency-key"] as string | undefined);
      const status = answers.shift() ?? 201;
      if (status !== 201) return problem(res, status, { title: "Unavailable" }, { "retry-after": "0" });
      res.writeHead(201, { "content-type": "application/json" });
      res.end(JSON.stringify({ id: "e1", ...JSON.parse(body) }));
    };
    const api = new ApiClient(base, new Tokens(null));
    const entry = { date: "2026-11-27", project: "Apollo", hours: 1, notes: "" };
    expect(await api.createEntry(entry, "same-key", [0, 0, 0])).toMatchObject({ id: "e1" });
    expect(keys).toEqual(["same-key", "same-key", "same-key", "same-key"]);

    // a broken connection is retried too; the last transient failure stands when the retries run out
    let calls = 0;
    handler = (req) => {
      calls++;
      req.socket.destroy();
    };
    expect(await api.createEntry(entry, "k3", [0]).catch((e: unknown) => e)).toBeInstanceOf(NetworkError);
    expect(calls).toBe(2);

    // a refusal is final at once
    calls = 0;
    handler = (_req, res) => {
      calls++;
      problem(res, 422, { errors: [{ field: "hours", message: "too many" }] });
    };
    expect(await api.createEntry(entry, "k4", [0, 0]).catch((e: ApiError) => e.status)).toBe(422);
    expect(calls).toBe(1);
  });

  it("retries a delete whose answer was lost, and takes the retry's 404 as done", async () => {
    const answers = [504, 404];
    handler = (_req, res) => problem(res, answers.shift() ?? 404, { title: "x" }, { "retry-after": "0" });
    const api = new ApiClient(base, new Tokens(null));
    await expect(api.deleteEntry("e1", [0])).resolves.toBeUndefined();
    // a first answer of 404 is the entry missing
    handler = (_req, res) => problem(res, 404, { title: "Not Found" });
    expect(await api.deleteEntry("e1", [0]).catch((e: ApiError) => e.status)).toBe(404);
  });

  it("retries a decision whose answer was lost, and takes the retry's 409 with the same decision as done", async () => {
    const recorded = { decision: "approved", comment: "ok", by: { subject: "bob" } };
    const answers = [502, 409];
    handler = (_req, res) => {
      const status = answers.shift() ?? 409;
      problem(res, status, status === 409 ? { decision: recorded } : {}, { "retry-after": "0" });
    };
    const api = new ApiClient(base, new Tokens(null));
    expect(await api.decide("e1", "approved", "ok", { delaysMs: [0] })).toEqual(recorded);
    // someone else's decision (another verdict), or a 409 at the first attempt, stands
    answers.push(502, 409);
    expect(await api.decide("e1", "rejected", "no", { delaysMs: [0] }).catch((e: ApiError) => e.status)).toBe(409);
    expect(await api.decide("e1", "approved", "ok", { delaysMs: [0] }).catch((e: ApiError) => e.status)).toBe(409);
  });

  it("knows its approver's own decision in a 409, at the first attempt too, and no one else's", async () => {
    let recorded: object = { decision: "approved", comment: "ok", by: { subject: "local|bob", name: "Bob" } };
    const answers: number[] = [];
    let calls = 0;
    handler = (_req, res) => {
      calls++;
      const status = answers.shift() ?? 409;
      problem(res, status, status === 409 ? { decision: recorded } : {}, { "retry-after": "0" });
    };
    const api = new ApiClient(base, new Tokens(null));
    // pressed again after every answer to the first press was lost: the 409 is bob's own decision
    expect(await api.decide("e1", "approved", "ok", { by: "local|bob", delaysMs: [0] })).toEqual(recorded);
    expect(calls).toBe(1);
    // the same verdict and comment by someone else, even after a retry: not bob's decision
    recorded = { decision: "approved", comment: "ok", by: { subject: "local|carol" } };
    answers.push(502);
    const refused = await api.decide("e1", "approved", "ok", { by: "local|bob", delaysMs: [0] }).catch((e) => e);
    expect(refused).toBeInstanceOf(ApiError);
    expect((refused as ApiError).status).toBe(409);
    // bob's own, but another comment: what was recorded is not what he asked for now
    recorded = { decision: "approved", comment: "fine", by: { subject: "local|bob" } };
    expect(await api.decide("e1", "approved", "ok", { by: "local|bob" }).catch((e: ApiError) => e.status)).toBe(409);
  });

  it("renews once on 401 and retries with the new token", async () => {
    const auths: (string | undefined)[] = [];
    handler = (req, res) => {
      auths.push(req.headers.authorization);
      if (req.headers.authorization !== "Bearer t2") return problem(res, 401, { title: "Unauthorized" });
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ items: [], next_cursor: null }));
    };
    const tokens = new Tokens("t2");
    await new ApiClient(base, tokens).listApprovals();
    expect(auths).toEqual(["Bearer t1", "Bearer t2"]);
    expect(tokens.renewals).toBe(1);
    expect(tokens.refused).toEqual(["t1"]); // the session tells a stale token from a fresh one by it
  });

  it("gives up with a 401 ApiError when renewal fails", async () => {
    handler = (_req, res) =>
      problem(res, 401, { title: "Unauthorized" }, { "www-authenticate": 'Bearer error="invalid_token"' });
    const error = await new ApiClient(base, new Tokens(null)).listApprovals().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ApiError);
    expect((error as ApiError).status).toBe(401);
  });

  it("reads 403 scope, 409 detail, 422 field errors and 429 Retry-After", async () => {
    const api = new ApiClient(base, new Tokens(null));
    handler = (_req, res) =>
      problem(
        res,
        403,
        { title: "Forbidden" },
        { "www-authenticate": 'Bearer error="insufficient_scope", scope="read:audit"' },
      );
    expect(await api.verifyChain().catch((e: ApiError) => e.missingScope)).toBe("read:audit");
    handler = (_req, res) => problem(res, 409, { title: "Conflict", detail: "An approved entry cannot be deleted." });
    expect(await api.deleteEntry("e1").catch((e: ApiError) => e.message)).toBe("An approved entry cannot be deleted.");
    handler = (_req, res) => problem(res, 422, { errors: [{ field: "hours", loc: ["hours"], message: "too many" }] });
    const invalid = (await api
      .createEntry({ date: "x", project: "p", hours: 30, notes: "" }, "k2", [0, 0])
      .catch((e: unknown) => e)) as ApiError;
    expect(invalid.fieldErrors).toEqual({ hours: "too many" });
    handler = (_req, res) => problem(res, 429, {}, { "retry-after": "3" });
    expect(await api.listApprovals().catch((e: ApiError) => e.retryAfterSeconds)).toBe(3);
  });

  it("verifies from the newest checkpoint when the whole chain is too long to walk on request", async () => {
    const urls: string[] = [];
    const ranged = { ok: true, checked: 11, range: { from_seq: 3000, to_seq: 3010, to_head: true } };
    handler = (req, res) => {
      urls.push(req.url ?? "");
      if (req.url?.includes("from_checkpoint=latest")) {
        res.writeHead(200, { "content-type": "application/json" });
        res.end(JSON.stringify(ranged));
      } else {
        problem(res, 422, { detail: "too long", errors: [{ field: "query", message: "x", type: "chain_too_long" }] });
      }
    };
    const api = new ApiClient(base, new Tokens(null));
    expect(await api.verifyChain()).toEqual(ranged);
    expect(urls).toEqual(["/api/audit/verify", "/api/audit/verify?from_checkpoint=latest"]);
    // no checkpoint to start from (422 naming from_checkpoint): the first refusal is the one to show
    handler = (req, res) =>
      req.url?.includes("from_checkpoint")
        ? problem(res, 422, { errors: [{ field: "from_checkpoint", message: "none yet", type: "bad_range" }] })
        : problem(res, 422, { detail: "too long", errors: [{ field: "query", message: "x", type: "chain_too_long" }] });
    expect(await api.verifyChain().catch((e: ApiError) => e.message)).toBe("too long");
    // any other refusal of the whole walk is not retried
    urls.length = 0;
    handler = (req, res) => {
      urls.push(req.url ?? "");
      problem(res, 503, { detail: "busy" }, { "retry-after": "5" });
    };
    expect(await api.verifyChain().catch((e: ApiError) => e.status)).toBe(503);
    expect(urls).toEqual(["/api/audit/verify"]);
  });

  it("follows next_cursor and encodes ids and queries", async () => {
    const urls: string[] = [];
    handler = (req, res) => {
      urls.push(req.url ?? "");
      const page = new URL(req.url ?? "", "http://x").searchParams.get("cursor");
      res.writeHead(200, { "content-type": "application/json" });
      res.end(
        JSON.stringify(
          page ? { items: [{ id: "b" }], next_cursor: null } : { items: [{ id: "a" }], next_cursor: "c/1" },
        ),
      );
    };
    const entries = await new ApiClient(base, new Tokens(null)).listEntries("2026-11-23", "2026-11-29");
    expect(entries.map((e) => e.id)).toEqual(["a", "b"]);
    expect(urls).toEqual([
      "/api/timesheets?from=2026-11-23&to=2026-11-29&limit=100",
      "/api/timesheets?from=2026-11-23&to=2026-11-29&limit=100&cursor=c%2F1",
    ]);
    handler = (req, res) => {
      urls.push(req.url ?? "");
      res.writeHead(204);
      res.end();
    };
    await new ApiClient(base, new Tokens(null)).deleteEntry("../x?y");
    expect(urls.at(-1)).toBe("/api/timesheets/..%2Fx%3Fy");
  });

  it("sends a DPoP-bound token with a fresh proof for each request", async () => {
    const keys = await generateDpopKeys();
    const tokens = new DpopTokens(keys);
    const seen: { auth?: string; proof?: string; url?: string; method?: string }[] = [];
    handler = (req, res) => {
      seen.push({
        auth: req.headers.authorization,
        proof: req.headers.dpop as string,
        url: req.url,
        method: req.method,
      });
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ items: [], next_cursor: null }));
    };
    const api = new ApiClient(base, tokens);
    await api.listApprovals();
    await api.listApprovals();
    expect(seen.map((s) => s.auth)).toEqual(["DPoP t1", "DPoP t1"]);
    const claims = await Promise.all(seen.map(async (s) => (await jwtVerify(s.proof!, EmbeddedJWK)).payload));
    expect(claims[0]).toMatchObject({ htm: "GET", htu: `${base}/approvals`, ath: await accessTokenHash("t1") });
    expect(claims[0]!.nonce).toBeUndefined();
    expect(claims[0]!.jti).not.toBe(claims[1]!.jti);
  });

  it("retries once with the gateway's DPoP-Nonce, then keeps using the newest nonce", async () => {
    const tokens = new DpopTokens(await generateDpopKeys());
    const nonces: unknown[] = [];
    handler = async (req, res) => {
      const { payload } = await jwtVerify(req.headers.dpop as string, EmbeddedJWK);
      nonces.push(payload.nonce);
      if (payload.nonce !== "n-1" && payload.nonce !== "n-2") {
        return problem(
          res,
          401,
          { title: "Unauthorized" },
          { "www-authenticate": 'DPoP error="use_dpop_nonce", algs="ES256"', "dpop-nonce": "n-1" },
        );
      }
      res.writeHead(200, { "content-type": "application/json", "dpop-nonce": "n-2" });
      res.end(JSON.stringify({ items: [], next_cursor: null }));
    };
    const api = new ApiClient(base, tokens);
    await api.listApprovals();
    await api.listApprovals();
    expect(nonces).toEqual([undefined, "n-1", "n-2"]);
    expect(tokens.renewals).toBe(0);
  });

  it("retries a proof refused for its iat once it knows the server's time from the answer's Date", async () => {
    const tokens = new DpopTokens(await generateDpopKeys());
    const serverNow = Date.now() - 16 * 60_000; // this computer's clock is 16 minutes fast
    const iats: number[] = [];
    handler = async (req, res) => {
      const { payload } = await jwtVerify(req.headers.dpop as string, EmbeddedJWK);
      iats.push(payload.iat!);
      const date = new Date(serverNow).toUTCString();
      if (Math.abs(payload.iat! - serverNow / 1000) > 30)
        return problem(
          res,
          401,
          { reason: "dpop_iat" },
          { date, "www-authenticate": 'DPoP error="invalid_dpop_proof", algs="ES256"' },
        );
      res.writeHead(200, { "content-type": "application/json", date });
      res.end(JSON.stringify({ items: [], next_cursor: null }));
    };
    try {
      await new ApiClient(base, tokens).listApprovals();
      expect(iats).toHaveLength(2);
      expect(Math.abs(iats[1]! - serverNow / 1000)).toBeLessThan(5);
      expect(tokens.renewals).toBe(0);
    } finally {
      serverClock.observe(new Date().toUTCString());
    }
  });

  it("renews when a DPoP proof is refused for another reason", async () => {
    const tokens = new DpopTokens(await generateDpopKeys(), "t2");
    const auths: (string | undefined)[] = [];
    handler = (req, res) => {
      auths.push(req.headers.authorization);
      if (req.headers.authorization !== "DPoP t2")
        return problem(res, 401, { reason: "dpop_key_mismatch" }, { "www-authenticate": 'DPoP error="invalid_token"' });
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ items: [], next_cursor: null }));
    };
    await new ApiClient(base, tokens).listApprovals();
    expect(auths).toEqual(["DPoP t1", "DPoP t2"]);
    expect(tokens.renewals).toBe(1);
  });

  it("reports an unreachable server as a NetworkError", async () => {
    const error = await new ApiClient("http://127.0.0.1:9/api", new Tokens(null))
      .listApprovals()
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(NetworkError);
  });
});
