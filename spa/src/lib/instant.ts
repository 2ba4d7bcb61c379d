/**
 * An instant (an audit record's `occurred_at`, a checkpoint's `signed_at`) as people read it: the
 * full local date and time, the year and the UTC offset included, so that a line read next year, or
 * by a colleague in another zone, or pasted into a ticket, says one instant only. Offsets, not zone
 * abbreviations: "CST" is three zones, "IST" three more, and many zones have none in English.
 */

export interface InstantView {
  /** "12 Mar 2025, 14:03:07 UTC+01:00" in the browser's zone (or `timeZone`); "—" without one. */
  text: string;
  /** For `<time datetime>`: the instant in UTC with milliseconds (HTML allows at most three digits). */
  datetime: string | null;
  /** The instant exactly as the server wrote it (its microseconds too), for a tooltip. */
  exact: string | null;
}

/** `value` (an ISO 8601 instant) for display; `timeZone` (IANA name) defaults to the browser's. */
export function describeInstant(value: string | null | undefined, timeZone?: string): InstantView {
  if (!value) return { text: "—", datetime: null, exact: null };
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return { text: value, datetime: null, exact: value };
  // A formatter per call: the browser's zone is read when one is made (a table of a page of records).
  const format = new Intl.DateTimeFormat("en-GB", {
    timeZone,
    day: "numeric",
    month: "short",
    year: "numeric",
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
    hourCycle: "h23",
    timeZoneName: "longOffset",
  });
  const part = Object.fromEntries(format.formatToParts(date).map((p) => [p.type, p.value]));
  return {
    text: `${part.day} ${part.month} ${part.year}, ${part.hour}:${part.minute}:${part.second} ${utcOffset(part.timeZoneName)}`,
    datetime: date.toISOString(),
    exact: value,
  };
}

/** Intl's "GMT+01:00" (or "GMT" alone at zero, "GMT−05:00" with a minus sign) as "UTC+01:00". */
function utcOffset(name: string | undefined): string {
  const offset = (name ?? "").replace(/^GMT/, "").replace("\u2212", "-");
  return `UTC${offset || "+00:00"}`;
}
