/**
 * Holds the current session in memory, renews it silently before the access token expires, and tells
 * the UI when it changes. Renewal is single-flight: a timer and a 401 arriving together make one
 * `prompt=none` round trip, and so do several calls refused for one token, however their answers
 * interleave with the renewal.
 */
import type { TokenSource } from "../api/client";
import { renewAt } from "./tokens";
import { AuthError, type Authenticator, type Session } from "./types";

export type SessionStatus = "signed-out" | "signed-in" | "expired";

export interface SessionState {
  status: SessionStatus;
  session: Session | null;
  /** Why the session ended, when it did on its own (e.g. the provider session is gone). */
  reason: string | null;
  renewals: number;
}

const HINT_KEY = "tsp.signedIn";

/**
 * Why a silent renewal may fail only for now: no answer in time (the provider is down or slow), the
 * token request never got an answer (`error`: a network failure), or the provider says so itself
 * (RFC 6749 §4.1.2.1). Any other answer (`login_required`, `invalid_grant`…) is final.
 */
const TRANSIENT_RENEWAL_ERRORS = new Set(["timeout", "error", "server_error", "temporarily_unavailable"]);
/** Waits before the next attempts at a renewal that failed transiently (the last one repeats). */
export const RENEWAL_RETRY_MS: readonly number[] = [15_000, 30_000, 60_000];
/** The last attempt is made this long before the access token expires. */
const LAST_TRY_BEFORE_EXPIRY_MS = 5_000;

export class SessionManager implements TokenSource {
  private state: SessionState = { status: "signed-out", session: null, reason: null, renewals: 0 };
  private readonly listeners = new Set<(state: SessionState) => void>();
  private timer: ReturnType<typeof setTimeout> | null = null;
  private inflight: Promise<boolean> | null = null;
  /** The token a renewal brought because the API refused the one before: refused too, it is final. */
  private renewedAfterRefusal: string | null = null;
  /** Renewals in a row that failed transiently (the sign-in service was away). */
  private failedRenewals = 0;

  constructor(readonly auth: Authenticator) {}

  get current(): SessionState {
    return this.state;
  }

  subscribe(listener: (state: SessionState) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private update(patch: Partial<SessionState>): void {
    this.state = { ...this.state, ...patch };
    for (const listener of this.listeners) listener(this.state);
  }

  /** Whether this tab was signed in before a reload (a hint only: no token is stored). */
  static hadSession(): boolean {
    return sessionStorage.getItem(HINT_KEY) === "1";
  }

  start(session: Session): void {
    sessionStorage.setItem(HINT_KEY, "1");
    this.failedRenewals = 0;
    this.update({ status: "signed-in", session, reason: null });
    this.schedule(session);
  }

  private schedule(session: Session): void {
    if (this.timer) clearTimeout(this.timer);
    const delayMs = Math.max(0, renewAt(session.obtainedAt, session.expiresAt) * 1000 - Date.now());
    this.timer = setTimeout(() => void this.renew(), Math.min(delayMs, 2_147_000_000));
  }

  /**
   * Timers do not run while a laptop sleeps or a background tab is throttled: when the page is seen
   * again, renew at once if the renewal time has passed.
   */
  resumeIfDue(): void {
    const session = this.state.session;
    if (session && Date.now() >= renewAt(session.obtainedAt, session.expiresAt) * 1000) void this.renew();
  }

  accessToken(): string | null {
    return this.state.session?.accessToken ?? null;
  }

  /** A proof for an API call when the current token is DPoP-bound; null for Bearer tokens. */
  async proof(method: string, url: string, nonce: string | null): Promise<string | null> {
    const session = this.state.session;
    if (!session || session.tokenType !== "DPoP" || !this.auth.proof) return null;
    return this.auth.proof({ method, url, accessToken: session.accessToken, nonce });
  }

  has(scope: string): boolean {
    return this.state.session?.scopes.has(scope) ?? false;
  }

  /**
   * Gets a new token without user interaction; resolves true when there is a token to retry with.
   *
   * `refused` is the token the API refused, when a 401 asks. A call sent just before a renewal may be
   * refused just after it: the renewal already replaced that token, so the caller retries with the
   * new one instead of making a second round trip. When the token a 401's renewal brought is refused
   * as well, the gateway refuses this session's tokens and another renewal would only bring the same
   * answer, so the caller gives up and the user is asked to sign in again.
   */
  renew(refused?: string | null): Promise<boolean> {
    const current = this.state.session?.accessToken;
    if (!current) return Promise.resolve(false);
    if (this.inflight) return this.inflight;
    if (refused != null && refused !== current) return Promise.resolve(true);
    if (refused != null && refused === this.renewedAfterRefusal) return Promise.resolve(false);
    this.inflight = this.auth
      .signInSilently()
      .then((session) => {
        if (this.state.session && session.profile.sub !== this.state.session.profile.sub) {
          // Someone else signed in at the provider in the meantime: never switch users silently.
          throw new AuthError("login_required", "a different user is signed in at the provider");
        }
        this.update({ status: "signed-in", session, reason: null, renewals: this.state.renewals + 1 });
        this.renewedAfterRefusal = refused != null ? session.accessToken : null;
        this.failedRenewals = 0;
        this.schedule(session);
        return true;
      })
      .catch((error: unknown) => {
        const code = error instanceof AuthError ? error.code : "error";
        console.warn("silent renewal failed:", code);
        const transient = TRANSIENT_RENEWAL_ERRORS.has(code);
        // A renewal ahead of expiry that could not reach the provider: the token still works, so the
        // user stays signed in (and keeps what is on the screen) while it is tried again.
        if (transient && refused == null && this.retryRenewal()) return false;
        this.expire(
          code === "login_required" || code === "interaction_required" || code === "consent_required"
            ? "Your session at the sign-in service has ended."
            : transient
              ? "We couldn't reach the sign-in service to renew your session."
              : "We couldn't renew your session.",
        );
        return false;
      })
      .finally(() => {
        this.inflight = null;
      });
    return this.inflight;
  }

  /**
   * Schedules another renewal after one that failed transiently, while the access token has time left:
   * after 15 s, 30 s, then every minute, the last one just before the token expires. False when there
   * is no time left (the session then ends).
   */
  private retryRenewal(): boolean {
    const session = this.state.session;
    if (!session) return false;
    const last = session.expiresAt * 1000 - LAST_TRY_BEFORE_EXPIRY_MS;
    const now = Date.now();
    if (now >= last) return false;
    const wait = RENEWAL_RETRY_MS[Math.min(this.failedRenewals, RENEWAL_RETRY_MS.length - 1)] ?? 60_000;
    this.failedRenewals++;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.renew(), Math.min(wait, last - now));
    return true;
  }

  /** Forget the tokens; the UI asks the user to sign in again. */
  expire(reason: string): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    sessionStorage.removeItem(HINT_KEY);
    this.update({ status: "expired", session: null, reason });
  }

  async signOut(): Promise<void> {
    const session = this.state.session;
    if (this.timer) clearTimeout(this.timer);
    sessionStorage.removeItem(HINT_KEY);
    this.update({ status: "signed-out", session: null, reason: null });
    await this.auth.signOut(session);
  }
}
