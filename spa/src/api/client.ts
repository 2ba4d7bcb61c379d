/**
 * The one place the app talks to the API: adds the access token, parses problem+json answers into
 * `ApiError`, and on a 401 asks the session to renew silently once and retries the call before giving up.
 *
 * A DPoP-bound token goes as `Authorization: DPoP <token>` with a fresh proof per request (RFC 9449);
 * the gateway's latest `DPoP-Nonce` is put in the next proofs, and a `use_dpop_nonce` refusal is
 * retried once with the nonce it brought; so is a refused proof when the answer's `Date` shows that
 * this computer's clock is off (proofs are dated by the server's clock). Other tokens go as `Bearer`.
 *
 * Every attempt is bounded by `timeoutMs` (config.json `requestTimeoutMs`): browsers give a fetch no
 * timeout of their own, so a gateway that accepts the connection and then answers nothing (a frozen
 * pod, a hung ingress) would leave the page saying "Adding…" forever. The attempt is aborted and fails
 * as a `TimeoutError`, a network failure: retried where the call retries, and a write's outcome is
 * unknown (it may have reached the service). The bound is `fetchWithin`'s (lib/fetchWithin.ts), the
 * one the sign-in's own requests have too: a test's fake clock moves past it as past the retries' waits.
 */
import { serverClock } from "../auth/dpop";
import { fetchWithin } from "../lib/fetchWithin";
import { ApiError, isTransient, missingScopeFrom, problemType, type Problem } from "./errors";
import type { AuditEvent, ChainVerification, Entry, NewEntry, Page } from "./types";

export interface TokenSource {
  /** The current access token, or null when signed out. */
  accessToken(): string | null;
  /**
   * Try to get a fresh token without user interaction because the API refused `refused`; resolves
   * true when there is another token to retry with (a renewal may already have replaced it).
   */
  renew(refused: string | null): Promise<boolean>;
  /** A DPoP proof for `method url` when the current token is DPoP-bound; null (or absent) for Bearer. */
  proof?(method: string, url: string, nonce: string | null): Promise<string | null>;
}

/**
 * Whether a refused proof is worth one more try: RFC 9449 §9's `use_dpop_nonce` (the nonce came in
 * `DPoP-Nonce`), or `invalid_dpop_proof` while the answer moved our idea of the server's clock.
 */
function worthAnotherProof(response: Response, clockMoved: boolean): boolean {
  if (response.status !== 401) return false;
  const challenge = response.headers.get("www-authenticate") ?? "";
  if (/error="use_dpop_nonce"/.test(challenge)) return response.headers.has("dpop-nonce");
  return clockMoved && /error="invalid_dpop_proof"/.test(challenge);
}

type Query = Record<string, string | number | undefined | null>;

/**
 * How long a create waits before each new attempt after a transient failure (a broken connection,
 * 502, 503, 504): three more tries within a few seconds, each after the answer's `Retry-After` when
 * that is longer (at most `MAX_RETRY_WAIT_MS`). With the same `Idempotency-Key` every attempt is the
 * same request to the service: one that was stored and only lost its answer is replayed, not stored
 * again.
 */
export const CREATE_RETRY_DELAYS_MS: readonly number[] = [500, 1500, 3000];
export const MAX_RETRY_WAIT_MS = 5000;

/**
 * How long one attempt waits for its whole answer when config.json does not say (a gateway from before
 * `requestTimeoutMs`): above the gateway's own worst case with its default settings (JWKS fetch 5 s,
 * pool wait 1 s, connect 2 s, upstream read 30 s: it answers 503/504 by then), so a slow service gets
 * the gateway's answer, not the client's guess.
 */
export const DEFAULT_REQUEST_TIMEOUT_MS = 45_000;

/** A fresh `Idempotency-Key` for one entry the user submits (kept across that entry's retries). */
export function newIdempotencyKey(): string {
  return crypto.randomUUID();
}

/** An answer, its body, and the access token its request carried (null when signed out). */
interface Sent {
  response: Response;
  text: string;
  token: string | null;
}

export class ApiClient {
  /** The last `DPoP-Nonce` the API handed out (the gateway's nonces are its own, not the provider's). */
  private nonce: string | null = null;
  private clockMoved = false;

  private readonly timeoutMs: number;

  constructor(
    private readonly base: string,
    private readonly tokens: TokenSource,
    { timeoutMs = DEFAULT_REQUEST_TIMEOUT_MS }: { timeoutMs?: number } = {},
  ) {
    this.timeoutMs = timeoutMs;
  }

  private url(path: string, query?: Query): string {
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(query ?? {})) {
      if (value !== undefined && value !== null && value !== "") params.set(key, String(value));
    }
    const qs = params.toString();
    return `${this.base}${path}${qs ? `?${qs}` : ""}`;
  }

  /**
   * Sends one request and reads its answer within `timeoutMs`; answers with the token it carried,
   * which a 401 refused. The timer runs until the body is read: a gateway may freeze mid-answer.
   */
  private async send(method: string, url: string, body: unknown, extra: Record<string, string>): Promise<Sent> {
    const token = this.tokens.accessToken();
    const headers: Record<string, string> = { ...extra, accept: "application/json, application/problem+json" };
    if (token) {
      const proof = this.tokens.proof ? await this.tokens.proof(method, url, this.nonce) : null;
      headers.authorization = `${proof ? "DPoP" : "Bearer"} ${token}`;
      if (proof) headers.dpop = proof;
    }
    if (body !== undefined) headers["content-type"] = "application/json";
    const [response, text] = await fetchWithin(
      url,
      { method, headers, body: body === undefined ? null : JSON.stringify(body), credentials: "omit" },
      this.timeoutMs,
      async (answer) => [answer, answer.status === 204 ? "" : await answer.text()] as const,
    );
    this.nonce = response.headers.get("dpop-nonce") ?? this.nonce;
    this.clockMoved = serverClock.observe(response.headers.get("date"));
    return { response, text, token };
  }

  /** Sends once more when the gateway asked for its nonce, or refused a proof dated by a wrong clock. */
  private async sendWithNonce(
    method: string,
    url: string,
    body: unknown,
    extra: Record<string, string>,
  ): Promise<Sent> {
    const sent = await this.send(method, url, body, extra);
    return worthAnotherProof(sent.response, this.clockMoved) ? this.send(method, url, body, extra) : sent;
  }

  async request<T>(
    method: string,
    path: string,
    options: { query?: Query; body?: unknown; headers?: Record<string, string> } = {},
  ): Promise<T> {
    const url = this.url(path, options.query);
    const extra = options.headers ?? {};
    let sent = await this.sendWithNonce(method, url, options.body, extra);
    if (sent.response.status === 401 && (await this.tokens.renew(sent.token))) {
      sent = await this.sendWithNonce(method, url, options.body, extra);
    }
    const { response, text } = sent;
    if (response.status === 204) return undefined as T;
    let parsed: unknown = null;
    if (text) {
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = null;
      }
    }
    if (!response.ok) {
      const problem: Problem =
        parsed && typeof parsed === "object"
          ? (parsed as Problem)
          : { status: response.status, title: response.statusText };
      const retryAfter = Number(response.headers.get("retry-after"));
      throw new ApiError(
        response.status,
        problem,
        missingScopeFrom(response.headers.get("www-authenticate")),
        Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter : null,
      );
    }
    return parsed as T;
  }

  /** Follows `next_cursor` until the list is complete (bounded, so a bad server cannot loop us). */
  async all<T>(path: string, query: Query = {}, maxPages = 20): Promise<T[]> {
    const items: T[] = [];
    let cursor: string | null | undefined;
    for (let page = 0; page < maxPages; page++) {
      const answer = await this.request<Page<T>>("GET", path, { query: { ...query, cursor } });
      items.push(...(answer.items ?? []));
      cursor = answer.next_cursor;
      if (!cursor) break;
    }
    return items;
  }

  listEntries(from: string, to: string): Promise<Entry[]> {
    return this.all<Entry>("/timesheets", { from, to, limit: 100 });
  }

  /**
   * Creates an entry with `idempotencyKey` (one per entry the user submits: the form keeps it while
   * the same entry is submitted again), retrying transient failures with the same key: a create whose
   * answer was lost (a proxy's 504, a reset connection) is stored once, never twice, and one the
   * service never got is stored when it answers again within the retries.
   */
  createEntry(
    entry: NewEntry,
    idempotencyKey: string,
    delaysMs: readonly number[] = CREATE_RETRY_DELAYS_MS,
  ): Promise<Entry> {
    return retrying(
      () => this.request<Entry>("POST", "/timesheets", { body: entry, headers: { "idempotency-key": idempotencyKey } }),
      delaysMs,
    );
  }

  /**
   * Deletes an entry, retrying transient failures like `createEntry` (a DELETE is idempotent). A 404
   * to a retry means that an attempt whose answer was lost deleted it: the delete succeeded.
   */
  async deleteEntry(id: string, delaysMs: readonly number[] = CREATE_RETRY_DELAYS_MS): Promise<void> {
    let attempts = 0;
    try {
      await retrying(() => {
        attempts++;
        return this.request<void>("DELETE", `/timesheets/${encodeURIComponent(id)}`);
      }, delaysMs);
    } catch (error) {
      if (error instanceof ApiError && error.status === 404 && attempts > 1) return;
      throw error;
    }
  }

  listApprovals(): Promise<Entry[]> {
    return this.all<Entry>("/approvals", { limit: 100 });
  }

  /**
   * Decides an entry, retrying transient failures like `createEntry` (the approvals service takes the
   * same approver's same decision again as a retry: the PUT names the entry, and the service keeps
   * one decision per entry, whose id it chooses). Once a decision is recorded, every further PUT is a
   * 409 carrying it: when it is `by` this approver with the same verdict and comment, it is this
   * decision, made by an attempt whose answer was lost — this call's or an earlier one's (the user
   * pressed Approve again after being told the outcome was unknown) — and it is done. Someone else's
   * decision stands as the 409 it is, even when it reads the same. Without `by`, only a retry's 409
   * is taken as done.
   */
  async decide(
    id: string,
    decision: "approved" | "rejected",
    comment: string,
    { by = null, delaysMs = CREATE_RETRY_DELAYS_MS }: { by?: string | null; delaysMs?: readonly number[] } = {},
  ): Promise<unknown> {
    let attempts = 0;
    try {
      return await retrying(() => {
        attempts++;
        return this.request("PUT", `/approvals/${encodeURIComponent(id)}`, {
          body: comment ? { decision, comment } : { decision },
        });
      }, delaysMs);
    } catch (error) {
      const existing = error instanceof ApiError && error.status === 409 ? error.problem.decision : null;
      const recorded = existing && typeof existing === "object" ? (existing as Record<string, unknown>) : null;
      const same = recorded !== null && recorded.decision === decision && (recorded.comment ?? "") === comment;
      if (same && (by !== null ? subjectOf(recorded.by) === by : attempts > 1)) return recorded;
      throw error;
    }
  }

  auditEvents(query: Query, cursor?: string | null): Promise<Page<AuditEvent>> {
    return this.request<Page<AuditEvent>>("GET", "/audit/events", { query: { ...query, cursor, limit: 50 } });
  }

  /**
   * The whole chain verified; or, when the audit service will not walk it whole on request (422
   * `chain_too_long`: the trail is too long), the range from the newest signed checkpoint to the newest
   * event (the answer's `range` says so). Without a checkpoint to start from, the first refusal stands.
   */
  async verifyChain(): Promise<ChainVerification> {
    try {
      return await this.request<ChainVerification>("GET", "/audit/verify");
    } catch (error) {
      if (!(error instanceof ApiError) || problemType(error) !== "chain_too_long") throw error;
      try {
        return await this.request<ChainVerification>("GET", "/audit/verify", {
          query: { from_checkpoint: "latest" },
        });
      } catch (second) {
        throw second instanceof ApiError && second.status === 422 ? error : second;
      }
    }
  }
}

/** The subject of a decision's `by` (a person object, or a bare subject), if it has one. */
function subjectOf(person: unknown): string | null {
  if (typeof person === "string") return person;
  if (typeof person !== "object" || person === null) return null;
  const subject = (person as Record<string, unknown>).subject;
  return typeof subject === "string" ? subject : null;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** `call` again after each delay while it fails transiently (`isTransient`); the last failure stands. */
async function retrying<T>(call: () => Promise<T>, delaysMs: readonly number[]): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await call();
    } catch (error) {
      const delay = delaysMs[attempt];
      if (delay === undefined || !isTransient(error)) throw error;
      const asked = error instanceof ApiError && error.retryAfterSeconds ? error.retryAfterSeconds * 1000 : 0;
      await sleep(Math.min(Math.max(delay, asked), MAX_RETRY_WAIT_MS));
    }
  }
}
