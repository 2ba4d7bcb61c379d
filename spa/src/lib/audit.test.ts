import { describe, expect, it } from "vitest";
import { describeEvent, filtersToQuery } from "./audit";

describe("audit events", () => {
  it("reads who did what", () => {
    const view = describeEvent({
      seq: 7,
      occurred_at: "2026-11-27T10:00:00Z",
      actor: "http://localhost:9000/|bob",
      action: "timesheet.rejected",
      data: { project: "Apollo", comment: "Wrong project code" },
    });
    expect(view).toMatchObject({ seq: 7, actor: "bob", label: "Entry rejected", tone: "reject" });
    expect(view.details).toContain("“Wrong project code”");
  });

  it("copes with unknown shapes", () => {
    const view = describeEvent({ type: "something.else", subject: { name: "Carol" } });
    expect(view).toMatchObject({ actor: "Carol", label: "something.else", tone: "other", seq: null });
  });

  it("builds the query", () => {
    expect(filtersToQuery({ action: "timesheet.created", actor: " bob ", from: "2026-11-01", to: "" })).toEqual({
      action: "timesheet.created",
      actor: "bob",
      since: "2026-11-01T00:00:00Z",
    });
  });
});
