/**
 * Turning the API's RFC 9457 problem answers into messages people understand.
 *
 * 401 → sign in again; 403 → which permission is missing (from the RFC 6750 `WWW-Authenticate` header);
 * 409 → why the action is not possible; 422 → a message next to each field.
 */

export interface FieldError {
  field: string;
  message: string;
}

export interface Problem {
  type?: string;
  title?: string;
  status?: number;
  detail?: string;
  errors?: unknown;
  request_id?: string;
  [key: string]: unknown;
}

export class ApiError extends Error {
  override name = "ApiError";
  constructor(
    readonly status: number,
    readonly problem: Problem,
    readonly missingScope: string | null = null,
    readonly retryAfterSeconds: number | null = null,
  ) {
    super(problem.detail ?? problem.title ?? `HTTP ${status}`);
  }

  /** Field name → message, for 422 answers. */
  get fieldErrors(): Record<string, string> {
    const result: Record<string, string> = {};
    for (const error of parseFieldErrors(this.problem.errors)) {
      result[error.field] ??= error.message;
    }
    return result;
  }
}

/** A network failure: the request never got an HTTP answer. */
export class NetworkError extends Error {
  override name = "NetworkError";
}

/**
 * An attempt that got no (complete) answer within the client's request timeout and was aborted: a
 * network failure like any other (retried where the call retries, and a write's outcome is unknown:
 * the request may have reached the service, which may have stored it).
 */
export class TimeoutError extends NetworkError {
  override name = "TimeoutError";
}

/** A failure worth another try as it is: no HTTP answer, or 502/503/504 from the gateway or a service. */
export function isTransient(error: unknown): boolean {
  return error instanceof NetworkError || (error instanceof ApiError && [502, 503, 504].includes(error.status));
}

/**
 * Whether a failed write may have been applied all the same. The answer's `outcome` says so where it is
 * given (the services' 503s, and the gateway's 502/503/504 for a write: `"unknown"` or `"not_stored"`);
 * without it, a broken connection or a proxy that gave up (502, 504) may have come after the request
 * reached the service, while a 503 means nothing was stored.
 */
export function outcomeUnknown(error: unknown): boolean {
  if (error instanceof NetworkError) return true;
  if (!(error instanceof ApiError)) return false;
  const outcome = error.problem.outcome;
  if (outcome === "unknown") return true;
  if (outcome === "not_stored") return false;
  return error.status === 502 || error.status === 504;
}

/**
 * Reads `errors: [{field, loc, message}]`. `field` may be dotted (`body.hours`, `entries.0.hours`) and
 * `loc` an array; the form field is the last named part.
 */
export function parseFieldErrors(errors: unknown): FieldError[] {
  if (!Array.isArray(errors)) return [];
  const result: FieldError[] = [];
  for (const item of errors) {
    if (typeof item !== "object" || item === null) continue;
    const record = item as Record<string, unknown>;
    const message =
      typeof record.message === "string" ? record.message : typeof record.msg === "string" ? record.msg : null;
    let parts: unknown[] = [];
    if (typeof record.field === "string") parts = record.field.split(".");
    else if (Array.isArray(record.loc)) parts = record.loc;
    else if (typeof record.loc === "string") parts = record.loc.split(".");
    const named = parts.filter((part): part is string => typeof part === "string" && !/^\d+$/.test(part));
    const field = named.at(-1);
    if (field && message) result.push({ field, message });
  }
  return result;
}

/** The `type` of a problem's first `errors[]` member (`chain_too_long`, `query_too_broad`…), if any. */
export function problemType(error: ApiError): string | null {
  const errors = error.problem.errors;
  const first: unknown = Array.isArray(errors) ? errors[0] : null;
  if (typeof first !== "object" || first === null) return null;
  const type = (first as Record<string, unknown>).type;
  return typeof type === "string" ? type : null;
}

/** The `scope="…"` of an RFC 6750 `WWW-Authenticate: Bearer error="insufficient_scope"` header. */
export function missingScopeFrom(header: string | null): string | null {
  if (!header || !/error="insufficient_scope"/.test(header)) return null;
  const match = /scope="([^"]*)"/.exec(header);
  return match?.[1]?.trim() || null;
}

const SCOPE_WORDS: Record<string, string> = {
  "read:timesheets": "view timesheets",
  "create:timesheets": "add timesheet entries",
  "delete:timesheets": "delete timesheet entries",
  "approve:timesheets": "approve timesheets",
  "read:audit": "read the audit trail",
  "batch:upload": "upload timesheets in bulk",
};

export function describeScope(scope: string): string {
  return SCOPE_WORDS[scope] ?? scope;
}

export type MessageKind =
  "signin" | "permission" | "conflict" | "invalid" | "notfound" | "busy" | "unavailable" | "error";

export interface UserMessage {
  kind: MessageKind;
  title: string;
  text: string;
}

/** A message for any failure of an API call; `action` says what the user was doing ("delete the entry"). */
export function describeError(error: unknown, action: string): UserMessage {
  if (error instanceof TimeoutError) {
    return {
      kind: "unavailable",
      title: "The server did not answer",
      text: `We couldn't ${action} because the server did not answer in time. Please try again in a moment.`,
    };
  }
  if (error instanceof NetworkError) {
    return {
      kind: "unavailable",
      title: "Can't reach the server",
      text: `We couldn't ${action} because the server could not be reached. Check your connection and try again.`,
    };
  }
  if (!(error instanceof ApiError)) {
    return { kind: "error", title: "Something went wrong", text: `We couldn't ${action}. Please try again.` };
  }
  const detail = error.problem.detail?.trim();
  switch (error.status) {
    case 401:
      return {
        kind: "signin",
        title: "Please sign in again",
        text: "Your session has ended, so nothing was changed. Sign in again to continue.",
      };
    case 403: {
      const scopes = error.missingScope?.split(/\s+/).filter(Boolean) ?? [];
      const needed = scopes.length
        ? `It needs the permission to ${scopes.map(describeScope).join(" and ")} (${scopes.join(", ")}), which your account was not granted.`
        : detail || "Your account does not have the permission this needs.";
      return { kind: "permission", title: "You don't have permission", text: `You can't ${action}. ${needed}` };
    }
    case 404:
      return {
        kind: "notfound",
        title: "Not found",
        text: `We couldn't ${action}: it no longer exists, or it isn't yours.${detail ? ` (${detail})` : ""}`,
      };
    case 409:
      return {
        kind: "conflict",
        title: "That's not possible right now",
        text: `You can't ${action}: ${detail || "its state has changed."}`,
      };
    case 400:
    case 422:
      return {
        kind: "invalid",
        title: "Please check the highlighted fields",
        text: detail && !/invalid fields/i.test(detail) ? detail : "Some of the values need correcting.",
      };
    case 429: {
      const wait = error.retryAfterSeconds;
      return {
        kind: "busy",
        title: "Too many requests",
        text: `Please wait${wait ? ` ${wait} seconds` : " a moment"} and try again.`,
      };
    }
    default:
      if (error.status >= 500) {
        return {
          kind: "unavailable",
          title: "The service is unavailable",
          text: `We couldn't ${action} because the service had a problem. Please try again in a moment.${
            error.problem.request_id ? ` (Reference: ${error.problem.request_id})` : ""
          }`,
        };
      }
      return {
        kind: "error",
        title: error.problem.title ?? "Request failed",
        text: detail ?? `We couldn't ${action}.`,
      };
  }
}

/**
 * Whether a failed decision is recorded all the same and waits to be applied: the approvals service's
 * 503 that carries the decision (it could not apply it to the entry yet; its reconciler, or the same
 * request repeated, does).
 */
export function isRecorded(error: unknown): boolean {
  return error instanceof ApiError && error.status === 503 && !outcomeUnknown(error) && Boolean(error.problem.decision);
}

/**
 * What an approver is told when a decision still failed transiently after its retries (`isTransient`),
 * and the comment stays in the card: whether it may have been recorded (the answer was lost: pressing
 * the button again is answered with the recorded decision, never a second one), is recorded and waits
 * to be applied (the approvals service's 503 carrying the decision), or surely was not.
 */
export function describeUndecided(error: unknown, decision: "approved" | "rejected"): UserMessage {
  const button = decision === "approved" ? "Approve" : "Reject";
  const reference =
    error instanceof ApiError && error.problem.request_id ? ` (Reference: ${error.problem.request_id})` : "";
  if (outcomeUnknown(error)) {
    return {
      kind: "unavailable",
      title: "The decision may not have been recorded",
      text: `The service did not answer, so we can't tell yet whether the entry was ${decision}. Press ${button} again in a moment: it will not be decided twice.${reference}`,
    };
  }
  if (isRecorded(error)) {
    return {
      kind: "unavailable",
      title: "Recorded, not applied yet",
      text: `Your decision is recorded and is applied as soon as the timesheets service answers. Press ${button} again in a moment to see it done.${reference}`,
    };
  }
  return {
    kind: "unavailable",
    title: "The service is unavailable",
    text: `The entry was not ${decision}: the service could not be reached. Your comment is kept. Press ${button} again in a moment.${reference}`,
  };
}
