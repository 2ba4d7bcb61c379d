/**
 * Calendar maths for the week view. Dates are plain ISO calendar dates (`YYYY-MM-DD`), the same form the
 * API uses, handled in UTC so that no time zone or daylight-saving change can shift a day.
 * Weeks start on Monday (ISO 8601).
 */

export type IsoDate = string;

const ISO_DATE = /^(\d{4})-(\d{2})-(\d{2})$/;

export function parseIsoDate(value: IsoDate): Date {
  const match = ISO_DATE.exec(value);
  if (!match) throw new RangeError(`not an ISO date: ${value}`);
  const date = new Date(Date.UTC(Number(match[1]), Number(match[2]) - 1, Number(match[3])));
  if (formatIsoDate(date) !== value) throw new RangeError(`not a calendar date: ${value}`);
  return date;
}

export function formatIsoDate(date: Date): IsoDate {
  return date.toISOString().slice(0, 10);
}

export function isIsoDate(value: string): boolean {
  try {
    parseIsoDate(value);
    return true;
  } catch {
    return false;
  }
}

/** Today's date in the user's own time zone, as an ISO date. */
export function today(now: Date = new Date()): IsoDate {
  const y = now.getFullYear();
  const m = String(now.getMonth() + 1).padStart(2, "0");
  const d = String(now.getDate()).padStart(2, "0");
  return `${y}-${m}-${d}`;
}

/**
 * Milliseconds from `now` until the next day begins in the user's time zone: the next local midnight
 * (or the first moment of that day where the clocks skip midnight). Counted on the local calendar, not
 * in 24-hour steps: the days summer time begins or ends last 23 or 25 hours.
 */
export function msUntilTomorrow(now: Date = new Date()): number {
  const next = new Date(now.getTime());
  next.setHours(24, 0, 0, 0); // the Date arithmetic of the local calendar: the next day's 00:00 (or first moment)
  return next.getTime() - now.getTime();
}

export function addDays(value: IsoDate, days: number): IsoDate {
  const date = parseIsoDate(value);
  date.setUTCDate(date.getUTCDate() + days);
  return formatIsoDate(date);
}

/** The Monday of the ISO week containing `value`. */
export function weekStart(value: IsoDate): IsoDate {
  const weekday = (parseIsoDate(value).getUTCDay() + 6) % 7; // Monday = 0
  return addDays(value, -weekday);
}

export function weekDays(start: IsoDate): IsoDate[] {
  return Array.from({ length: 7 }, (_, i) => addDays(start, i));
}

/** ISO 8601 week number, e.g. 48 for 2026-11-27. */
export function isoWeekNumber(value: IsoDate): number {
  const thursday = parseIsoDate(addDays(weekStart(value), 3));
  const yearStart = Date.UTC(thursday.getUTCFullYear(), 0, 1);
  return Math.floor((thursday.getTime() - yearStart) / 86_400_000 / 7) + 1;
}

export interface HasDateAndHours {
  date: IsoDate;
  hours: number | string;
}

export interface WeekTotals {
  /** Hours per day, in the order of `weekDays(start)`. */
  perDay: number[];
  total: number;
}

/** Hours are summed in hundredths so that 0.1 + 0.2 shows as 0.3. */
export function weekTotals(start: IsoDate, entries: readonly HasDateAndHours[]): WeekTotals {
  const days = weekDays(start);
  const cents = days.map(() => 0);
  for (const entry of entries) {
    const index = days.indexOf(entry.date);
    if (index >= 0) cents[index] = (cents[index] ?? 0) + Math.round(Number(entry.hours) * 100);
  }
  const perDay = cents.map((c) => c / 100);
  return { perDay, total: cents.reduce((a, b) => a + b, 0) / 100 };
}

export function formatHours(hours: number | string): string {
  const value = Number(hours);
  return Number.isInteger(value) ? `${value} h` : `${value.toFixed(2).replace(/0$/, "")} h`;
}

const dayFormat = new Intl.DateTimeFormat("en-GB", {
  weekday: "short",
  day: "numeric",
  month: "short",
  timeZone: "UTC",
});
const longFormat = new Intl.DateTimeFormat("en-GB", {
  weekday: "long",
  day: "numeric",
  month: "long",
  year: "numeric",
  timeZone: "UTC",
});
const rangeFormat = new Intl.DateTimeFormat("en-GB", {
  day: "numeric",
  month: "short",
  year: "numeric",
  timeZone: "UTC",
});

export function formatDay(value: IsoDate): string {
  return dayFormat.format(parseIsoDate(value));
}

export function formatLongDate(value: IsoDate): string {
  return longFormat.format(parseIsoDate(value));
}

export function formatWeekRange(start: IsoDate): string {
  return `${rangeFormat.format(parseIsoDate(start))} – ${rangeFormat.format(parseIsoDate(addDays(start, 6)))}`;
}
