/** "Approvals": other people's submitted entries, approved or rejected with a comment. */
import type { ComponentChildren } from "preact";
import { useEffect, useState } from "preact/hooks";
import type { ApiClient } from "../api/client";
import { ApiError, describeError, describeUndecided, isRecorded, isTransient, type UserMessage } from "../api/errors";
import { personName, type Entry } from "../api/types";
import { clearComment, loadComments, loadRecorded, markRecorded, saveComment } from "../lib/draft";
import { backstop, bidiInText, COMMENT_MAX, isolated, tooLong } from "../lib/limits";
import { formatHours, formatLongDate } from "../lib/week";
import { Banner, EmptyState, Field, Loading, MessageAction, describedBy, toast } from "./common";
import { useLoad } from "./hooks";

interface Props {
  api: ApiClient;
  /** The signed-in approver's `sub`: whose comments are kept (lib/draft.ts); a 409 carrying a decision by
   * them with the same verdict and comment is their own decision, already made. */
  user: string;
  onSignInAgain: () => void;
}

export function ApprovalsScreen({ api, user, onSignInAgain }: Props) {
  const queue = useLoad(() => api.listApprovals(), []);
  // Comments this approver typed and had no decision recorded with yet (a reload, signing in again).
  const [restored] = useState(() => loadComments(sessionStorage, user));
  // Decisions recorded but not applied yet when the page was left (its entry still waits in the queue).
  const [recorded] = useState(() => loadRecorded(sessionStorage, user));
  const [decided, setDecided] = useState<Set<string>>(new Set());
  // Why an entry left the queue without the decision being made (deleted or decided meanwhile): shown
  // above the queue until dismissed, since the card that was decided is gone.
  const [notice, setNotice] = useState<UserMessage | null>(null);
  // Oldest work first, then by person, so a manager can go through a week person by person.
  const pending = (queue.data ?? [])
    .filter((entry) => !decided.has(entry.id))
    .sort((a, b) => a.date.localeCompare(b.date) || personName(a.owner).localeCompare(personName(b.owner)));
  const loadError = queue.error ? describeError(queue.error, "load the approval queue") : null;
  const hours = pending.reduce((sum, e) => sum + Math.round(Number(e.hours) * 100), 0) / 100;

  return (
    <section class="screen" aria-labelledby="screen-title">
      <header class="screen__header">
        <div>
          <h1 id="screen-title" class="screen__title">
            Approvals
          </h1>
          <p class="screen__subtitle">
            {queue.data && !queue.error
              ? `${pending.length} waiting · ${formatHours(hours)}`
              : "Entries from your team that wait for your decision"}
          </p>
        </div>
        <button type="button" class="button button--ghost" onClick={() => queue.reload()} disabled={queue.loading}>
          Refresh
        </button>
      </header>
      {notice && <Banner message={notice} onDismiss={() => setNotice(null)} />}
      {loadError && (
        <Banner
          message={loadError}
          action={<MessageAction message={loadError} onSignInAgain={onSignInAgain} onRetry={queue.reload} />}
        />
      )}
      {queue.loading && !queue.data ? (
        <Loading label="Loading the approval queue…" />
      ) : queue.data && !queue.error && pending.length === 0 ? (
        <div class="card">
          <EmptyState title="You're all caught up.">
            Nothing is waiting for your decision. Your own entries are approved by someone else.
          </EmptyState>
        </div>
      ) : (
        <ul class="approvals">
          {pending.map((entry) => (
            <ApprovalCard
              key={entry.id}
              api={api}
              user={user}
              entry={entry}
              restored={restored[entry.id] ?? ""}
              recorded={recorded[entry.id]}
              onSignInAgain={onSignInAgain}
              onDone={(why) => {
                setDecided((current) => new Set([...current, entry.id]));
                if (why) {
                  setNotice(why);
                  queue.reload();
                }
              }}
            />
          ))}
        </ul>
      )}
    </section>
  );
}

function ApprovalCard({
  api,
  user,
  entry,
  restored,
  recorded,
  onDone,
  onSignInAgain,
}: {
  api: ApiClient;
  user: string;
  entry: Entry;
  /** The comment kept from before (empty: none). */
  restored: string;
  /** This approver's decision on it, recorded and not applied yet when the page was left, if any. */
  recorded?: "approved" | "rejected";
  /** Decided; or gone from the queue meanwhile (deleted, or decided by someone else): why. */
  onDone: (gone: UserMessage | null) => void;
  onSignInAgain: () => void;
}) {
  const [comment, setComment] = useState(restored);
  // Kept as it is typed: a reload, a renewal's redirect or a failed decision loses nothing.
  useEffect(() => saveComment(sessionStorage, user, entry.id, comment), [user, entry.id, comment]);
  const [error, setError] = useState<string | undefined>();
  const [message, setMessage] = useState<UserMessage | null>(null);
  const [busy, setBusy] = useState<"approved" | "rejected" | null>(null);
  const owner = personName(entry.owner);
  const fieldId = `comment-${entry.id}`;

  const decide = async (decision: "approved" | "rejected"): Promise<void> => {
    setMessage(null);
    if (decision === "rejected" && !comment.trim()) {
      setError(commentNeeded(owner));
      document.getElementById(fieldId)?.focus();
      return;
    }
    const commentTooLong = tooLong(comment.trim(), COMMENT_MAX) ?? bidiInText(comment.trim());
    if (commentTooLong) {
      setError(commentTooLong);
      document.getElementById(fieldId)?.focus();
      return;
    }
    setError(undefined);
    setBusy(decision);
    const verb = decision === "approved" ? "approve" : "reject";
    try {
      // With `by`, a 409 carrying this approver's own identical decision is this one, recorded by an
      // attempt whose answer was lost (pressed again after "may not have been recorded"): done.
      await api.decide(entry.id, decision, comment.trim(), { by: user });
      clearComment(sessionStorage, user, entry.id);
      toast(decidedToast(decision, owner, entry.project));
      onDone(null);
    } catch (failure) {
      const described = isTransient(failure)
        ? describeUndecided(failure, decision)
        : describeError(failure, `${verb} this entry`);
      if (failure instanceof ApiError && (failure.status === 409 || failure.status === 404)) {
        // The entry changed meanwhile: the explanation goes above the queue, which is read again. The
        // comment was for a decision that can no longer be made.
        clearComment(sessionStorage, user, entry.id);
        onDone(describeError(failure, decisionAction(verb, owner, entry.project)));
        return;
      }
      if (failure instanceof ApiError && failure.fieldErrors.comment) setError(failure.fieldErrors.comment);
      if (isRecorded(failure)) markRecorded(sessionStorage, user, entry.id, decision);
      setMessage(described);
    } finally {
      setBusy(null);
    }
  };

  return (
    <li
      class="card approval"
      data-entry-id={entry.id}
      data-project={entry.project}
      aria-labelledby={`approval-${entry.id}`}
    >
      <div class="approval__head">
        <span class="avatar" aria-hidden="true">
          {owner.slice(0, 1).toUpperCase()}
        </span>
        <div>
          <h2 class="approval__title" id={`approval-${entry.id}`}>
            <bdi>{owner}</bdi> · <bdi>{entry.project}</bdi>
          </h2>
          <p class="approval__meta">
            {formatLongDate(entry.date)} · <strong>{formatHours(entry.hours)}</strong>
          </p>
        </div>
      </div>
      {entry.notes && (
        <p class="approval__notes" dir="auto">
          {entry.notes}
        </p>
      )}
      {message && (
        <Banner
          message={message}
          onDismiss={() => setMessage(null)}
          action={<MessageAction message={message} onSignInAgain={onSignInAgain} />}
        />
      )}
      {recorded ? (
        <p class="approval__restored" data-testid="comment-restored">
          Your {recorded === "approved" ? "approval" : "rejection"}
          {restored ? " with this comment" : ""} is recorded and waits to be applied. Press{" "}
          {recorded === "approved" ? "Approve" : "Reject"} again to see it done.
        </p>
      ) : (
        restored && (
          <p class="approval__restored" data-testid="comment-restored">
            Your comment from before is back: no decision was made with it yet.
          </p>
        )
      )}
      <Field id={fieldId} label="Comment" hint="Optional when approving; required when rejecting." error={error}>
        <textarea
          rows={2}
          value={comment}
          maxLength={backstop(COMMENT_MAX)}
          onInput={(e) => setComment(e.currentTarget.value)}
          {...describedBy(fieldId, error, "hint")}
        />
      </Field>
      <div class="approval__actions">
        <button
          type="button"
          class="button button--success"
          disabled={busy !== null}
          onClick={() => void decide("approved")}
        >
          {busy === "approved" ? "Approving…" : "Approve"}
        </button>
        <button
          type="button"
          class="button button--danger-outline"
          disabled={busy !== null}
          onClick={() => void decide("rejected")}
        >
          {busy === "rejected" ? "Rejecting…" : "Reject"}
        </button>
      </div>
    </li>
  );
}

/** The rejection's missing comment, in the comment field's error (a string: the owner isolated). */
export function commentNeeded(owner: string): string {
  return `Say why you're rejecting it, so ${isolated(owner)} can fix it.`;
}

/**
 * The toast of a decision: "Approved Alice Employee's Apollo entry", the owner's name and the project
 * in `<bdi>`: an override in either (stored before the services refused them) reverses only itself,
 * and the toast's text stays what it says (no invisible isolate characters in it).
 */
export function decidedToast(decision: "approved" | "rejected", owner: string, project: string): ComponentChildren {
  return (
    <>
      {decision === "approved" ? "Approved" : "Rejected"} <bdi>{owner}</bdi>'s <bdi>{project}</bdi> entry
    </>
  );
}

/** What a failed decision was, in its message: "reject Alice Employee's Apollo entry", the owner
 * and the project isolated (the banner draws them in `<bdi>`, its text unchanged). */
export function decisionAction(verb: "approve" | "reject", owner: string, project: string): string {
  return `${verb} ${isolated(owner)}'s ${isolated(project)} entry`;
}
