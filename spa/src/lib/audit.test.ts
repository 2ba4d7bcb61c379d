import { describe, expect, it } from "vitest";
import {
  describeCheckpoints,
  describeEvent,
  describeRange,
  describeReason,
  eventsChecked,
  filtersToQuery,
  NO_FILTERS,
} from "./audit";
import { today } from "./week";
import { inZone } from "./zones.testing";

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
    // people's text isolated (U+2068 … U+2069): it cannot reorder the parts around it
    expect(view.details).toBe("\u2068Apollo\u2069 · 2026-11-27 · 7.5 h · owner \u2068alice\u2069");
  });

  it("isolates an override recorded before the services refused them: it reverses only its own text", () => {
    const view = describeEvent({
      action: "timesheet.decided",
      actor: actor("local|bob", "Bob"),
      details: {
        project: "Store \u202egnp.exe",
        decision: "approved",
        comment: "ok \u202e",
        owner: { issuer: "x", subject: "local|mallory" },
      },
    });
    expect(view.details).toBe("\u2068Store \u202egnp.exe\u2069 · owner \u2068mallory\u2069 · “\u2068ok \u202e\u2069”");
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

  it("labels the identity provider's denial reasons, keeping each code", () => {
    const denial = (reason: string) =>
      describeEvent({
        seq: 9,
        source: "identity",
        action: "access.denied",
        outcome: "denied",
        actor: { issuer: "http://localhost:9000/", subject: "anonymous", kind: "anonymous", name: "" },
        resource: { type: "route", id: "POST /token" },
        details: { status: 400, reason, method: "POST", route: "/token" },
      });
    const labels: Record<string, string> = {
      invalid_credentials: "wrong user name or password",
      throttled: "too many failed attempts",
      csrf: "form security check failed",
      invalid_client: "client authentication failed",
      code_replay: "authorization code used twice",
      refresh_token_reuse: "refresh token used again",
      dpop_binding_code: "authorization code used without its DPoP key",
      dpop_binding_refresh_token: "refresh token used without its DPoP key",
      dpop_binding_client: "no DPoP proof from a client that must send one",
    };
    for (const [code, label] of Object.entries(labels)) {
      const view = denial(code);
      expect(view.reason).toEqual({ code, label, known: true });
      expect(view.details).toBe("POST /token · 400");
      expect(view.details).not.toContain(code);
    }
    // a reason this app does not know yet: its code, spaced, and nothing hidden
    expect(denial("brand_new_reason").reason).toEqual({
      code: "brand_new_reason",
      label: "brand new reason",
      known: false,
    });
    expect(describeReason("code_replay")).toEqual({
      code: "code_replay",
      label: "authorization code used twice",
      known: true,
    });
    // the gateway's and the provider's token and DPoP refusals, and the provider's newer ones
    const known: [string, string][] = [
      ["bad_signature", "token signature does not verify"],
      ["dpop_ath", "DPoP proof not for this token"],
      ["dpop_bearer_bound", "DPoP-bound token sent as a bearer token"],
      ["code_limit", "too many sign-ins to apps for this user"],
      ["user_gone", "the token's user no longer exists"],
    ];
    for (const [code, label] of known) {
      expect(describeReason(code)).toEqual({ code, label, known: true });
    }
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
      details: "",
      reason: { code: "own_entry", label: "approvers cannot decide their own entries", known: true },
    });
    const own = describeEvent({
      action: "timesheet.created",
      actor: actor("local|bob", "Bob Manager"),
      details: { project: "Delta", owner: { issuer: "http://localhost:9000/", subject: "local|bob" } },
    });
    expect(own.details).toBe("\u2068Delta\u2069");
  });

  it("reads a voided decision as voided, with what was decided and why", () => {
    const view = describeEvent({
      action: "approval.voided",
      outcome: "failure",
      actor: actor("local|bob", "Bob"),
      resource: { type: "timesheet", id: "e2" },
      details: { decision_id: "d1", decision: "approved", comment: null, reason: "entry_gone", voided_by: "request" },
    });
    expect(view).toMatchObject({
      label: "Decision voided",
      tone: "deny",
      details: "approved",
      reason: { code: "entry_gone", label: "the entry was deleted", known: true },
    });
  });

  it("copes with unknown shapes", () => {
    const view = describeEvent({ action: "something.else", resource: { type: "thing", id: "42" } });
    expect(view).toMatchObject({ actor: "—", label: "something.else", tone: "other", seq: null, details: "thing 42" });
  });

  it("builds the query with whole days (here in UTC)", () => {
    const filters = {
      ...NO_FILTERS,
      action: "timesheet.created",
      actor: " local|bob ",
      from: "2026-11-01",
      to: "2026-11-30",
    };
    expect(inZone("UTC", () => filtersToQuery(filters))).toEqual({
      action: "timesheet.created",
      actor: "local|bob",
      from: "2026-11-01T00:00:00Z",
      to: "2026-12-01T00:00:00Z",
    });
    expect(filtersToQuery({ ...NO_FILTERS, from: "garbage" })).toEqual({});
  });
});

describe("checkpoint status", () => {
  const when = (iso: string) => `at ${iso}`;
  const latest = { number: 17, seq: 1842, signed_at: "2026-11-23T17:05:00Z", key_id: "ck-1" };

  it("reads an intact chain held to its newest checkpoint", () => {
    const view = describeCheckpoints(
      { checked: 17, verified: 17, latest, signatures_valid: true, chain_matches: true, problem: null },
      when,
    );
    expect(view).toEqual({
      tone: "ok",
      headline: "Checkpoint #17 covers events 1–1842, signed at 2026-11-23T17:05:00Z",
      signature: "signature valid",
      chain: "chain matches",
      problem: null,
    });
  });

  it("says loudly when the events no longer match what was signed", () => {
    const view = describeCheckpoints(
      { checked: 17, verified: 17, latest, signatures_valid: true, chain_matches: false, problem: null },
      when,
    );
    expect(view.tone).toBe("broken");
    expect(view.chain).toBe("chain does NOT match");
    expect(view.signature).toBe("signature valid");
  });

  it("says so when a checkpoint's signature is invalid", () => {
    const view = describeCheckpoints(
      {
        checked: 3,
        verified: 2,
        latest: { ...latest, number: 3 },
        signatures_valid: false,
        chain_matches: true,
        problem: "checkpoint 3: the signature does not verify",
      },
      when,
    );
    expect(view).toMatchObject({
      tone: "broken",
      signature: "signature INVALID",
      problem: "checkpoint 3: the signature does not verify",
    });
  });

  it("tells a trail without checkpoints yet from a service that signs none", () => {
    const none = describeCheckpoints(
      { checked: 0, verified: 0, latest: null, signatures_valid: true, chain_matches: true, problem: null },
      when,
    );
    expect(none).toMatchObject({ tone: "pending", headline: "No checkpoint signed yet.", signature: null });
    const off = describeCheckpoints(undefined, when);
    expect(off.tone).toBe("off");
    expect(off.headline).toContain("only checked against itself");
  });
});

describe("date filters", () => {
  // The audit view shows each record's time in the browser's time zone; the From and To dates it offers
  // must select exactly the records it shows on those days. With whole days in UTC, a user at UTC+14
  // or UTC-12 (or anywhere but UTC) filtering on a day got records shown on the day before or after,
  // and not those of the day's first or last hours.
  const zones = ["Pacific/Kiritimati", "Etc/GMT+12", "Europe/Berlin", "America/Santiago", "UTC"];
  const ranges: [string, string][] = [
    ["2026-11-30", "2026-11-30"],
    ["2026-10-25", "2026-10-25"], // Berlin: 25 hours (summer time ends)
    ["2026-09-06", "2026-09-07"], // Santiago: the day starts at 01:00 (summer time begins at midnight)
    ["2026-12-31", "2027-01-01"],
  ];

  it.each(zones)("select what the view shows on those days, in %s", (name) =>
    inZone(name, () => {
      for (const [from, to] of ranges) {
        const query = filtersToQuery({ ...NO_FILTERS, from, to });
        const start = Date.parse(query.from ?? "");
        const end = Date.parse(query.to ?? "");
        // every quarter hour from two days before to two days after: in the range (from ≤ t < to)
        // exactly when the day it is shown on is one of the chosen days
        for (let t = start - 2 * 86_400_000; t < end + 2 * 86_400_000; t += 900_000) {
          const shownOn = today(new Date(t));
          expect({ t: new Date(t).toISOString(), selected: start <= t && t < end }).toEqual({
            t: new Date(t).toISOString(),
            selected: from <= shownOn && shownOn <= to,
          });
        }
      }
    }),
  );
});

describe("a verified range", () => {
  const when = (iso: string) => `at ${iso}`;
  const anchor = {
    kind: "checkpoint" as const,
    number: 3,
    seq: 3000,
    hash: "ab".repeat(32),
    key_id: "ck-1",
    signed_at: "2026-11-23T17:05:00Z",
  };

  it("names the checkpoint it was anchored at, who signed it, and where it ends", () => {
    expect(describeRange({ from_seq: 3000, to_seq: 3010, to_head: true, signed_through: 3000, anchor }, when)).toBe(
      "From checkpoint #3 (event 3000, signed at 2026-11-23T17:05:00Z with key ck-1) to the newest event, 3010.",
    );
    expect(
      describeRange(
        {
          from_seq: 1,
          to_seq: 1500,
          to_head: false,
          signed_through: null,
          anchor: { kind: "start", seq: 0, hash: "0".repeat(64), number: null, key_id: null, signed_at: null },
        },
        when,
      ),
    ).toBe("From the first event to event 1500.");
  });

  it("is absent for a verification of the whole trail", () => {
    expect(describeRange(undefined, when)).toBeNull();
    expect(describeRange(null, when)).toBeNull();
  });
});

describe("eventsChecked", () => {
  it("says event for one and events otherwise", () => {
    expect(eventsChecked(1)).toBe("1 event checked");
    expect(eventsChecked(0)).toBe("0 events checked");
    expect(eventsChecked(undefined)).toBe("0 events checked");
    expect(eventsChecked(30000)).toBe("30000 events checked");
  });
});
