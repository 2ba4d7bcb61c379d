/**
 * The application shell: header with the screens this user's scopes allow, the signed-in user and
 * sign-out, and the current screen. Scopes only decide what is shown; the API enforces them.
 */
import { useEffect, useRef, useState } from "preact/hooks";
import type { ApiClient } from "../api/client";
import { describeScope, type UserMessage } from "../api/errors";
import type { SessionManager } from "../auth/session";
import type { AppConfig } from "../config";
import { clearDrafts, forgetOthers } from "../lib/draft";
import { ApprovalsScreen } from "./Approvals";
import { AuditScreen } from "./Audit";
import { Banner, Toasts } from "./common";
import { pathForScreen, useRoute, useSession, type Screen } from "./hooks";
import { Logo, SignInScreen } from "./SignIn";
import { TimesheetsScreen } from "./Timesheets";

const SCREENS: { screen: Screen; label: string; scope: string }[] = [
  { screen: "timesheets", label: "My timesheets", scope: "read:timesheets" },
  { screen: "approvals", label: "Approvals", scope: "approve:timesheets" },
  { screen: "audit", label: "Audit", scope: "read:audit" },
];

export function App({
  config,
  manager,
  api,
  notice: initialNotice,
}: {
  config: AppConfig;
  manager: SessionManager;
  api: ApiClient;
  notice: UserMessage | null;
}) {
  const state = useSession(manager);
  const [route, navigate] = useRoute(config.basePath);
  const [redirecting, setRedirecting] = useState(false);
  const [notice, setNotice] = useState(initialNotice);
  const mainRef = useRef<HTMLElement>(null);

  const signIn = (): void => {
    setRedirecting(true);
    const returnTo = window.location.pathname.startsWith(config.basePath) ? window.location.pathname : config.basePath;
    manager.auth.signIn(returnTo).catch((error: unknown) => {
      setRedirecting(false);
      setNotice({ kind: "unavailable", title: "Can't reach the sign-in service", text: String(error) });
    });
  };

  // Another user signed in on this tab: what the one before typed and left unsaved is dropped.
  const user = state.session?.profile.sub;
  useEffect(() => {
    if (user) forgetOthers(sessionStorage, user);
  }, [user]);

  useEffect(() => {
    const label = SCREENS.find((s) => s.screen === route)?.label;
    document.title = label ? `${label} · Timesheets` : "Timesheets";
  }, [route]);

  if (state.status !== "signed-in" || !state.session) {
    const expired: UserMessage | null =
      state.status === "expired"
        ? {
            kind: "signin",
            title: "Please sign in again",
            text: `${state.reason ?? "Your session has ended."} Sign in again to continue where you left off.`,
          }
        : null;
    return (
      <>
        <SignInScreen config={config} notice={expired ?? notice} busy={redirecting} onSignIn={signIn} />
        <Toasts />
      </>
    );
  }

  const session = state.session;
  // Signing out on purpose drops the unsaved entry and comments; a session that ends by itself keeps
  // them (lib/draft.ts).
  const signOut = (): void => {
    clearDrafts(sessionStorage, session.profile.sub);
    void manager.signOut();
  };
  const allowed = SCREENS.filter((s) => session.scopes.has(s.scope));
  // People who cannot record hours (auditors) start on the audit trail; everyone else on their week.
  const auditor = !session.scopes.has("create:timesheets") && session.scopes.has("read:audit");
  const home: Screen | undefined = auditor ? "audit" : allowed[0]?.screen;
  const wanted = route === "home" ? home : route;
  const current = wanted && allowed.some((s) => s.screen === wanted) ? wanted : null;
  const missing = wanted ? SCREENS.find((s) => s.screen === wanted && !session.scopes.has(s.scope)) : undefined;
  const shown = current ?? home ?? null;
  const name = session.profile.name ?? session.profile.sub;

  return (
    <>
      <a class="skip-link" href="#main">
        Skip to content
      </a>
      <header class="topbar">
        <div class="topbar__inner">
          <a
            class="brand"
            href={config.basePath}
            onClick={(event) => {
              event.preventDefault();
              navigate("home");
            }}
          >
            <Logo />
            <span>{config.basePath === "/" ? "Timesheets" : "Partner Hours"}</span>
          </a>
          <nav class="tabs" aria-label="Main">
            {allowed.map((item) => (
              <a
                key={item.screen}
                class="tabs__link"
                href={pathForScreen(item.screen, config.basePath)}
                aria-current={shown === item.screen ? "page" : undefined}
                onClick={(event) => {
                  event.preventDefault();
                  navigate(item.screen);
                  mainRef.current?.focus();
                }}
              >
                {item.label}
              </a>
            ))}
          </nav>
          <div class="user">
            <span class="avatar" aria-hidden="true">
              {name.slice(0, 1).toUpperCase()}
            </span>
            <span class="user__name" data-testid="user-name">
              {name}
            </span>
            <button type="button" class="button button--ghost button--small" onClick={signOut}>
              Sign out
            </button>
          </div>
        </div>
      </header>
      <main id="main" class="content" ref={mainRef} tabIndex={-1}>
        {notice && <Banner message={notice} onDismiss={() => setNotice(null)} />}
        {missing && (
          <Banner
            message={{
              kind: "permission",
              title: "You don't have permission",
              text: `${missing.label} needs the permission to ${describeScope(missing.scope)} (${missing.scope}), which your account was not granted.`,
            }}
          />
        )}
        {shown === "timesheets" && (
          <TimesheetsScreen
            api={api}
            user={session.profile.sub}
            canCreate={session.scopes.has("create:timesheets")}
            canDelete={session.scopes.has("delete:timesheets")}
            onSignInAgain={signIn}
          />
        )}
        {shown === "approvals" && <ApprovalsScreen api={api} user={session.profile.sub} onSignInAgain={signIn} />}
        {shown === "audit" && <AuditScreen api={api} onSignInAgain={signIn} />}
        {shown === null && (
          <div class="card empty">
            <p class="empty__title">There is nothing you can use here yet.</p>
            <p class="empty__text">
              Your account was granted none of the permissions this app needs ({SCREENS.map((s) => s.scope).join(", ")}
              ). Ask your administrator for access.
            </p>
          </div>
        )}
      </main>
      <footer class="footer">
        <span>
          Signed in as <strong>{name}</strong> · permissions:{" "}
          {[...session.scopes].filter((s) => s.includes(":")).join(", ") || "none"}
        </span>
      </footer>
      <Toasts />
    </>
  );
}
