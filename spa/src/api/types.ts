/** Shapes of the API's answers, as the timesheets, approvals and audit services define them. */

export type EntryStatus = "submitted" | "approved" | "rejected";

export interface Person {
  issuer?: string;
  subject?: string;
  sub?: string;
  name?: string | null;
  email?: string | null;
  [key: string]: unknown;
}

export interface Decision {
  by?: Person | string | null;
  at?: string | null;
  comment?: string | null;
  decision?: string;
}

export interface Entry {
  id: string;
  date: string;
  project: string;
  hours: number | string;
  notes?: string | null;
  status: EntryStatus;
  owner?: Person | string | null;
  decision?: Decision | null;
  created_at?: string;
  updated_at?: string;
}

export interface NewEntry {
  date: string;
  project: string;
  hours: number;
  notes: string;
}

export interface Page<T> {
  items: T[];
  next_cursor?: string | null;
}

export interface AuditEvent {
  id?: string | number;
  seq?: number;
  [key: string]: unknown;
}

export interface ChainVerification {
  ok: boolean;
  checked?: number;
  [key: string]: unknown;
}

/** A readable name for a person field that may be an object, a bare subject or missing. */
export function personName(person: Person | string | null | undefined): string {
  if (!person) return "someone";
  if (typeof person === "string") return shortSubject(person);
  return person.name || person.email || shortSubject(person.subject ?? person.sub ?? "someone");
}

/** Subjects are namespaced by issuer (`http://localhost:9000/|alice`); show only the last part. */
export function shortSubject(subject: string): string {
  const parts = subject.split(/[|#]/);
  return parts.at(-1) || subject;
}
