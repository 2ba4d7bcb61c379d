/**
 * The entry form's unsaved text, kept in sessionStorage so that it survives the user being sent to
 * sign in again (the session ended: the page leaves for the provider and comes back fresh).
 *
 * Per user: the key and the stored value both name the user's `sub`, and a draft is only handed back
 * to that user, so on a shared browser bob never sees what alice typed. It holds the four form fields
 * and the Idempotency-Key of a create whose outcome is unknown, nothing else (never a token). It is dropped when the entry is saved, when the form is emptied,
 * and when the user signs out on purpose; when another user signs in, every draft but theirs is dropped
 * (what alice typed is not left for bob to find); sessionStorage itself ends with the tab.
 */

export interface Draft {
  date: string;
  project: string;
  hours: string;
  notes: string;
  /**
   * The Idempotency-Key of this entry's last create whose outcome is not known (its answer was lost)
   * and the body it was sent with: submitting the same entry after signing in again sends the same
   * key, so an attempt the service did store is answered, not stored a second time. Not a secret: it
   * names a request, it grants nothing.
   */
  pending?: PendingCreate;
}

export interface PendingCreate {
  key: string;
  body: string;
}

/** The part of the Web Storage API used here (sessionStorage in the app). */
export interface DraftStorage {
  readonly length: number;
  key(index: number): string | null;
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

const PREFIX = "tsp.draft.";
/** Longer than the form allows (notes: 2,000): anything bigger was not written by the form. */
const MAX_FIELD = 4_000;
const FIELDS = ["date", "project", "hours", "notes"] as const;

export function draftKey(sub: string): string {
  return `${PREFIX}${encodeURIComponent(sub)}`;
}

/** Whether the form holds anything worth keeping (a date alone is the form's default). */
export function hasText(draft: Draft): boolean {
  return Boolean(draft.project || draft.hours || draft.notes);
}

/** Keeps `draft` for `sub`, or forgets it when there is nothing typed. Storage failures are ignored. */
export function saveDraft(storage: DraftStorage, sub: string, draft: Draft): void {
  try {
    if (!hasText(draft)) storage.removeItem(draftKey(sub));
    else storage.setItem(draftKey(sub), JSON.stringify({ sub, ...pick(draft), pending: draft.pending ?? null }));
  } catch {
    // Full or refused (private mode): the draft is a convenience, the form still works.
  }
}

/** `sub`'s draft, or null: none, someone else's, or not what `saveDraft` writes. */
export function loadDraft(storage: DraftStorage, sub: string): Draft | null {
  let raw: string | null;
  try {
    raw = storage.getItem(draftKey(sub));
  } catch {
    return null;
  }
  if (raw === null) return null;
  let value: unknown;
  try {
    value = JSON.parse(raw);
  } catch {
    return null;
  }
  if (typeof value !== "object" || value === null) return null;
  const record = value as Record<string, unknown>;
  if (record.sub !== sub) return null;
  if (!FIELDS.every((field) => typeof record[field] === "string" && (record[field] as string).length <= MAX_FIELD))
    return null;
  const draft = pick(record as unknown as Draft);
  const pending = pendingOf(record.pending);
  return hasText(draft) ? (pending ? { ...draft, pending } : draft) : null;
}

export function clearDraft(storage: DraftStorage, sub: string): void {
  try {
    storage.removeItem(draftKey(sub));
  } catch {
    // Nothing more to do.
  }
}

/** A stored pending create as `saveDraft` writes it, else undefined (none, or not what it writes). */
function pendingOf(value: unknown): PendingCreate | undefined {
  if (typeof value !== "object" || value === null) return undefined;
  const { key, body } = value as Record<string, unknown>;
  if (typeof key !== "string" || !/^[A-Za-z0-9-]{1,64}$/.test(key)) return undefined;
  if (typeof body !== "string" || body.length > 4 * MAX_FIELD) return undefined;
  return { key, body };
}

function pick(draft: Draft): Draft {
  return { date: draft.date, project: draft.project, hours: draft.hours, notes: draft.notes };
}

/** Drops every draft but `sub`'s: another user signed in on this tab. */
export function forgetOthers(storage: DraftStorage, sub: string): void {
  try {
    const mine = draftKey(sub);
    const others: string[] = [];
    for (let index = 0; index < storage.length; index++) {
      const key = storage.key(index);
      if (key !== null && key.startsWith(PREFIX) && key !== mine) others.push(key);
    }
    for (const key of others) storage.removeItem(key);
  } catch {
    // Nothing more to do.
  }
}
