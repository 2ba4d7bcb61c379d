import { describe, expect, it } from "vitest";
import { describeInstant } from "./instant";
import { inZone } from "./zones.testing";

const AT = "2025-03-12T13:03:07.123456+00:00"; // as the audit service writes occurred_at

describe("an audit instant", () => {
  it.each([
    ["UTC", "12 Mar 2025, 13:03:07 UTC+00:00"],
    ["Europe/Berlin", "12 Mar 2025, 14:03:07 UTC+01:00"],
    ["America/New_York", "12 Mar 2025, 09:03:07 UTC-04:00"], // summer time since 9 March
    ["Asia/Kolkata", "12 Mar 2025, 18:33:07 UTC+05:30"],
    ["Pacific/Kiritimati", "13 Mar 2025, 03:03:07 UTC+14:00"], // already the next day
    ["Pacific/Pago_Pago", "12 Mar 2025, 02:03:07 UTC-11:00"],
  ])("shows year, time and offset in the browser's zone, %s", (zone, text) => {
    expect(inZone(zone, () => describeInstant(AT).text)).toBe(text);
    expect(describeInstant(AT, zone).text).toBe(text);
  });

  it("says the same instant on either side of a summer-time change", () => {
    // 02:30 on 26 Oct 2025 happened twice in Berlin: the offset tells them apart
    expect(describeInstant("2025-10-26T00:30:00Z", "Europe/Berlin").text).toBe("26 Oct 2025, 02:30:00 UTC+02:00");
    expect(describeInstant("2025-10-26T01:30:00Z", "Europe/Berlin").text).toBe("26 Oct 2025, 02:30:00 UTC+01:00");
  });

  it("keeps the exact instant for the tooltip and a valid one for <time datetime>", () => {
    const view = describeInstant(AT, "Asia/Kolkata");
    expect(view.exact).toBe(AT);
    expect(view.datetime).toBe("2025-03-12T13:03:07.123Z"); // HTML: at most three fraction digits
    expect(Date.parse(view.datetime ?? "")).toBe(Date.parse(AT)); // the same millisecond
  });

  it("shows a missing or unreadable instant as it is", () => {
    expect(describeInstant(null)).toEqual({ text: "—", datetime: null, exact: null });
    expect(describeInstant("yesterday")).toEqual({ text: "yesterday", datetime: null, exact: "yesterday" });
  });
});
