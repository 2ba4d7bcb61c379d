import { describe, expect, it } from "vitest";
import { describeEvent, filtersToQuery, NO_FILTERS } from "./audit";

const actor = (subject: string, name = "") => ({
  issuer: "http://localhost:9000/",
  subject,
  kind: "user",
  client_id: "timesheets-spa",
  name,
});

describe("audit events", () => {
  it("reads a decision as approved or rejected", () => {
    const view = describeEvent({
      seq: 7,
      occurred_at: "2026-11-27T10:00:00Z",
      source: "timesheets",
      actor: actor("local|bob", "Bob Manager"),
      action: "timesheet.decided",
      resource: { type: "timesheet", id: "e1" },
      outcome: "success",
      details: {
        project: "Apollo",
        date: "2026-11-27",
        hours: 7.5,
        decision: "rejected",
        owner: { issuer: "x", subject: "local|alice" },
      },
    });
    expect(view).toMatchObject({
      seq: 7,
      actor: "Bob Manager",
      label: "Entry rejected",
      tone: "reject",
      actorSubject: "local|bob",
    });
    expect(view.details).toBe("Apollo · 2026-11-27 · 7.5 h · owner alice");
  });

  it("reads gateway denials", () => {
    const view = describeEvent({
      seq: 3,
      action: "access.denied",
      outcome: "denied",
      actor: actor("local|alice"),
      resource: { type: "route", id: "PUT /api/approvals/{id}" },
      details: {
        status: 403,
        reason: "insufficient_scope",
        method: "PUT",
        route: "/api/approvals/{id}",
        required_scope: "approve:timesheets",
      },
    });
    expect(view).toMatchObject({ actor: "alice", label: "Access denied", tone: "deny" });
    expect(view.details).toContain("needs approve:timesheets");
  });

  it("reads a refused self-approval and hides the owner when it is the actor", () => {
    const refused = describeEvent({
      action: "approval.decided",
      outcome: "denied",
      actor: actor("local|bob", "Bob"),
      details: { reason: "own_entry" },
    });
    expect(refused).toMatchObject({
      label: "Decision refused",
      tone: "deny",
      details: "approvers cannot decide their own entries",
    });
    const own = describeEvent({
      action: "timesheet.created",
      actor: actor("local|bob", "Bob Manager"),
      details: { project: "Delta", owner: { issuer: "http://localhost:9000/", subject: "local|bob" } },
    });
    expect(own.details).toBe("Delta");
  });

  it("copes with unknown shapes", () => {
    const view = describeEvent({ action: "something.else", resource: { type: "thing", id: "42" } });
    expect(view).toMatchObject({ actor: "—", label: "something.else", tone: "other", seq: null, details: "thing 42" });
  });

  it("builds the query with whole UTC days", () => {
    expect(
      filtersToQuery({
        ...NO_FILTERS,
        action: "timesheet.created",
        actor: " local|bob ",
        from: "2026-11-01",
        to: "2026-11-30",
      }),
    ).toEqual({
      action: "timesheet.created",
      actor: "local|bob",
      from: "2026-11-01T00:00:00Z",
      to: "2026-12-01T00:00:00Z",
    });
    expect(filtersToQuery({ ...NO_FILTERS, from: "garbage" })).toEqual({});
  });
});
