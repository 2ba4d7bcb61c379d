/**
 * How an audit record reads on screen. The audit service stores events from several producers
 * (timesheets, approvals, the gateway's denials) as
 * `{seq, occurred_at, source, actor {issuer, subject, kind, name}, action, resource {type, id}, outcome,
 * details}`; this turns each into a short "who did what" line.
 */
import type { AuditEvent, CheckpointStatus, VerifiedRange } from "../api/types";
import { shortSubject } from "../api/types";
// people's text inside the details line is isolated (the cell is a <bdi> too)
import { isolated } from "./limits";
import { addDays, isIsoDate } from "./week";

export interface AuditFilters {
  action: string;
  actor: string;
  outcome: string;
  from: string;
  to: string;
}

export const NO_FILTERS: AuditFilters = { action: "", actor: "", outcome: "", from: "", to: "" };

export const ACTION_CHOICES: [string, string][] = [
  ["timesheet.created", "Entry added"],
  ["timesheet.deleted", "Entry deleted"],
  ["timesheet.decided", "Entry approved or rejected"],
  ["approval.decided", "Approval decision"],
  ["approval.voided", "Decision voided"],
  ["timesheet.uploaded", "Batch upload"],
  ["access.denied", "Access denied"],
];

export const OUTCOME_CHOICES: [string, string][] = [
  ["success", "Succeeded"],
  ["denied", "Denied"],
  ["failure", "Failed"],
];

const LABELS: Record<string, string> = {
  "timesheet.created": "Entry added",
  "timesheet.deleted": "Entry deleted",
  "timesheet.uploaded": "Batch upload",
  "approval.voided": "Decision voided",
  "access.denied": "Access denied",
};

const REASONS: Record<string, string> = {
  own_entry: "approvers cannot decide their own entries",
  entry_gone: "the entry was deleted",
  already_decided: "the entry was decided otherwise",
  insufficient_scope: "missing permission",
  invalid_token: "invalid token",
  missing_token: "no token",
  malformed: "malformed token",
  expired: "expired token",
  not_yet_valid: "token not valid yet",
  // a server's clock, not the caller (docs/runbook.md "TimesheetsClockSkew", "TimesheetsTokenClockSkew")
  token_clock_skew: "token issued ahead of the gateway's clock (a server clock is off)",
  clock_skew: "signed request from a clock out of step (a server clock is off)",
  bad_signature: "token signature does not verify",
  unknown_kid: "token signed with an unknown key",
  alg_not_allowed: "token algorithm not allowed",
  issuer: "token from another issuer",
  audience: "token for another audience",
  revoked: "revoked token",
  rate_limit_address: "too many requests from this address",
  rate_limit_subject: "too many requests from this user",
  rate_limit_in_flight: "too many requests from this user at once",
  // DPoP proofs (svckit/dpop.py), at the gateway and the identity provider
  dpop_ath: "DPoP proof not for this token",
  dpop_htm: "DPoP proof for another method",
  dpop_htu: "DPoP proof for another URL",
  dpop_iat: "DPoP proof too old or from the future",
  dpop_jwk: "DPoP proof with an unusable key",
  dpop_key_mismatch: "DPoP proof by another key than the token's",
  dpop_malformed: "malformed DPoP proof",
  dpop_replay: "DPoP proof used twice",
  dpop_signature: "DPoP proof signature does not verify",
  dpop_typ: "not a DPoP proof (typ)",
  dpop_alg: "DPoP proof algorithm not allowed",
  dpop_multiple: "more than one DPoP proof",
  dpop_missing: "DPoP-bound token sent without a proof",
  dpop_required: "bearer token where only DPoP-bound tokens are accepted",
  dpop_bearer_bound: "DPoP-bound token sent as a bearer token",
  // the identity provider's refusals of sign-ins and token requests (services/identity/identity/denials.py)
  invalid_credentials: "wrong user name or password",
  throttled: "too many failed attempts",
  csrf: "form security check failed",
  invalid_client: "client authentication failed",
  code_replay: "authorization code used twice",
  refresh_token_reuse: "refresh token used again",
  dpop_binding_code: "authorization code used without its DPoP key",
  dpop_binding_refresh_token: "refresh token used without its DPoP key",
  dpop_binding_client: "no DPoP proof from a client that must send one",
  user_gone: "the token's user no longer exists",
  dpop_bound_bearer: "DPoP-bound token sent as a bearer token",
  dpop_proof_missing: "DPoP-bound token sent without a proof",
  dpop_unbound_token: "token without a DPoP key sent with the DPoP scheme",
  code_limit: "too many sign-ins to apps for this user",
};

/** Why something was refused or voided: a label for people, and the code the producer recorded. */
export interface ReasonView {
  code: string;
  /** The human label of a known code; an unknown code (a newer producer's) spaced out. */
  label: string;
  /** Whether the label is more than the code: the screen then shows the code beside it. */
  known: boolean;
}

/** The reason `code` as the audit page shows it (codes stay searchable and quotable to support). */
export function describeReason(code: string): ReasonView {
  const label = REASONS[code];
  return label ? { code, label, known: true } : { code, label: code.replace(/_/g, " "), known: false };
}

/**
 * Query parameters of `GET /api/audit/events`. The From and To dates are whole days in the browser's
 * time zone, the one the view shows each record's time in (`to` is exclusive: the next day's start), so
 * a day selects exactly the records shown on it, on days of 23 or 25 hours too.
 */
export function filtersToQuery(filters: AuditFilters): Record<string, string> {
  const query: Record<string, string> = {};
  if (filters.action) query.action = filters.action;
  if (filters.actor.trim()) query.actor = filters.actor.trim();
  if (filters.outcome) query.outcome = filters.outcome;
  if (isIsoDate(filters.from)) query.from = startOfLocalDay(filters.from);
  if (isIsoDate(filters.to)) query.to = startOfLocalDay(addDays(filters.to, 1));
  return query;
}

/** The instant a calendar day begins in the browser's time zone, as RFC 3339 UTC: local midnight, or
 * the first moment of the day where the clocks skip midnight (summer time starting at 00:00). */
function startOfLocalDay(value: string): string {
  const [year, month, day] = value.split("-").map(Number) as [number, number, number];
  const start = new Date(2000, 0, 1);
  start.setFullYear(year, month - 1, day); // not new Date(y, m, d): it reads years 0-99 as 1900-1999
  start.setHours(0, 0, 0, 0);
  return start.toISOString().replace(/\.000Z$/, "Z");
}

type Json = Record<string, unknown>;

function record(value: unknown): Json {
  return typeof value === "object" && value !== null && !Array.isArray(value) ? (value as Json) : {};
}

function text(value: unknown): string | null {
  if (value === undefined || value === null || value === "") return null;
  if (typeof value === "string") return value;
  if (typeof value === "number" || typeof value === "boolean") return String(value);
  return null;
}

function personText(value: unknown): string | null {
  const person = record(value);
  const name = text(person.name);
  const subject = text(person.subject) ?? text(person.sub);
  if (name) return name;
  if (subject) return subject === "anonymous" ? "anonymous" : shortSubject(subject);
  return text(value);
}

export interface EventView {
  key: string;
  seq: number | null;
  time: string | null;
  actor: string;
  /** The actor's subject, for the "who" filter. */
  actorSubject: string | null;
  action: string;
  label: string;
  tone: "create" | "delete" | "approve" | "reject" | "deny" | "other";
  outcome: string;
  /** What was done to what, " · "-separated (the reason apart: `reason`). */
  details: string;
  reason: ReasonView | null;
}

function toneOf(action: string, decision: string | null, outcome: string): EventView["tone"] {
  if (outcome === "denied" || outcome === "failure" || /denied/.test(action)) return "deny";
  if (decision === "rejected" || /reject/.test(action)) return "reject";
  if (decision === "approved" || /approv/.test(action)) return "approve";
  if (/delet/.test(action)) return "delete";
  if (/creat|upload/.test(action)) return "create";
  return "other";
}

/** An audit record; anything else that looks like one (older records, other sources) is read defensively. */
export function describeEvent(raw: AuditEvent | Json): EventView {
  const event = raw as Json;
  const details = record(event.details);
  const action = text(event.action) ?? "event";
  const outcome = text(event.outcome) ?? "success";
  const decision = text(details.decision);
  const actor = record(event.actor);
  const seq = Number(event.seq);

  let label = LABELS[action] ?? action;
  if (decision === "approved") label = "Entry approved";
  if (decision === "rejected") label = "Entry rejected";
  if (action === "approval.decided" && outcome === "denied") label = "Decision refused";
  // a recorded decision that could never apply: what was decided is a detail, not the label
  const voided = action === "approval.voided";
  if (voided) label = "Decision voided";

  const parts: string[] = [];
  if (voided && decision) parts.push(decision);
  const project = text(details.project);
  if (project) parts.push(isolated(project));
  const date = text(details.date);
  if (date) parts.push(date);
  const hours = text(details.hours);
  if (hours) parts.push(`${hours} h`);
  const owner = personText(details.owner);
  const ownerSubject = text(record(details.owner).subject);
  if (owner && ownerSubject !== text(actor.subject)) parts.push(`owner ${isolated(owner)}`);
  const comment = text(details.comment);
  if (comment) parts.push(`“${isolated(comment)}”`);
  if (action === "access.denied") {
    const status = text(details.status);
    const route = text(details.route);
    const method = text(details.method);
    if (method && route) parts.push(`${method} ${route}`);
    if (status) parts.push(String(status));
    const scope = text(details.required_scope);
    if (scope) parts.push(`needs ${scope}`);
  }
  const code = text(details.reason);
  const reason = code ? describeReason(code) : null;
  if (text(details.entries)) parts.push(`${text(details.entries)} entries`);
  if (parts.length === 0 && reason === null) {
    const resource = record(event.resource);
    const id = text(resource.id);
    if (id) parts.push(`${text(resource.type) ?? "resource"} ${id}`);
  }

  return {
    key: text(event.id) ?? text(event.seq) ?? "",
    seq: Number.isFinite(seq) && seq > 0 ? seq : null,
    time: text(event.occurred_at) ?? text(event.recorded_at),
    actor: personText(actor) ?? "—",
    actorSubject: text(actor.subject),
    action,
    label,
    tone: toneOf(action, decision, outcome),
    outcome,
    details: parts.join(" · "),
    reason,
  };
}

/** How the chain's signed checkpoints read on the audit page (from `GET /api/audit/verify`). */
export interface CheckpointView {
  tone: "ok" | "broken" | "pending" | "off";
  /** "Checkpoint #17 covers events 1–1842, signed 23 Nov, 17:05:00" or why there is none. */
  headline: string;
  /** "signature valid" / "signature INVALID": the checkpoints are signed by a published key. */
  signature: string | null;
  /** "chain matches" / "chain does NOT match": the events still hold every signed head. */
  chain: string | null;
  problem: string | null;
}

/**
 * Absent (`undefined`) means the audit service signs no checkpoints: the chain is then only checked
 * against itself, which an owner of the database can recompute.
 */
export function describeCheckpoints(
  status: CheckpointStatus | null | undefined,
  when: (iso: string) => string,
): CheckpointView {
  if (!status) {
    return {
      tone: "off",
      headline: "No signed checkpoints: the chain is only checked against itself.",
      signature: null,
      chain: null,
      problem: null,
    };
  }
  const problem = typeof status.problem === "string" ? status.problem : null;
  const signature = status.signatures_valid ? "signature valid" : "signature INVALID";
  const chain = status.chain_matches ? "chain matches" : "chain does NOT match";
  const bad = !status.signatures_valid || !status.chain_matches || problem !== null;
  const latest = status.latest;
  if (!latest) {
    return {
      tone: bad ? "broken" : "pending",
      headline: "No checkpoint signed yet.",
      signature: bad ? signature : null,
      chain: bad ? chain : null,
      problem,
    };
  }
  const span = latest.seq > 0 ? `events 1–${latest.seq}` : "an empty trail";
  return {
    tone: bad ? "broken" : "ok",
    headline: `Checkpoint #${latest.number} covers ${span}, signed ${when(latest.signed_at)}`,
    signature,
    chain,
    problem,
  };
}

/**
 * What a verification of a range covered (the answer's `range`; absent when the whole trail was
 * verified): "From checkpoint #3 (event 3000, signed … with key ck-1) to the newest event, 3010."
 * The audit page verifies from the newest checkpoint when the trail is too long to verify whole.
 */
export function describeRange(range: VerifiedRange | null | undefined, when: (iso: string) => string): string | null {
  if (!range) return null;
  const anchor = range.anchor;
  const from =
    anchor.kind === "checkpoint"
      ? `checkpoint #${anchor.number ?? "?"} (event ${anchor.seq}, signed ${anchor.signed_at ? when(anchor.signed_at) : "at an unknown time"} with key ${anchor.key_id ?? "?"})`
      : "the first event";
  const to = range.to_head ? `the newest event, ${range.to_seq}` : `event ${range.to_seq}`;
  return `From ${from} to ${to}.`;
}

/** "1 event checked", "30000 events checked": how many records a verification walked. */
export function eventsChecked(checked: number | null | undefined): string {
  const n = checked ?? 0;
  return `${n} ${n === 1 ? "event" : "events"} checked`;
}
