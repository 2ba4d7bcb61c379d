/**
 * Start-up: read the runtime configuration, finish a sign-in if the provider just sent us back, restore
 * the session silently after a reload, then render the app.
 *
 * Every step is bounded, so "Loading Timesheets…" ends: `/config.json` within `CONFIG_TIMEOUT_MS`
 * (10 s), discovery and each token request within config.json's `requestTimeoutMs`, a silent sign-in's
 * iframe within 10 s. A step that times out says which service did not answer, with a way to retry
 * (Try again, or the sign-in screen's Sign in for a sign-in answer that could not be completed).
 */
import { render } from "preact";
import { ApiClient } from "./api/client";
import { describeError, TimeoutError, type UserMessage } from "./api/errors";
import { CodeFlow } from "./auth/code";
import { ImplicitFlow } from "./auth/implicit";
import { describeAuthError } from "./auth/messages";
import { SessionManager } from "./auth/session";
import { fetchDiscovery } from "./auth/tokens";
import type { Authenticator } from "./auth/types";
import { loadConfig, safeReturnPath, type AppConfig } from "./config";
import { describeBound } from "./lib/fetchWithin";
import { App } from "./ui/App";
import { Banner } from "./ui/common";
import "./styles.css";

function BootFailure({ message, onRetry }: { message: UserMessage; onRetry: () => void }) {
  return (
    <main class="signin">
      <div class="signin__card card">
        <Banner message={message} />
        <button type="button" class="button button--primary button--block" onClick={onRetry}>
          Try again
        </button>
      </div>
    </main>
  );
}

/**
 * Tokens delivered in the fragment (Implicit Grant) leave the address bar before any network call:
 * the fragment is kept in memory only, for the flow to validate.
 */
function takeFragment(): string {
  const hash = window.location.hash;
  if (hash) window.history.replaceState(null, "", window.location.pathname + window.location.search);
  return hash;
}

async function boot(root: HTMLElement): Promise<void> {
  const fragment = takeFragment();
  let config: AppConfig;
  try {
    config = await loadConfig();
  } catch (error) {
    render(
      <BootFailure
        message={
          error instanceof TimeoutError
            ? describeError(error, "load the app's settings")
            : {
                kind: "error",
                title: "The app is misconfigured",
                text: String(error instanceof Error ? error.message : error),
              }
        }
        onRetry={() => window.location.reload()}
      />,
      root,
    );
    return;
  }
  const atCallback = window.location.pathname === `${config.basePath}callback`;

  let auth: Authenticator;
  try {
    const discovery = await fetchDiscovery(config.issuer, config.requestTimeoutMs);
    auth = config.flow === "implicit" ? new ImplicitFlow(config, discovery) : new CodeFlow(config, discovery);
  } catch (error) {
    console.error("discovery failed", error);
    render(
      <BootFailure
        message={{
          kind: "unavailable",
          title:
            error instanceof TimeoutError ? "The sign-in service didn't answer" : "The sign-in service is unavailable",
          text:
            error instanceof TimeoutError
              ? `${config.issuer} did not answer within ${describeBound(config.requestTimeoutMs)}. Please try again in a moment.`
              : `We couldn't reach ${config.issuer}. Please try again in a moment.`,
        }}
        onRetry={() => window.location.reload()}
      />,
      root,
    );
    return;
  }

  const manager = new SessionManager(auth);
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") manager.resumeIfDue();
  });
  const api = new ApiClient(config.apiBase, manager, { timeoutMs: config.requestTimeoutMs });
  let notice: UserMessage | null = null;
  if (atCallback) {
    try {
      const { session, returnTo } = await auth.handleRedirectCallback(fragment);
      manager.start(session);
      window.history.replaceState(null, "", safeReturnPath(returnTo, config.basePath));
    } catch (error) {
      console.warn("sign-in answer refused:", error instanceof Error ? error.message : error);
      notice = describeAuthError(error);
      window.history.replaceState(null, "", config.basePath);
    }
  } else if (SessionManager.hadSession()) {
    try {
      manager.start(await auth.signInSilently());
    } catch {
      // The provider session is gone: show the sign-in screen.
    }
  }
  render(<App config={config} manager={manager} api={api} notice={notice} />, root);
}

const root = document.getElementById("app");
if (root) void boot(root);
