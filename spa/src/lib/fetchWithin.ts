/**
 * `fetch` with a bound: browsers give a request no timeout of their own, so a peer that accepts the
 * connection and then answers nothing (a frozen pod, a hung ingress, a stopped identity provider)
 * would leave the caller waiting for ever. The bound covers the whole answer, body included (`read`
 * runs inside it: a peer may freeze halfway through its answer).
 *
 * The timer is a `setTimeout` driving an `AbortController` (not `AbortSignal.timeout`), so a test's
 * fake clock, or the page clock of the browser tests, moves past it as past every other wait.
 *
 * Used by the API client (each attempt) and by the sign-in's own requests: `/config.json`, OIDC
 * discovery, the server-clock fetch before a DPoP token request. The token requests go through
 * oidc-client-ts, bounded by its `requestTimeoutInSeconds` — whose timer ends at the answer's head, so
 * the exchange as a whole is bounded as well (`within`); the Implicit Grant's JWKS through jose, bounded
 * by its `timeoutDuration` (all set from the same `requestTimeoutMs`).
 */
import { NetworkError, TimeoutError } from "../api/errors";

/** `12.5 s`, `43 s`, `300 ms`: a bound as a person reads it. */
export function describeBound(ms: number): string {
  return ms < 1000 ? `${ms} ms` : `${Math.round(ms / 100) / 10} s`;
}

/**
 * `read(response)` for `url`, all within `timeoutMs`. Rejects with `TimeoutError` (a `NetworkError`)
 * when the time runs out, with `NetworkError` when the request fails without an answer (refused, reset,
 * offline); `read`'s own failures (a body that is not JSON) pass through as they are.
 */
export async function fetchWithin<T>(
  url: string,
  init: RequestInit,
  timeoutMs: number,
  read: (response: Response) => Promise<T>,
): Promise<T> {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), timeoutMs);
  try {
    return await read(await fetch(url, { ...init, signal: abort.signal }));
  } catch (error) {
    if (abort.signal.aborted)
      throw new TimeoutError(`${init.method ?? "GET"} ${url}: no answer within ${describeBound(timeoutMs)}`);
    if (error instanceof TypeError) throw new NetworkError(String(error));
    throw error;
  } finally {
    clearTimeout(timer);
  }
}

/**
 * `work`'s outcome, or a `TimeoutError` naming `what` once `timeoutMs` has passed. For requests made by
 * a library whose own bound does not cover the whole answer (oidc-client-ts stops its timer at the
 * head: a body frozen halfway is awaited for ever). The work itself is not cancelled — nothing can
 * reach its fetch — but the caller gets an answer; the late outcome, if any, is dropped.
 */
export async function within<T>(work: Promise<T>, timeoutMs: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const expired = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(
      () => reject(new TimeoutError(`${what}: no answer within ${describeBound(timeoutMs)}`)),
      timeoutMs,
    );
  });
  try {
    return await Promise.race([work, expired]);
  } finally {
    clearTimeout(timer);
  }
}
