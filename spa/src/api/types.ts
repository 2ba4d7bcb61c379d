/**
 * The API's shapes, as the app uses them. They are the generated types of the published OpenAPI
 * document (./schema.d.ts, `npm run gen:api`), which the gateway builds from the same models the
 * services validate with: change the API, regenerate, and the compiler shows what to adapt.
 */
import type { components } from "./schema";

type Schemas = components["schemas"];

export type Entry = Schemas["Entry"];
export type EntryStatus = Entry["status"];
export type Person = Schemas["Person"];
export type Decision = Schemas["EntryDecision"];
export type NewEntry = Schemas["EntryIn"];
export type DecisionRequest = Schemas["DecisionIn"];
export type EntryPage = Schemas["EntryPage"];
export type AuditEvent = Schemas["AuditRecord"];
export type AuditPage = Schemas["EventsPage"];
export type ChainVerification = Schemas["VerifyResult"];
export type CheckpointStatus = Schemas["CheckpointStatus"];
export type VerifiedRange = Schemas["VerifiedRange"];

/** A page of any listing: the items and the cursor of the next page (null on the last). */
export interface Page<T> {
  items: T[];
  next_cursor: string | null;
}

/** A readable name for a person field that may be an object, a bare subject or missing. */
export function personName(person: Person | string | null | undefined): string {
  if (!person) return "someone";
  if (typeof person === "string") return shortSubject(person);
  return person.name || shortSubject(person.subject || "someone");
}

/** Subjects are namespaced by issuer (`http://localhost:9000/|alice`); show only the last part. */
export function shortSubject(subject: string): string {
  const parts = subject.split(/[|#]/);
  return parts.at(-1) || subject;
}
