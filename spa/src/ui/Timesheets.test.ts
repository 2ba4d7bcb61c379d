import { describe, expect, it } from "vitest";
import { checkEntry } from "./Timesheets";

const FORM = { date: "2026-11-23", project: "Store", hours: "7.5", notes: "" };

describe("the entry form's checks", () => {
  it("refuses a bidirectional override in the project or the notes before sending, naming it", () => {
    expect(checkEntry({ ...FORM, project: "Store \u202egnp.exe" }).project).toContain(
      "U+202E (RIGHT-TO-LEFT OVERRIDE)",
    );
    expect(checkEntry({ ...FORM, notes: "open \u2067isolate" }).notes).toContain("U+2067 (RIGHT-TO-LEFT ISOLATE)");
  });

  it("takes right-to-left letters and a closed isolate in the notes", () => {
    expect(
      checkEntry({ ...FORM, project: "\u05e4\u05e8\u05d5\u05d9\u05e7\u05d8", notes: "a \u2067\u05e9\u2069 b" }),
    ).toEqual({});
  });
});
