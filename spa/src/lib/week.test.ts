import { describe, expect, it } from "vitest";
import {
  addDays,
  formatHours,
  isIsoDate,
  isoWeekNumber,
  msUntilTomorrow,
  today,
  weekDays,
  weekStart,
  weekTotals,
} from "./week";
import { inZone } from "./zones.testing";

describe("week maths", () => {
  it("starts weeks on Monday", () => {
    expect(weekStart("2026-11-27")).toBe("2026-11-23"); // Friday
    expect(weekStart("2026-11-23")).toBe("2026-11-23"); // Monday
    expect(weekStart("2026-11-29")).toBe("2026-11-23"); // Sunday
    expect(weekStart("2027-01-01")).toBe("2026-12-28"); // across the year
  });

  it("lists seven days and crosses month ends", () => {
    expect(weekDays("2026-11-30")).toEqual([
      "2026-11-30",
      "2026-12-01",
      "2026-12-02",
      "2026-12-03",
      "2026-12-04",
      "2026-12-05",
      "2026-12-06",
    ]);
    expect(addDays("2028-02-28", 1)).toBe("2028-02-29");
    expect(addDays("2026-03-29", 1)).toBe("2026-03-30"); // DST change in Europe
  });

  it("numbers ISO weeks", () => {
    expect(isoWeekNumber("2026-11-27")).toBe(48);
    expect(isoWeekNumber("2027-01-01")).toBe(53);
    expect(isoWeekNumber("2026-01-01")).toBe(1);
  });

  it("sums per day and per week without float noise", () => {
    const totals = weekTotals("2026-11-23", [
      { date: "2026-11-23", hours: 0.1 },
      { date: "2026-11-23", hours: "0.2" },
      { date: "2026-11-25", hours: 7.5 },
      { date: "2026-11-30", hours: 8 }, // next week: ignored
    ]);
    expect(totals.perDay).toEqual([0.3, 0, 7.5, 0, 0, 0, 0]);
    expect(totals.total).toBe(7.8);
  });

  it("validates and formats", () => {
    expect(isIsoDate("2026-02-29")).toBe(false);
    expect(isIsoDate("2028-02-29")).toBe(true);
    expect(isIsoDate("29/02/2028")).toBe(false);
    expect(formatHours(8)).toBe("8 h");
    expect(formatHours("7.50")).toBe("7.5 h");
    expect(formatHours(0.25)).toBe("0.25 h");
    expect(today(new Date(2026, 0, 5, 23, 30))).toBe("2026-01-05");
  });
});

describe("the user's calendar", () => {
  // An instant when the date differs around the world: Monday in Kiritimati, Sunday in UTC and Pago Pago.
  const instant = new Date("2026-11-29T10:30:00Z");

  it.each([
    ["Pacific/Kiritimati", "2026-11-30"],
    ["UTC", "2026-11-29"],
    ["Pacific/Pago_Pago", "2026-11-28"],
  ])("today is the date in the browser's time zone, %s", (zone, expected) =>
    inZone(zone, () => expect(today(instant)).toBe(expected)),
  );

  it.each([
    // [zone, now, the next day's first instant]
    ["Pacific/Kiritimati", "2026-11-29T09:57:00Z", "2026-11-29T10:00:00Z"], // 23:57 there
    ["Pacific/Pago_Pago", "2026-11-29T10:30:00Z", "2026-11-29T11:00:00Z"], // 23:30 there
    ["Europe/Berlin", "2026-10-24T23:30:00Z", "2026-10-25T23:00:00Z"], // 01:30 on the 25-hour Sunday
    ["Europe/Berlin", "2026-03-28T23:30:00Z", "2026-03-29T22:00:00Z"], // 00:30 on the 23-hour Sunday
    ["America/Santiago", "2026-09-05T12:00:00Z", "2026-09-06T04:00:00Z"], // no 00:00 on 6 Sep: 01:00
    ["UTC", "2026-12-31T12:00:00Z", "2027-01-01T00:00:00Z"],
  ])("the next day begins at the user's midnight, in %s from %s", (zone, now, next) =>
    inZone(zone, () => {
      const ms = msUntilTomorrow(new Date(now));
      expect(new Date(Date.parse(now) + ms).toISOString()).toBe(new Date(next).toISOString());
      expect(today(new Date(Date.parse(now) + ms))).not.toBe(today(new Date(now)));
      expect(today(new Date(Date.parse(now) + ms - 1))).toBe(today(new Date(now)));
    }),
  );
});
