/** Building blocks shared by every screen: messages, badges, loading and empty states, dialogs, toasts. */
import type { ComponentChildren } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";
import type { UserMessage } from "../api/errors";
import type { EntryStatus } from "../api/types";

/**
 * A message's text with its isolated parts (people's names and projects, put between U+2068 and U+2069
 * by `isolated` from lib/limits) drawn as `<bdi>` instead: the same isolation, and the text a reader
 * copies, a screen reader reads or a test matches holds no invisible isolate characters.
 */
export function withIsolates(text: string): ComponentChildren {
  const parts = text.split(/\u2068([^\u2068\u2069]*)\u2069/);
  if (parts.length === 1) return text;
  return parts.map((part, index) => (index % 2 === 1 ? <bdi>{part}</bdi> : part));
}

export function Banner({
  message,
  onDismiss,
  action,
}: {
  message: UserMessage;
  onDismiss?: () => void;
  action?: ComponentChildren;
}) {
  const tone = message.kind === "invalid" || message.kind === "busy" || message.kind === "signin" ? "warn" : "error";
  return (
    <div class={`banner banner--${tone}`} role="alert" data-kind={message.kind}>
      <div class="banner__body">
        <strong class="banner__title">{message.title}</strong>
        <p class="banner__text">{withIsolates(message.text)}</p>
      </div>
      <div class="banner__actions">
        {action}
        {onDismiss && (
          <button
            type="button"
            class="button button--ghost button--small"
            onClick={onDismiss}
            aria-label="Dismiss message"
          >
            Dismiss
          </button>
        )}
      </div>
    </div>
  );
}

/**
 * The action a message offers: sign in again after a 401, or load again after a failure to load (the
 * service was away, answered 502-504 or the connection broke), so a screen recovers without a reload.
 */
export function MessageAction({
  message,
  onSignInAgain,
  onRetry,
}: {
  message: UserMessage;
  onSignInAgain: () => void;
  onRetry?: (() => void) | undefined;
}) {
  if (message.kind === "signin")
    return (
      <button type="button" class="button button--primary button--small" onClick={onSignInAgain}>
        Sign in again
      </button>
    );
  if (!onRetry) return null;
  return (
    <button type="button" class="button button--primary button--small" onClick={onRetry}>
      Try again
    </button>
  );
}

const STATUS_LABEL: Record<EntryStatus, string> = {
  submitted: "Submitted",
  approved: "Approved",
  rejected: "Rejected",
};

export function StatusBadge({ status }: { status: EntryStatus }) {
  return (
    <span class={`badge badge--${status}`} data-status={status}>
      <span class="badge__dot" aria-hidden="true" />
      {STATUS_LABEL[status] ?? status}
    </span>
  );
}

export function Loading({ label }: { label: string }) {
  return (
    <div class="loading" role="status" aria-live="polite">
      <span class="spinner" aria-hidden="true" />
      {label}
    </div>
  );
}

export function EmptyState({ title, children }: { title: string; children?: ComponentChildren }) {
  return (
    <div class="empty">
      <p class="empty__title">{title}</p>
      {children && <p class="empty__text">{children}</p>}
    </div>
  );
}

/** A modal confirmation using the native `<dialog>` (focus is trapped and restored by the browser). */
export function ConfirmDialog({
  title,
  children,
  confirmLabel,
  busy,
  onConfirm,
  onCancel,
}: {
  title: string;
  children: ComponentChildren;
  confirmLabel: string;
  busy: boolean;
  onConfirm: () => void;
  onCancel: () => void;
}) {
  const ref = useRef<HTMLDialogElement>(null);
  useEffect(() => {
    const dialog = ref.current;
    if (dialog && !dialog.open) dialog.showModal();
    return () => dialog?.close();
  }, []);
  return (
    <dialog
      ref={ref}
      class="dialog"
      aria-labelledby="dialog-title"
      onCancel={(event) => {
        event.preventDefault();
        onCancel();
      }}
    >
      <h2 id="dialog-title" class="dialog__title">
        {title}
      </h2>
      <div class="dialog__body">{children}</div>
      <div class="dialog__actions">
        <button type="button" class="button button--ghost" onClick={onCancel} autofocus>
          Cancel
        </button>
        <button type="button" class="button button--danger" onClick={onConfirm} disabled={busy}>
          {busy ? "Deleting…" : confirmLabel}
        </button>
      </div>
    </dialog>
  );
}

let pushToast: ((text: ComponentChildren) => void) | null = null;

/** Announce an outcome visually and to screen readers ("Entry added"). */
export function toast(text: ComponentChildren): void {
  pushToast?.(text);
}

export function Toasts() {
  const [items, setItems] = useState<{ id: number; text: ComponentChildren }[]>([]);
  useEffect(() => {
    let next = 0;
    pushToast = (text) => {
      const id = ++next;
      // One message at a time: the newest replaces the last, so they never pile up over the page.
      setItems([{ id, text }]);
      setTimeout(() => setItems((current) => current.filter((item) => item.id !== id)), 5000);
    };
    return () => {
      pushToast = null;
    };
  }, []);
  return (
    <div class="toasts" role="status" aria-live="polite">
      {items.map((item) => (
        <div class="toast" key={item.id}>
          <span class="toast__icon" aria-hidden="true">
            ✓
          </span>
          {item.text}
        </div>
      ))}
    </div>
  );
}

/** A labelled form field with an inline error tied to the input through aria-describedby. */
export function Field({
  id,
  label,
  hint,
  error,
  children,
}: {
  id: string;
  label: string;
  hint?: string;
  error?: string | undefined;
  children: ComponentChildren;
}) {
  return (
    <div class={`field${error ? " field--invalid" : ""}`}>
      <label class="field__label" for={id}>
        {label}
      </label>
      {hint && (
        <p class="field__hint" id={`${id}-hint`}>
          {hint}
        </p>
      )}
      {children}
      {error && (
        <p class="field__error" id={`${id}-error`}>
          <span aria-hidden="true">⚠ </span>
          {withIsolates(error)}
        </p>
      )}
    </div>
  );
}

/** aria attributes for an input inside `Field`. */
export function describedBy(id: string, error?: string, hint?: string): Record<string, string | boolean> {
  const ids = [hint ? `${id}-hint` : "", error ? `${id}-error` : ""].filter(Boolean).join(" ");
  return { id, "aria-invalid": Boolean(error), ...(ids ? { "aria-describedby": ids } : {}) };
}
