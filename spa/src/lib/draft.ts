/**
 * What a user typed and has not saved yet, kept in sessionStorage so that it survives the user being
 * sent to sign in again (the session ended: the page leaves for the provider and comes back fresh), a
 * reload, or a save that failed: the entry form's fields, and the comments a manager typed on the
 * entries of the approval queue.
 *
 * Per user: the key and the stored value both name the user's `sub`, and a draft is only handed back
 * to that user, so on a shared browser bob never sees what alice typed. The entry draft holds the four
 * form fields and the Idempotency-Key of a create whose outcome is unknown; the comments, entry id →
 * text; nothing else (never a token). The entry draft is dropped when the entry is saved and when the
 * form is emptied, a comment when its decision is recorded (or the entry left the queue), and both
 * when the user signs out on purpose; when another user signs in, every draft but theirs is dropped
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
const COMMENTS_PREFIX = "tsp.comments.";
/** Longer than the form allows (notes: 2,000): anything bigger was not written by the form. */
const MAX_FIELD = 4_000;
/** Comments kept at most (the oldest go first): a queue's worth, not an unbounded pile. */
export const MAX_COMMENTS = 100;
const FIELDS = ["date", "project", "hours", "notes"] as const;

export function draftKey(sub: string): string {
  return `${PREFIX}${encodeURIComponent(sub)}`;
}

export function commentsKey(sub: string): string {
  return `${COMMENTS_PREFIX}${encodeURIComponent(sub)}`;
}

/** The object stored under `key` if it names `sub` as its user; null otherwise (or unreadable). */
function readOwn(storage: DraftStorage, key: string, sub: string): Record<string, unknown> | null {
  let raw: string | null;
  try {
    raw = storage.getItem(key);
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
  if (typeof value !== "object" || value === null || Array.isArray(value)) return null;
  const record = value as Record<string, unknown>;
  return record.sub === sub ? record : null;
}

/** Stores `value` for `sub` under `key`, or removes it when null. Storage failures are ignored. */
function writeOwn(storage: DraftStorage, key: string, sub: string, value: Record<string, unknown> | null): void {
  try {
    if (value === null) storage.removeItem(key);
    else storage.setItem(key, JSON.stringify({ sub, ...value }));
  } catch {
    // Full or refused (private mode): a draft is a convenience, the screen still works.
  }
}

/** Whether the form holds anything worth keeping (a date alone is the form's default). */
export function hasText(draft: Draft): boolean {
  return Boolean(draft.project || draft.hours || draft.notes);
}

/** Keeps `draft` for `sub`, or forgets it when there is nothing typed. Storage failures are ignored. */
export function saveDraft(storage: DraftStorage, sub: string, draft: Draft): void {
  writeOwn(storage, draftKey(sub), sub, hasText(draft) ? { ...pick(draft), pending: draft.pending ?? null } : null);
}

/** `sub`'s draft, or null: none, someone else's, or not what `saveDraft` writes. */
export function loadDraft(storage: DraftStorage, sub: string): Draft | null {
  const record = readOwn(storage, draftKey(sub), sub);
  if (record === null) return null;
  if (!FIELDS.every((field) => typeof record[field] === "string" && (record[field] as string).length <= MAX_FIELD))
    return null;
  const draft = pick(record as unknown as Draft);
  const pending = pendingOf(record.pending);
  return hasText(draft) ? (pending ? { ...draft, pending } : draft) : null;
}

export function clearDraft(storage: DraftStorage, sub: string): void {
  writeOwn(storage, draftKey(sub), sub, null);
}

/** Everything `sub` left unsaved, the entry and the comments: they sign out on purpose. */
export function clearDrafts(storage: DraftStorage, sub: string): void {
  clearDraft(storage, sub);
  writeOwn(storage, commentsKey(sub), sub, null);
}

/** Entry id → the comment `sub` typed on it and has not had recorded yet. */
export type Comments = Record<string, string>;

const ENTRY_ID = /^[A-Za-z0-9-]{1,64}$/;

/** `sub`'s unrecorded comments: those that read as `saveComment` writes them (others are skipped). */
export function loadComments(storage: DraftStorage, sub: string): Comments {
  const record = readOwn(storage, commentsKey(sub), sub);
  const stored = record?.comments;
  const comments: Comments = {};
  if (typeof stored !== "object" || stored === null || Array.isArray(stored)) return comments;
  for (const [id, text] of Object.entries(stored as Record<string, unknown>)) {
    if (ENTRY_ID.test(id) && typeof text === "string" && text.trim() && text.length <= MAX_FIELD) comments[id] = text;
  }
  return comments;
}

/**
 * Keeps the comment `sub` is typing on entry `id` (an empty one is forgotten). The newest stay when
 * there are more than `MAX_COMMENTS`. The decisions marked recorded (`markRecorded`) stay as they are.
 */
export function saveComment(storage: DraftStorage, sub: string, id: string, comment: string): void {
  if (!ENTRY_ID.test(id)) return;
  const comments = loadComments(storage, sub);
  delete comments[id];
  if (comment.trim()) comments[id] = comment.slice(0, MAX_FIELD);
  writeComments(storage, sub, comments, loadRecorded(storage, sub));
}

/** The comment on `id` is done with: its decision was applied, or the entry left the queue. */
export function clearComment(storage: DraftStorage, sub: string, id: string): void {
  if (!ENTRY_ID.test(id)) return;
  const comments = loadComments(storage, sub);
  const recorded = loadRecorded(storage, sub);
  delete comments[id];
  delete recorded[id];
  writeComments(storage, sub, comments, recorded);
}

/** Entry id → the decision `sub` made on it that the approvals service recorded but has not applied yet. */
export type Recorded = Record<string, "approved" | "rejected">;

/** `sub`'s decisions recorded and not applied yet, as `markRecorded` writes them (others are skipped). */
export function loadRecorded(storage: DraftStorage, sub: string): Recorded {
  const stored = readOwn(storage, commentsKey(sub), sub)?.recorded;
  const recorded: Recorded = {};
  if (typeof stored !== "object" || stored === null || Array.isArray(stored)) return recorded;
  for (const [id, decision] of Object.entries(stored as Record<string, unknown>)) {
    if (ENTRY_ID.test(id) && (decision === "approved" || decision === "rejected")) recorded[id] = decision;
  }
  return recorded;
}

/**
 * The approvals service recorded `sub`'s `decision` on `id` but could not apply it yet (its 503 that
 * carries the decision): a reload must not say that no decision was made with the comment kept.
 * Forgotten with the comment (`clearComment`), once the decision is seen applied.
 */
export function markRecorded(storage: DraftStorage, sub: string, id: string, decision: "approved" | "rejected"): void {
  if (!ENTRY_ID.test(id)) return;
  const recorded = loadRecorded(storage, sub);
  delete recorded[id];
  recorded[id] = decision;
  writeComments(storage, sub, loadComments(storage, sub), recorded);
}

function writeComments(storage: DraftStorage, sub: string, comments: Comments, recorded: Recorded): void {
  const kept = Object.entries(comments).slice(-MAX_COMMENTS);
  const marked = Object.entries(recorded).slice(-MAX_COMMENTS);
  const value: Record<string, unknown> = {};
  if (kept.length) value.comments = Object.fromEntries(kept);
  if (marked.length) value.recorded = Object.fromEntries(marked);
  writeOwn(storage, commentsKey(sub), sub, kept.length || marked.length ? value : null);
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
    const mine = new Set([draftKey(sub), commentsKey(sub)]);
    const others: string[] = [];
    for (let index = 0; index < storage.length; index++) {
      const key = storage.key(index);
      if (key !== null && (key.startsWith(PREFIX) || key.startsWith(COMMENTS_PREFIX)) && !mine.has(key))
        others.push(key);
    }
    for (const key of others) storage.removeItem(key);
  } catch {
    // Nothing more to do.
  }
}
