/**
 * What a screen may show of an asynchronous load. Data belongs to the inputs it was loaded for (a week,
 * a set of filters): once the inputs change, the data loaded for the old ones is no answer for the new
 * ones, so it is not handed out while the new load runs or after it fails. Without this a week that
 * failed to load showed the previous week's entries filtered to nothing — "0 h", which reads as
 * "nothing recorded" when the truth is "not known".
 */

/** The outcome of the last load that settled. */
export interface Settled<T> {
  /** The inputs it was made for. */
  deps: readonly unknown[];
  /** Which attempt for those inputs (a reload is another attempt). */
  attempt: number;
  ok: boolean;
  data: T | null;
  error: unknown;
}

export interface LoadView<T> {
  /** Data loaded for the current inputs (maybe by an earlier attempt), or null. */
  data: T | null;
  /** Why the current attempt failed, or null. */
  error: unknown;
  /** The current attempt has not settled yet. */
  loading: boolean;
  /** `data` is from an earlier attempt than the current one: a reload runs or failed. */
  stale: boolean;
}

export function sameDeps(a: readonly unknown[], b: readonly unknown[]): boolean {
  return a.length === b.length && a.every((value, index) => Object.is(value, b[index]));
}

/**
 * `good` is the last successful load, `last` the last settled one (success or failure); `deps` and
 * `attempt` identify what is asked now.
 */
export function viewLoad<T>(
  good: Settled<T> | null,
  last: Settled<T> | null,
  deps: readonly unknown[],
  attempt: number,
): LoadView<T> {
  const data = good && sameDeps(good.deps, deps) ? good.data : null;
  const current = last !== null && sameDeps(last.deps, deps) && last.attempt === attempt;
  return {
    data,
    error: current && !last.ok ? last.error : null,
    loading: !current,
    stale: data !== null && !(current && last.ok),
  };
}
