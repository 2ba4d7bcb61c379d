/** "My timesheets": a week at a glance with per-day and weekly totals, adding and deleting entries. */
import type { ComponentChildren } from "preact";
import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import { newIdempotencyKey, type ApiClient } from "../api/client";
import { ApiError, describeError, isTransient, outcomeUnknown, type UserMessage } from "../api/errors";
import { personName, type Entry } from "../api/types";
import { loadDraft, saveDraft, type PendingCreate } from "../lib/draft";
import { backstop, bidiInName, bidiInText, isolated, NOTES_MAX, PROJECT_MAX, tooLong } from "../lib/limits";
import {
  addDays,
  formatDay,
  formatHours,
  formatLongDate,
  formatWeekRange,
  isIsoDate,
  isoWeekNumber,
  type IsoDate,
  weekDays,
  weekStart,
  weekTotals,
} from "../lib/week";
import {
  Banner,
  ConfirmDialog,
  EmptyState,
  Field,
  Loading,
  MessageAction,
  StatusBadge,
  describedBy,
  toast,
} from "./common";
import { useLoad, useToday } from "./hooks";

interface Props {
  api: ApiClient;
  /** The signed-in user's `sub`: whose draft the entry form keeps and restores. */
  user: string;
  canCreate: boolean;
  canDelete: boolean;
  onSignInAgain: () => void;
}

export function TimesheetsScreen({ api, user, canCreate, canDelete, onSignInAgain }: Props) {
  const todayDate = useToday();
  // The week shown: the current one (`null`, following the date when the user's midnight passes with
  // the page open), or one the user chose.
  const [chosen, setChosen] = useState<IsoDate | null>(null);
  const start = chosen ?? weekStart(todayDate);
  const isThisWeek = start === weekStart(todayDate);
  const show = (monday: IsoDate): void => setChosen(monday === weekStart(todayDate) ? null : monday);
  const days = weekDays(start);
  const end = days[6] ?? start;
  const entries = useLoad(() => api.listEntries(start, end), [start]);
  const [message, setMessage] = useState<UserMessage | null>(null);
  const [toDelete, setToDelete] = useState<Entry | null>(null);
  const [deleting, setDeleting] = useState(false);
  // The week's entries are known only once they loaded for this week and the latest attempt did not
  // fail: until then (another week's answer, a failed load or reload) the totals read "not known",
  // never "0 h", which would say nothing was recorded.
  const known = entries.data !== null && !entries.error;
  const list = useMemo(
    () => (known ? (entries.data ?? []) : []).filter((e) => e.date >= start && e.date <= end),
    [known, entries.data, start, end],
  );
  const totals = weekTotals(start, list);
  const projects = useMemo(() => [...new Set((entries.data ?? []).map((e) => e.project))].sort(), [entries.data]);

  const confirmDelete = async (): Promise<void> => {
    if (!toDelete) return;
    setDeleting(true);
    try {
      await api.deleteEntry(toDelete.id);
      toast(deletedToast(toDelete));
      setMessage(null);
    } catch (error) {
      setMessage(describeError(error, "delete this entry"));
    } finally {
      setDeleting(false);
      setToDelete(null);
      entries.reload();
    }
  };

  const loadError = entries.error ? describeError(entries.error, "load your timesheet") : null;
  const shown = message ?? loadError;

  return (
    <section class="screen" aria-labelledby="screen-title">
      <header class="screen__header">
        <div>
          <h1 id="screen-title" class="screen__title">
            My timesheets
          </h1>
          <p class="screen__subtitle">
            Week {isoWeekNumber(start)} · {formatWeekRange(start)}
          </p>
        </div>
        <nav class="week-nav" aria-label="Choose week">
          <button type="button" class="button button--ghost" onClick={() => show(addDays(start, -7))}>
            <span aria-hidden="true">‹ </span>Previous week
          </button>
          <button type="button" class="button button--ghost" disabled={isThisWeek} onClick={() => setChosen(null)}>
            This week
          </button>
          <button type="button" class="button button--ghost" onClick={() => show(addDays(start, 7))}>
            Next week<span aria-hidden="true"> ›</span>
          </button>
        </nav>
      </header>

      {shown && (
        <Banner
          message={shown}
          onDismiss={message ? () => setMessage(null) : undefined}
          action={
            <MessageAction
              message={shown}
              onSignInAgain={onSignInAgain}
              onRetry={shown === loadError ? entries.reload : undefined}
            />
          }
        />
      )}

      <div class="timesheet-layout">
        <div class="week card">
          <div class="week__summary">
            <div>
              <span class="week__summary-label">Week total</span>
              {list.length > 0 && (
                <p class="week__statuses">
                  {(["approved", "submitted", "rejected"] as const)
                    .map((status) => [status, list.filter((e) => e.status === status)] as const)
                    .filter(([, items]) => items.length > 0)
                    .map(([status, items]) => `${formatHours(weekTotals(start, items).total)} ${status}`)
                    .join(" · ")}
                </p>
              )}
            </div>
            <span class="week__summary-value" data-testid="week-total">
              {known ? formatHours(totals.total) : <Unknown />}
            </span>
          </div>
          {entries.loading && !entries.data ? (
            <Loading label="Loading your week…" />
          ) : (
            <>
              {!entries.loading && !entries.error && list.length === 0 && (
                <EmptyState title="Nothing recorded this week yet.">
                  {canCreate
                    ? "Add your first entry with the form — it is submitted for approval straight away."
                    : null}
                </EmptyState>
              )}
              <ol class="days" aria-label="Days of the week">
                {days.map((day, index) => {
                  const dayEntries = list.filter((e) => e.date === day);
                  const isToday = day === todayDate;
                  return (
                    <li
                      class={`day${isToday ? " day--today" : ""}${dayEntries.length ? "" : " day--empty"}`}
                      key={day}
                      data-date={day}
                    >
                      <div class="day__header">
                        <h2 class="day__name">
                          {formatDay(day)}
                          {isToday && <span class="day__today">Today</span>}
                        </h2>
                        <span class="day__total" aria-label={`Total for ${formatLongDate(day)}`}>
                          {known ? formatHours(totals.perDay[index] ?? 0) : <Unknown />}
                        </span>
                      </div>
                      {dayEntries.length > 0 && (
                        <ul class="entries">
                          {dayEntries.map((entry) => (
                            <EntryRow
                              key={entry.id}
                              entry={entry}
                              canDelete={canDelete}
                              onDelete={() => setToDelete(entry)}
                            />
                          ))}
                        </ul>
                      )}
                    </li>
                  );
                })}
              </ol>
            </>
          )}
        </div>
        {canCreate && (
          <EntryForm
            api={api}
            user={user}
            defaultDate={isThisWeek ? todayDate : start}
            projects={projects}
            onAdded={(entry) => {
              if (entry.date < start || entry.date > end) show(weekStart(entry.date));
              else entries.reload();
            }}
            onMaybeAdded={entries.reload}
            onSignInAgain={onSignInAgain}
          />
        )}
      </div>

      {toDelete && (
        <ConfirmDialog
          title="Delete this entry?"
          confirmLabel="Delete entry"
          busy={deleting}
          onConfirm={() => void confirmDelete()}
          onCancel={() => setToDelete(null)}
        >
          <p>
            <strong dir="auto">{toDelete.project}</strong>, {formatHours(toDelete.hours)} on{" "}
            {formatLongDate(toDelete.date)}.
          </p>
          <p>This can't be undone.</p>
        </ConfirmDialog>
      )}
    </section>
  );
}

/** A total that is not known (the week did not load): a dash, read out as such. */
function Unknown() {
  return (
    <>
      <span aria-hidden="true">—</span>
      <span class="sr-only">not known</span>
    </>
  );
}

function EntryRow({ entry, canDelete, onDelete }: { entry: Entry; canDelete: boolean; onDelete: () => void }) {
  const decision = entry.decision;
  return (
    <li class={`entry entry--${entry.status}`} data-entry-id={entry.id} data-project={entry.project}>
      <div class="entry__main">
        <div class="entry__line">
          <span class="entry__project" dir="auto">
            {entry.project}
          </span>
          <span class="entry__hours">{formatHours(entry.hours)}</span>
        </div>
        {entry.notes && (
          <p class="entry__notes" dir="auto">
            {entry.notes}
          </p>
        )}
        <div class="entry__meta">
          <StatusBadge status={entry.status} />
          {decision && entry.status !== "submitted" && (
            <span class="entry__decision">
              by <bdi>{personName(decision.by)}</bdi>
              {decision.comment ? (
                <>
                  :{" "}
                  <q class="entry__comment" dir="auto">
                    {decision.comment}
                  </q>
                </>
              ) : null}
            </span>
          )}
        </div>
      </div>
      {canDelete &&
        (entry.status === "approved" ? (
          <span class="entry__locked" title="Approved entries can't be deleted">
            <svg viewBox="0 0 24 24" width="16" height="16" aria-hidden="true">
              <path
                fill="currentColor"
                d="M12 2a5 5 0 0 0-5 5v3H6a2 2 0 0 0-2 2v8a2 2 0 0 0 2 2h12a2 2 0 0 0 2-2v-8a2 2 0 0 0-2-2h-1V7a5 5 0 0 0-5-5Zm-3 8V7a3 3 0 1 1 6 0v3H9Z"
              />
            </svg>
            <span class="sr-only">Approved entries can't be deleted</span>
          </span>
        ) : (
          <button type="button" class="button button--icon" onClick={onDelete} aria-label={deleteLabel(entry)}>
            <svg viewBox="0 0 24 24" width="18" height="18" aria-hidden="true">
              <path
                fill="currentColor"
                d="M9 3h6l1 2h4v2H4V5h4l1-2Zm-3 6h12l-1 12H7L6 9Zm4 2v8h2v-8h-2Zm4 0v8h2v-8h-2Z"
              />
            </svg>
          </button>
        ))}
    </li>
  );
}

interface FormState {
  date: string;
  project: string;
  hours: string;
  notes: string;
}

/**
 * What the form says when the create still failed transiently after its retries: whether the entry may
 * have been stored (the answer was lost) or surely was not (the service could not be reached), and that
 * what was typed is kept and can be sent again without being added twice.
 */
/** A 401 or 403 to a create: the gateway refused the token, so the service never saw its key. */
function deniedAtTheGateway(error: unknown): boolean {
  return error instanceof ApiError && (error.status === 401 || error.status === 403);
}

function describeUnsaved(error: unknown): UserMessage {
  const reference =
    error instanceof ApiError && error.problem.request_id ? ` (Reference: ${error.problem.request_id})` : "";
  if (outcomeUnknown(error)) {
    return {
      kind: "unavailable",
      title: "The entry may not have been saved",
      text: `The service did not answer, so we can't tell yet whether the entry was saved. It is still in the form: press Add entry again in a moment — it will not be added twice.${reference}`,
    };
  }
  return {
    kind: "unavailable",
    title: "The entry was not saved",
    text: `The service is unavailable, so the entry was not saved. It is still in the form: press Add entry again in a moment.${reference}`,
  };
}

/** Client-side checks catch the obvious; the server's 422 answers land next to the same fields. */
export function checkEntry(form: FormState): Record<string, string> {
  const errors: Record<string, string> = {};
  if (!isIsoDate(form.date)) errors.date = "Choose a date.";
  const project = form.project.trim();
  const projectTooLong = tooLong(project, PROJECT_MAX);
  const projectBidi = bidiInName(project);
  if (!project) errors.project = "Enter the project you worked on.";
  else if (projectTooLong) errors.project = projectTooLong;
  else if (projectBidi) errors.project = projectBidi;
  const notesProblem = tooLong(form.notes.trim(), NOTES_MAX) ?? bidiInText(form.notes.trim());
  if (notesProblem) errors.notes = notesProblem;
  if (form.hours.trim() === "" || !Number.isFinite(Number(form.hours)))
    errors.hours = "Enter the hours as a number, e.g. 7.5.";
  return errors;
}

function EntryForm({
  api,
  user,
  defaultDate,
  projects,
  onAdded,
  onMaybeAdded,
  onSignInAgain,
}: {
  api: ApiClient;
  user: string;
  defaultDate: string;
  projects: string[];
  onAdded: (entry: Entry) => void;
  /** The create failed in a way that may have stored it all the same: the list should be read again. */
  onMaybeAdded: () => void;
  onSignInAgain: () => void;
}) {
  const empty = (): FormState => ({ date: defaultDate, project: "", hours: "", notes: "" });
  // What this user typed before being sent to sign in again comes back (see lib/draft.ts).
  const [restored] = useState(() => loadDraft(sessionStorage, user));
  const [form, setForm] = useState<FormState>(() => restored ?? empty());
  // Said in the form itself (a toast raised while the page is still being drawn would be missed).
  const [restoredNote, setRestoredNote] = useState(restored !== null);
  // The Idempotency-Key of the entry submitted last, while its outcome is not known (a transient
  // failure): submitting the same entry again sends the same key, so the service stores it at most
  // once; a changed entry is another request and gets a new key. Kept in the draft too, so that it
  // outlives the page when the user is sent to sign in again.
  const pending = useRef<PendingCreate | null>(restored?.pending ?? null);
  const keepDraft = (state: FormState): void =>
    saveDraft(sessionStorage, user, { ...state, pending: pending.current ?? undefined });
  useEffect(() => keepDraft(form), [user, form]);
  const [errors, setErrors] = useState<Record<string, string>>({});
  const [message, setMessage] = useState<UserMessage | null>(null);
  const [saving, setSaving] = useState(false);
  const formRef = useRef<HTMLFormElement>(null);
  // Moving to another week moves the date with it, unless the user has started typing.
  useEffect(() => {
    setForm((current) =>
      current.project || current.hours || current.notes ? current : { ...current, date: defaultDate },
    );
  }, [defaultDate]);

  const set = (key: keyof FormState) => (event: Event) =>
    setForm({ ...form, [key]: (event.currentTarget as HTMLInputElement).value });

  const focusFirstError = (fieldErrors: Record<string, string>): void => {
    const first = ["date", "project", "hours", "notes"].find((key) => fieldErrors[key]);
    if (first) formRef.current?.querySelector<HTMLElement>(`#entry-${first}`)?.focus();
  };

  const submit = async (event: Event): Promise<void> => {
    event.preventDefault();
    const local = checkEntry(form);
    setErrors(local);
    setMessage(null);
    if (Object.keys(local).length) return focusFirstError(local);
    setSaving(true);
    const entry = {
      date: form.date,
      project: form.project.trim(),
      hours: Number(form.hours),
      notes: form.notes.trim(),
    };
    const body = JSON.stringify(entry);
    if (pending.current?.body !== body) pending.current = { key: newIdempotencyKey(), body };
    try {
      const created = await api.createEntry(entry, pending.current.key);
      pending.current = null;
      toast(
        addedToast(
          created.project ?? form.project,
          formatHours(created.hours ?? form.hours),
          created.date ?? form.date,
        ),
      );
      setForm({ ...empty(), date: form.date });
      setRestoredNote(false);
      setErrors({});
      onAdded(created);
    } catch (error) {
      const fieldErrors = error instanceof ApiError ? error.fieldErrors : {};
      const known = Object.fromEntries(Object.entries(fieldErrors).filter(([key]) => key in form));
      setErrors(known);
      // A refusal of this attempt says nothing about an earlier one whose answer was lost when the
      // gateway refused the token (401, 403) before the service saw the key: the key is kept then.
      if (!isTransient(error) && !deniedAtTheGateway(error)) pending.current = null;
      keepDraft(form);
      const described = isTransient(error) ? describeUnsaved(error) : describeError(error, "add the entry");
      if (outcomeUnknown(error)) onMaybeAdded();
      const unplaced = Object.entries(fieldErrors).filter(([key]) => !(key in form));
      setMessage(
        unplaced.length
          ? { ...described, text: unplaced.map(([key, text]) => `${key}: ${text}`).join(" ") }
          : described,
      );
      focusFirstError(known);
    } finally {
      setSaving(false);
    }
  };

  return (
    <form
      class="card entry-form"
      onSubmit={(e) => void submit(e)}
      noValidate
      ref={formRef}
      aria-labelledby="entry-form-title"
    >
      <h2 id="entry-form-title" class="card__title">
        Add an entry
      </h2>
      {message && (
        <Banner
          message={message}
          onDismiss={() => setMessage(null)}
          action={<MessageAction message={message} onSignInAgain={onSignInAgain} />}
        />
      )}
      {restoredNote && (
        <p class="entry-form__restored" data-testid="draft-restored">
          What you typed before signing in again is back in the form: it was not saved yet.
        </p>
      )}
      <Field id="entry-date" label="Date" error={errors.date}>
        <input
          type="date"
          name="date"
          value={form.date}
          onInput={set("date")}
          required
          {...describedBy("entry-date", errors.date)}
        />
      </Field>
      <Field id="entry-project" label="Project" error={errors.project}>
        <input
          type="text"
          name="project"
          value={form.project}
          onInput={set("project")}
          list="known-projects"
          autocomplete="off"
          maxLength={backstop(PROJECT_MAX)}
          required
          {...describedBy("entry-project", errors.project)}
        />
        <datalist id="known-projects">
          {projects.map((p) => (
            <option value={p} key={p} />
          ))}
        </datalist>
      </Field>
      <Field id="entry-hours" label="Hours" hint="Between 0.25 and 24, in quarter hours." error={errors.hours}>
        <input
          type="text"
          inputMode="decimal"
          name="hours"
          value={form.hours}
          onInput={set("hours")}
          required
          {...describedBy("entry-hours", errors.hours, "hint")}
        />
      </Field>
      <Field id="entry-notes" label="Notes (optional)" error={errors.notes}>
        <textarea
          name="notes"
          rows={3}
          value={form.notes}
          onInput={set("notes")}
          maxLength={backstop(NOTES_MAX)}
          {...describedBy("entry-notes", errors.notes)}
        />
      </Field>
      <button type="submit" class="button button--primary button--block" disabled={saving}>
        {saving ? "Adding…" : "Add entry"}
      </button>
    </form>
  );
}

/**
 * The toast of a deletion: "Deleted Apollo on Mon 23 Nov", the project in `<bdi>` (a project stored
 * with an override before the services refused them reverses only itself; the text stays the same).
 */
export function deletedToast(entry: Pick<Entry, "project" | "date">): ComponentChildren {
  return (
    <>
      Deleted <bdi>{entry.project}</bdi> on {formatDay(entry.date)}
    </>
  );
}

/** The toast of an entry added: "Added Apollo, 7.5 h on Mon 23 Nov" (`hours` formatted), as above. */
export function addedToast(project: string, hours: string, date: string): ComponentChildren {
  return (
    <>
      Added <bdi>{project}</bdi>, {hours} on {formatDay(date)}
    </>
  );
}

/** The accessible name of an entry's delete button: an attribute holds no markup, so the project is
 * isolated with U+2068 … U+2069 (a screen reader reads them as nothing; the name still starts "Delete"). */
export function deleteLabel(entry: Pick<Entry, "project" | "hours" | "date">): string {
  return `Delete ${isolated(entry.project)}, ${formatHours(entry.hours)} on ${formatLongDate(entry.date)}`;
}
