import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { SessionManager } from "./session";
import type { ProofRequest } from "./dpop";
import { AuthError, type Authenticator, type Session } from "./types";
import { MemoryStorage } from "../lib/frozen.testing";

function session(sub: string, lifetime = 900): Session {
  const now = Math.floor(Date.now() / 1000);
  return {
    accessToken: `token-${sub}-${now}-${Math.random()}`,
    tokenType: "Bearer",
    idToken: null,
    obtainedAt: now,
    expiresAt: now + lifetime,
    scopes: new Set(["read:timesheets"]),
    profile: { sub, name: sub, email: null },
  };
}

/** An authenticator whose silent answers the test scripts. */
class Scripted implements Authenticator {
  readonly flow = "code" as const;
  calls = 0;
  answers: (() => Promise<Session>)[] = [];
  async signIn(): Promise<void> {}
  async handleRedirectCallback(_fragment: string): Promise<{ session: Session; returnTo: string }> {
    throw new Error("unused");
  }
  signInSilently(): Promise<Session> {
    this.calls++;
    const next = this.answers.shift();
    return next ? next() : Promise.reject(new AuthError("login_required"));
  }
  async signOut(): Promise<void> {}
  proof?: (request: ProofRequest) => Promise<string | null>;
}

describe("SessionManager", () => {
  beforeEach(() => {
    vi.useFakeTimers();
    vi.stubGlobal("sessionStorage", new MemoryStorage());
  });
  afterEach(() => {
    vi.useRealTimers();
    vi.unstubAllGlobals();
  });

  it("renews 60 s before a 15-minute token expires, and again after that", async () => {
    const auth = new Scripted();
    const manager = new SessionManager(auth);
    manager.start(session("alice"));
    auth.answers.push(
      async () => session("alice"),
      async () => session("alice"),
    );
    await vi.advanceTimersByTimeAsync(839_000);
    expect(auth.calls).toBe(0);
    await vi.advanceTimersByTimeAsync(2_000);
    expect(auth.calls).toBe(1);
    expect(manager.current).toMatchObject({ status: "signed-in", renewals: 1 });
    await vi.advanceTimersByTimeAsync(840_000);
    expect(auth.calls).toBe(2);
  });

  it("renews at once when the page comes back after the renewal time passed", async () => {
    const auth = new Scripted();
    const manager = new SessionManager(auth);
    manager.start(session("alice"));
    auth.answers.push(async () => session("alice"));
    manager.resumeIfDue();
    expect(auth.calls).toBe(0);
    vi.setSystemTime(Date.now() + 850_000); // the clock moved, the timer did not fire (sleep)
    manager.resumeIfDue();
    await vi.advanceTimersByTimeAsync(0);
    expect(auth.calls).toBe(1);
  });

  it("makes one round trip for concurrent renewals", async () => {
    const auth = new Scripted();
    const manager = new SessionManager(auth);
    manager.start(session("alice"));
    let release: (s: Session) => void = () => {};
    auth.answers.push(() => new Promise((resolve) => (release = resolve)));
    const first = manager.renew();
    const second = manager.renew();
    release(session("alice"));
    expect(await Promise.all([first, second])).toEqual([true, true]);
    expect(auth.calls).toBe(1);
  });

  it("makes one round trip for calls refused for one token, however late their 401s arrive", async () => {
    const auth = new Scripted();
    const manager = new SessionManager(auth);
    manager.start(session("alice"));
    const sent = manager.accessToken();
    auth.answers.push(async () => session("alice"));
    // The first call's 401 renews; a second call sent with the same token is refused only after the
    // renewal finished: it retries with the new token, no second prompt=none round trip.
    expect(await manager.renew(sent)).toBe(true);
    const renewed = manager.accessToken();
    expect(renewed).not.toBe(sent);
    expect(await manager.renew(sent)).toBe(true);
    expect(auth.calls).toBe(1);
    expect(manager.accessToken()).toBe(renewed);
    // The new token is refused too: the gateway refuses this session's tokens, so that is final (the
    // call fails with 401 and the UI asks to sign in again) instead of a round trip per call.
    expect(await manager.renew(renewed)).toBe(false);
    expect(auth.calls).toBe(1);
    expect(manager.current.status).toBe("signed-in");
  });

  it("still renews for a refused token that a timer's renewal brought", async () => {
    const auth = new Scripted();
    const manager = new SessionManager(auth);
    manager.start(session("alice"));
    const first = manager.accessToken();
    auth.answers.push(
      async () => session("alice"),
      async () => session("alice"),
      async () => session("alice"),
    );
    expect(await manager.renew(first)).toBe(true); // a 401's renewal
    expect(await manager.renew()).toBe(true); // the timer's, later
    const timers = manager.accessToken();
    expect(await manager.renew(timers)).toBe(true); // refused minutes later: one renewal again
    expect(auth.calls).toBe(3);
    expect(manager.accessToken()).not.toBe(timers);
  });

  it("ends the session when the provider session is gone", async () => {
    const auth = new Scripted();
    const manager = new SessionManager(auth);
    manager.start(session("alice"));
    expect(SessionManager.hadSession()).toBe(true);
    expect(await manager.renew()).toBe(false);
    expect(manager.current.status).toBe("expired");
    expect(manager.current.reason).toMatch(/sign-in service has ended/);
    expect(manager.accessToken()).toBeNull();
    expect(SessionManager.hadSession()).toBe(false);
  });

  it("keeps the session while the provider cannot be reached, retrying until the token expires", async () => {
    const auth = new Scripted();
    const manager = new SessionManager(auth);
    const first = session("alice");
    manager.start(first);
    const down = (): Promise<Session> => Promise.reject(new AuthError("timeout"));
    auth.answers.push(down, down, async () => session("alice"));
    await vi.advanceTimersByTimeAsync(841_000); // the renewal is due 60 s before expiry: no answer
    expect(auth.calls).toBe(1);
    expect(manager.current.status).toBe("signed-in");
    expect(manager.accessToken()).toBe(first.accessToken);
    await vi.advanceTimersByTimeAsync(15_000); // tried again after 15 s: still down
    expect(auth.calls).toBe(2);
    expect(manager.current.status).toBe("signed-in");
    await vi.advanceTimersByTimeAsync(30_000); // and after 30 s more: back
    expect(auth.calls).toBe(3);
    expect(manager.current).toMatchObject({ status: "signed-in", renewals: 1 });
    expect(manager.accessToken()).not.toBe(first.accessToken);
  });

  it("ends the session when the provider stays unreachable until the token expires", async () => {
    const auth = new Scripted();
    const manager = new SessionManager(auth);
    manager.start(session("alice"));
    for (let i = 0; i < 10; i++) auth.answers.push(() => Promise.reject(new AuthError("error", "Failed to fetch")));
    await vi.advanceTimersByTimeAsync(900_000);
    expect(manager.current.status).toBe("expired");
    expect(manager.current.reason).toMatch(/couldn't reach the sign-in service/);
    // 840 s, +15, +30, then the last try 5 s before expiry (895 s)
    expect(auth.calls).toBe(4);
  });

  it("does not wait for a token the API refused when the provider cannot be reached", async () => {
    const auth = new Scripted();
    const manager = new SessionManager(auth);
    const first = session("alice");
    manager.start(first);
    auth.answers.push(() => Promise.reject(new AuthError("timeout")));
    expect(await manager.renew(first.accessToken)).toBe(false);
    expect(manager.current.status).toBe("expired");
  });

  it("never switches user silently", async () => {
    const auth = new Scripted();
    const manager = new SessionManager(auth);
    manager.start(session("alice"));
    auth.answers.push(async () => session("mallory"));
    expect(await manager.renew()).toBe(false);
    expect(manager.current.status).toBe("expired");
  });

  it("asks for a DPoP proof only for a DPoP-bound token, with that token", async () => {
    const auth = new Scripted();
    const requests: unknown[] = [];
    auth.proof = async (request) => {
      requests.push(request);
      return "proof";
    };
    const manager = new SessionManager(auth);
    expect(await manager.proof("GET", "/api/x", null)).toBeNull(); // signed out
    manager.start(session("alice"));
    expect(await manager.proof("GET", "/api/x", null)).toBeNull(); // Bearer
    const bound: Session = { ...session("alice"), tokenType: "DPoP" };
    manager.start(bound);
    expect(await manager.proof("GET", "/api/x", "n")).toBe("proof");
    expect(requests).toEqual([{ method: "GET", url: "/api/x", accessToken: bound.accessToken, nonce: "n" }]);
  });

  it("keeps tokens out of Web Storage", () => {
    const manager = new SessionManager(new Scripted());
    const s = session("alice");
    manager.start(s);
    const stored = JSON.stringify(Object.entries((sessionStorage as unknown as MemoryStorage)["data"]));
    expect(stored).not.toContain(s.accessToken);
    expect(manager.accessToken()).toBe(s.accessToken);
  });
});
