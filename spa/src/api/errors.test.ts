import { describe, expect, it } from "vitest";
import {
  ApiError,
  NetworkError,
  describeError,
  describeUndecided,
  isRecorded,
  missingScopeFrom,
  outcomeUnknown,
  parseFieldErrors,
} from "./errors";

describe("problem answers", () => {
  it("knows when a failed write may have been stored", () => {
    expect(outcomeUnknown(new NetworkError("reset"))).toBe(true);
    // the answer's outcome, where it is given, decides
    expect(outcomeUnknown(new ApiError(503, { status: 503, outcome: "unknown" }))).toBe(true);
    expect(outcomeUnknown(new ApiError(502, { status: 502, outcome: "not_stored" }))).toBe(false);
    expect(outcomeUnknown(new ApiError(504, { status: 504, outcome: "unknown" }))).toBe(true);
    // without it (a read, or an older gateway): by status
    expect(outcomeUnknown(new ApiError(502, { status: 502 }))).toBe(true);
    expect(outcomeUnknown(new ApiError(504, { status: 504 }))).toBe(true);
    expect(outcomeUnknown(new ApiError(503, { status: 503 }))).toBe(false);
    expect(outcomeUnknown(new ApiError(422, { status: 422 }))).toBe(false);
  });

  it("reads the kit's field errors", () => {
    expect(
      parseFieldErrors([
        { field: "hours", loc: ["hours"], message: "must be at most 24" },
        { loc: ["body", "project"], msg: "required" },
        { field: "entries.3.date", message: "bad date" },
        "junk",
        { message: "no field" },
      ]),
    ).toEqual([
      { field: "hours", message: "must be at most 24" },
      { field: "project", message: "required" },
      { field: "date", message: "bad date" },
    ]);
    const error = new ApiError(422, { status: 422, errors: [{ field: "hours", message: "too many" }] });
    expect(error.fieldErrors).toEqual({ hours: "too many" });
  });

  it("reads the missing scope from WWW-Authenticate", () => {
    expect(missingScopeFrom('Bearer realm="api", error="insufficient_scope", scope="approve:timesheets"')).toBe(
      "approve:timesheets",
    );
    expect(missingScopeFrom('Bearer error="invalid_token"')).toBeNull();
    expect(missingScopeFrom(null)).toBeNull();
  });

  it("says what to do for each status", () => {
    expect(describeError(new ApiError(401, {}), "load").kind).toBe("signin");
    const forbidden = describeError(new ApiError(403, { detail: "x" }, "read:audit"), "read the audit trail");
    expect(forbidden.kind).toBe("permission");
    expect(forbidden.text).toContain("read:audit");
    const conflict = describeError(
      new ApiError(409, { detail: "An approved entry cannot be deleted." }),
      "delete this entry",
    );
    expect(conflict.text).toBe("You can't delete this entry: An approved entry cannot be deleted.");
    expect(describeError(new ApiError(422, { detail: "The request has invalid fields." }), "add").kind).toBe("invalid");
    expect(describeError(new ApiError(429, {}, null, 7), "add").text).toContain("7 seconds");
    expect(describeError(new ApiError(503, { request_id: "r1" }), "add").text).toContain("r1");
    expect(describeError(new NetworkError("down"), "add").kind).toBe("unavailable");
    expect(describeError(new Error("?"), "add").kind).toBe("error");
  });

  it("shows a full day's 422: the detail in the banner, the message at the hours field", () => {
    // The timesheets service's answer when an entry would take the person's day past 24 hours
    // (services/timesheets/timesheets/daycap.py), as the contract documents it.
    const detail =
      "A day holds at most 24 hours: 20 hours are already recorded on 2026-11-23, so at most 4 more can be added.";
    const error = new ApiError(422, {
      status: 422,
      title: "Unprocessable Content",
      detail,
      errors: [
        {
          field: "hours",
          loc: ["hours"],
          message: "would bring 2026-11-23 to 28 hours; 20 already recorded, at most 24 a day",
          type: "day_hours_exceeded",
        },
      ],
    });
    expect(describeError(error, "add the entry")).toMatchObject({ kind: "invalid", text: detail });
    expect(error.fieldErrors).toEqual({
      hours: "would bring 2026-11-23 to 28 hours; 20 already recorded, at most 24 a day",
    });
  });

  it("tells an approver whether a decision that still failed may have been recorded", () => {
    const lost = describeUndecided(new NetworkError("reset"), "approved");
    expect(lost.title).toBe("The decision may not have been recorded");
    expect(lost.text).toContain("whether the entry was approved");
    expect(lost.text).toContain("Press Approve again");
    expect(describeUndecided(new ApiError(504, { status: 504 }), "rejected").title).toBe(
      "The decision may not have been recorded",
    );
    const pending = new ApiError(503, { status: 503, request_id: "r1", decision: { state: "pending" } });
    expect(describeUndecided(pending, "approved")).toMatchObject({ title: "Recorded, not applied yet" });
    expect(describeUndecided(pending, "approved").text).toContain("(Reference: r1)");
    expect(isRecorded(pending)).toBe(true);
    expect(isRecorded(new ApiError(503, { status: 503, outcome: "unknown", decision: { state: "pending" } }))).toBe(
      false,
    );
    expect(isRecorded(new ApiError(503, { status: 503 }))).toBe(false);
    expect(isRecorded(new NetworkError("reset"))).toBe(false);
    const down = describeUndecided(new ApiError(503, { status: 503 }), "rejected");
    expect(down.title).toBe("The service is unavailable");
    expect(down.text).toContain("was not rejected");
    expect(down.text).toContain("comment is kept");
    expect(down.text).toContain("Press Reject again");
  });
});
