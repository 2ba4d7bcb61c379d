/** The signed-out screen: what the app is, how you'll sign in, and why you were signed out. */
import type { UserMessage } from "../api/errors";
import type { AppConfig } from "../config";
import { Banner } from "./common";

export function SignInScreen({
  config,
  notice,
  busy,
  onSignIn,
}: {
  config: AppConfig;
  notice: UserMessage | null;
  busy: boolean;
  onSignIn: () => void;
}) {
  const partner = config.basePath !== "/";
  return (
    <main id="main" class="signin" tabIndex={-1}>
      <div class="signin__card card">
        <div class="brand brand--large">
          <Logo />
          <span>{partner ? "Partner Hours" : "Timesheets"}</span>
        </div>
        <h1 class="signin__title">
          {partner ? "A partner app for your ABC Inc. hours" : "Record your hours. Approve your team's."}
        </h1>
        <p class="signin__lead">
          {partner
            ? "This third-party app asks for your permission before it can read or add entries on your behalf."
            : "Add this week's entries in seconds, follow their approval, and keep a verifiable audit trail."}
        </p>
        {notice && <Banner message={notice} />}
        <button
          type="button"
          class="button button--primary button--large button--block"
          onClick={onSignIn}
          disabled={busy}
        >
          {busy ? "Redirecting…" : partner ? "Sign in with ABC Inc." : "Sign in"}
        </button>
        <p class="signin__fineprint">
          You'll sign in at <span class="mono">{new URL(config.issuer).host}</span> ·{" "}
          {config.flow === "implicit" ? "Implicit Grant" : "Authorization Code + PKCE"}
        </p>
      </div>
    </main>
  );
}

export function Logo() {
  return (
    <svg class="logo" viewBox="0 0 32 32" width="28" height="28" aria-hidden="true">
      <rect x="2" y="2" width="28" height="28" rx="8" fill="currentColor" />
      <path
        d="M16 8v8l5 3"
        stroke="#fff"
        stroke-width="2.6"
        fill="none"
        stroke-linecap="round"
        stroke-linejoin="round"
      />
    </svg>
  );
}
