/**
 * How an audit event reads on screen. The audit service stores events from several producers
 * (timesheets, approvals, the gateway's denials); this turns each into a short "who did what" line.
 */
import type { AuditEvent } from "../api/types";
import { shortSubject } from "../api/types";

export interface AuditFilters {
  action: string;
  actor: string;
  from: string;
  to: string;
}

export const ACTION_CHOICES: [string, string][] = [
  ["timesheet.created", "Entry added"],
  ["timesheet.deleted", "Entry deleted"],
  ["timesheet.approved", "Entry approved"],
  ["timesheet.rejected", "Entry rejected"],
  ["access.denied", "Access denied"],
];

const LABELS: Record<string, string> = Object.fromEntries(ACTION_CHOICES);

export function filtersToQuery(filters: AuditFilters): Record<string, string> {
  const query: Record<string, string> = {};
  if (filters.action) query.action = filters.action;
  if (filters.actor.trim()) query.actor = filters.actor.trim();
  if (filters.from) query.since = `${filters.from}T00:00:00Z`;
  if (filters.to) query.until = `${filters.to}T23:59:59Z`;
  return query;
}

function pick(event: Record<string, unknown>, ...keys: string[]): unknown {
  for (const key of keys) {
    const value = event[key];
    if (value !== undefined && value !== null && value !== "") return value;
  }
  return undefined;
}

function asText(value: unknown): string | null {
  if (value === undefined || value === null) return null;
  if (typeof value === "string") return value;
  if (typeof value === "number" || typeof value === "boolean") return String(value);
  if (typeof value === "object") {
    const record = value as Record<string, unknown>;
    const named = pick(record, "name", "email", "sub", "subject", "id");
    if (named !== undefined) return asText(named);
  }
  return JSON.stringify(value);
}

export interface EventView {
  key: string;
  seq: number | null;
  time: string | null;
  actor: string;
  action: string;
  label: string;
  tone: "create" | "delete" | "approve" | "reject" | "deny" | "other";
  details: string;
}

function toneOf(action: string): EventView["tone"] {
  if (/deni|refus|forbid|unauth|fail/i.test(action)) return "deny";
  if (/reject/i.test(action)) return "reject";
  if (/approv/i.test(action)) return "approve";
  if (/delet/i.test(action)) return "delete";
  if (/creat|add|upload/i.test(action)) return "create";
  return "other";
}

export function describeEvent(raw: AuditEvent): EventView {
  const event = raw as Record<string, unknown>;
  const data = (pick(event, "data", "details", "payload") ?? {}) as Record<string, unknown>;
  const action = asText(pick(event, "action", "type", "event_type", "kind")) ?? "event";
  const actorRaw = pick(event, "actor", "subject", "actor_sub", "sub", "by");
  const actor = actorRaw === undefined ? "—" : shortSubject(asText(actorRaw) ?? "—");
  const seq = Number(pick(event, "seq", "sequence", "position"));
  const detailParts: string[] = [];
  const target = asText(pick(event, "resource", "target", "entity_id", "entry_id", "object_id"));
  if (typeof data === "object" && data !== null) {
    for (const key of ["project", "date", "hours", "owner", "comment", "reason", "route", "path", "method", "status"]) {
      const value = data[key];
      if (value !== undefined && value !== null && value !== "") {
        const text = key === "owner" ? shortSubject(asText(value) ?? "") : asText(value);
        detailParts.push(key === "comment" ? `“${text}”` : `${key}: ${text}`);
      }
    }
  }
  if (detailParts.length === 0 && target) detailParts.push(target);
  const time = asText(pick(event, "occurred_at", "at", "time", "timestamp", "created_at", "recorded_at"));
  return {
    key: asText(pick(event, "id", "seq", "event_id")) ?? "",
    seq: Number.isFinite(seq) ? seq : null,
    time,
    actor,
    action,
    label: LABELS[action] ?? action,
    tone: toneOf(action),
    details: detailParts.join(" · "),
  };
}
