import { describe, expect, it } from "vitest";
import { addDays, formatHours, isIsoDate, isoWeekNumber, today, weekDays, weekStart, weekTotals } from "./week";

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
