/** Small hooks: the live session state, and path-based routing inside the app's base path. */
import { useEffect, useState } from "preact/hooks";
import type { SessionManager, SessionState } from "../auth/session";
import { viewLoad, type LoadView, type Settled } from "../lib/load";
import { msUntilTomorrow, today, type IsoDate } from "../lib/week";

export function useSession(manager: SessionManager): SessionState {
  const [state, setState] = useState(manager.current);
  useEffect(() => manager.subscribe(setState), [manager]);
  return state;
}

/**
 * Today's date in the user's time zone, kept current while the app stays open: a timer for the next
 * day's start (the user's midnight), and a fresh look whenever the page is seen again (timers do not run
 * while a computer sleeps, nor on time in a background tab).
 */
export function useToday(): IsoDate {
  const [day, setDay] = useState(() => today());
  useEffect(() => {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const check = (): void => {
      setDay(today());
      clearTimeout(timer);
      timer = setTimeout(check, msUntilTomorrow());
    };
    const onVisible = (): void => {
      if (document.visibilityState === "visible") check();
    };
    check();
    document.addEventListener("visibilitychange", onVisible);
    return () => {
      clearTimeout(timer);
      document.removeEventListener("visibilitychange", onVisible);
    };
  }, []);
  return day;
}

export type Screen = "timesheets" | "approvals" | "audit";

/** `home` is the bare base path: the screen shown there depends on what the user may do. */
export function screenFromPath(pathname: string, basePath: string): Screen | "home" | null {
  if (pathname === basePath || `${pathname}/` === basePath) return "home";
  const rest = pathname.startsWith(basePath) ? pathname.slice(basePath.length) : "";
  if (rest === "timesheets") return "timesheets";
  if (rest === "approvals") return "approvals";
  if (rest === "audit") return "audit";
  return null;
}

export function pathForScreen(screen: Screen | "home", basePath: string): string {
  return screen === "home" ? basePath : `${basePath}${screen}`;
}

export function useRoute(basePath: string): [Screen | "home" | null, (screen: Screen | "home") => void] {
  const [path, setPath] = useState(window.location.pathname);
  useEffect(() => {
    const onPop = (): void => setPath(window.location.pathname);
    window.addEventListener("popstate", onPop);
    return () => window.removeEventListener("popstate", onPop);
  }, []);
  const navigate = (screen: Screen | "home"): void => {
    const next = pathForScreen(screen, basePath);
    if (next !== window.location.pathname) window.history.pushState(null, "", next);
    setPath(next);
  };
  return [screenFromPath(path, basePath), navigate];
}

/**
 * A value loaded asynchronously, with loading and error states and a way to reload. `data` is only ever
 * what was loaded for the current `deps` (see `viewLoad`): after they change it is null until the new
 * load succeeds, so a screen never shows one week's or one filter's answer as another's.
 */
export interface Loaded<T> extends LoadView<T> {
  reload: () => void;
}

export function useLoad<T>(load: () => Promise<T>, deps: unknown[]): Loaded<T> {
  const [good, setGood] = useState<Settled<T> | null>(null);
  const [last, setLast] = useState<Settled<T> | null>(null);
  const [tick, setTick] = useState(0);
  useEffect(() => {
    let live = true;
    const settled = { deps, attempt: tick };
    load().then(
      (value) => {
        if (!live) return;
        const outcome = { ...settled, ok: true, data: value, error: null };
        setGood(outcome);
        setLast(outcome);
      },
      (failure: unknown) => {
        if (live) setLast({ ...settled, ok: false, data: null, error: failure });
      },
    );
    return () => {
      live = false;
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [...deps, tick]);
  return { ...viewLoad(good, last, deps, tick), reload: () => setTick((t) => t + 1) };
}
