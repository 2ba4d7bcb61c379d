import { describe, expect, it } from "vitest";
import { viewLoad, type Settled } from "./load";

const ok = <T>(deps: unknown[], attempt: number, data: T): Settled<T> => ({
  deps,
  attempt,
  ok: true,
  data,
  error: null,
});
const failed = (deps: unknown[], attempt: number, error: unknown): Settled<never> => ({
  deps,
  attempt,
  ok: false,
  data: null,
  error,
});

describe("what a load may show", () => {
  const week1 = ["2026-11-30"];
  const week2 = ["2026-12-07"];

  it("is loading before anything settled", () => {
    expect(viewLoad(null, null, week1, 0)).toEqual({ data: null, error: null, loading: true, stale: false });
  });

  it("shows what loaded for these inputs", () => {
    const done = ok(week1, 0, ["entry"]);
    expect(viewLoad(done, done, week1, 0)).toEqual({ data: ["entry"], error: null, loading: false, stale: false });
  });

  it("hands out nothing of another week while the new week loads", () => {
    const done = ok(week1, 0, ["entry"]);
    expect(viewLoad(done, done, week2, 0)).toEqual({ data: null, error: null, loading: true, stale: false });
  });

  it("hands out nothing of another week when the new week failed", () => {
    const done = ok(week1, 0, ["entry"]);
    const down = failed(week2, 0, "503");
    expect(viewLoad(done, down, week2, 0)).toEqual({ data: null, error: "503", loading: false, stale: false });
  });

  it("keeps this week's data, marked stale, while a reload runs or after it failed", () => {
    const done = ok(week1, 0, ["entry"]);
    expect(viewLoad(done, done, week1, 1)).toEqual({ data: ["entry"], error: null, loading: true, stale: true });
    const down = failed(week1, 1, "503");
    expect(viewLoad(done, down, week1, 1)).toEqual({ data: ["entry"], error: "503", loading: false, stale: true });
  });

  it("forgets an earlier attempt's failure once the inputs change or a reload starts", () => {
    const down = failed(week1, 0, "503");
    expect(viewLoad(null, down, week1, 1).error).toBeNull();
    expect(viewLoad(null, down, week2, 0).error).toBeNull();
  });
});
