/** "Audit": the tamper-evident trail with filters, and the result of verifying its hash chain. */
import { useState } from "preact/hooks";
import type { ApiClient } from "../api/client";
import { describeError, type UserMessage } from "../api/errors";
import type { AuditEvent, ChainVerification, Page } from "../api/types";
import {
  ACTION_CHOICES,
  NO_FILTERS,
  OUTCOME_CHOICES,
  describeCheckpoints,
  describeEvent,
  describeRange,
  eventsChecked,
  filtersToQuery,
  type AuditFilters,
} from "../lib/audit";
import { describeInstant } from "../lib/instant";
import { Banner, EmptyState, Field, Loading, MessageAction } from "./common";
import { useLoad } from "./hooks";

/** An instant as text: the full local date and time with the year and the UTC offset. */
function formatTime(value: string | null): string {
  return describeInstant(value).text;
}

/** An instant in a table cell: that text in a `<time>` whose tooltip is the exact instant. */
function Instant({ value }: { value: string | null }) {
  const view = describeInstant(value);
  if (!view.datetime) return <>{view.text}</>;
  return (
    <time dateTime={view.datetime} title={view.exact ?? undefined}>
      {view.text}
    </time>
  );
}

/** The pages "Load more" added after the first page `after`, and the cursor that follows them. */
interface MorePages {
  after: Page<AuditEvent>;
  items: AuditEvent[];
  cursor: string | null;
}

export function AuditScreen({ api, onSignInAgain }: { api: ApiClient; onSignInAgain: () => void }) {
  const [draft, setDraft] = useState<AuditFilters>(NO_FILTERS);
  const [filters, setFilters] = useState<AuditFilters>(draft);
  const [loadingMore, setLoadingMore] = useState(false);
  // Why "Load more" failed, for the first page it was to follow (said of no other: see `more`).
  const [moreFailed, setMoreFailed] = useState<{ after: Page<AuditEvent>; message: UserMessage } | null>(null);
  const events = useLoad(() => api.auditEvents(filtersToQuery(filters)), [filters]);
  // Pages loaded with "Load more", and the cursor after them, belong to the first page they follow:
  // like the first page itself (lib/load.ts), they are dropped with it. A cursor is a position in the
  // trail, whatever the filters: another filter's (or a stale load's) would skip or repeat records.
  const [more, setMore] = useState<MorePages | null>(null);
  const first = events.data;
  const following = first && more?.after === first ? more : null;
  const cursor = first ? (following ? following.cursor : (first.next_cursor ?? null)) : null;
  const chain = useLoad<ChainVerification>(() => api.verifyChain(), []);
  // Filters start folded away at phone width, where the trail itself matters most.
  const [wide] = useState(() => window.matchMedia("(min-width: 641px)").matches);
  const active = Object.values(filters).filter(Boolean).length;
  const rows = first ? [...(first.items ?? []), ...(following?.items ?? [])] : [];
  const people = new Map<string, string>();
  for (const row of rows) {
    const view = describeEvent(row);
    if (view.actorSubject && view.actorSubject !== "anonymous") people.set(view.actorSubject, view.actor);
  }
  const message = first && moreFailed?.after === first ? moreFailed.message : null;
  const failure = message ?? (events.error ? describeError(events.error, "load the audit trail") : null);

  const loadMore = async (): Promise<void> => {
    if (!first || !cursor) return;
    setLoadingMore(true);
    try {
      const page = await api.auditEvents(filtersToQuery(filters), cursor);
      setMore({
        after: first,
        items: [...(following?.items ?? []), ...(page.items ?? [])],
        cursor: page.next_cursor ?? null,
      });
      setMoreFailed(null);
    } catch (error) {
      setMoreFailed({ after: first, message: describeError(error, "load more events") });
    } finally {
      setLoadingMore(false);
    }
  };

  const set = (key: keyof AuditFilters) => (event: Event) =>
    setDraft({ ...draft, [key]: (event.currentTarget as HTMLInputElement).value });

  return (
    <section class="screen" aria-labelledby="screen-title">
      <header class="screen__header">
        <div>
          <h1 id="screen-title" class="screen__title">
            Audit trail
          </h1>
          <p class="screen__subtitle">Every change and every refused request, in order, hash-chained.</p>
        </div>
      </header>

      <ChainStatus chain={chain.data} error={chain.error} loading={chain.loading} onVerify={chain.reload} />

      {failure && (
        <Banner
          message={failure}
          onDismiss={message ? () => setMoreFailed(null) : undefined}
          action={
            <MessageAction
              message={failure}
              onSignInAgain={onSignInAgain}
              onRetry={
                message
                  ? () => {
                      setMoreFailed(null);
                      void loadMore();
                    }
                  : events.reload
              }
            />
          }
        />
      )}

      <details class="card filters-panel" open={wide}>
        <summary class="filters-panel__summary">Filters{active ? ` · ${active} active` : ""}</summary>
        <form
          class="filters"
          aria-label="Filter events"
          onSubmit={(event) => {
            event.preventDefault();
            setFilters({ ...draft });
          }}
        >
          <Field id="filter-action" label="Action">
            <select id="filter-action" value={draft.action} onChange={set("action")}>
              <option value="">All actions</option>
              {ACTION_CHOICES.map(([value, label]) => (
                <option value={value} key={value}>
                  {label}
                </option>
              ))}
            </select>
          </Field>
          <Field id="filter-actor" label="Who">
            <input
              id="filter-actor"
              type="text"
              value={draft.actor}
              onInput={set("actor")}
              list="known-actors"
              autocomplete="off"
              placeholder="user id, e.g. local|bob"
            />
            <datalist id="known-actors">
              {[...people].map(([subject, name]) => (
                <option value={subject} key={subject}>
                  {name}
                </option>
              ))}
            </datalist>
          </Field>
          <Field id="filter-outcome" label="Outcome">
            <select id="filter-outcome" value={draft.outcome} onChange={set("outcome")}>
              <option value="">Any outcome</option>
              {OUTCOME_CHOICES.map(([value, label]) => (
                <option value={value} key={value}>
                  {label}
                </option>
              ))}
            </select>
          </Field>
          <Field id="filter-from" label="From">
            <input id="filter-from" type="date" value={draft.from} onInput={set("from")} />
          </Field>
          <Field id="filter-to" label="To">
            <input id="filter-to" type="date" value={draft.to} onInput={set("to")} />
          </Field>
          <div class="filters__actions">
            <button type="submit" class="button button--primary">
              Apply filters
            </button>
            <button
              type="button"
              class="button button--ghost"
              onClick={() => {
                setDraft(NO_FILTERS);
                setFilters(NO_FILTERS);
              }}
            >
              Clear
            </button>
          </div>
        </form>
      </details>

      <div class="card table-card">
        {events.loading && !events.data ? (
          <Loading label="Loading the audit trail…" />
        ) : rows.length === 0 && !events.error ? (
          <EmptyState title="No events match these filters." />
        ) : (
          <table class="audit-table">
            <caption class="sr-only">Audit events, newest first</caption>
            <thead>
              <tr>
                <th scope="col">#</th>
                <th scope="col">When</th>
                <th scope="col">Who</th>
                <th scope="col">What</th>
                <th scope="col">Details</th>
              </tr>
            </thead>
            <tbody>
              {rows.map((event, index) => {
                const view = describeEvent(event);
                return (
                  <tr key={view.key || index} data-action={view.action} data-outcome={view.outcome}>
                    <td class="audit-table__seq" data-label="#">
                      {view.seq ?? index + 1}
                    </td>
                    <td data-label="When" class="audit-table__when">
                      <Instant value={view.time} />
                    </td>
                    <td data-label="Who">
                      <bdi>{view.actor}</bdi>
                    </td>
                    <td data-label="What">
                      <span class={`action action--${view.tone}`}>{view.label}</span>
                    </td>
                    <td data-label="Details" class="audit-table__details">
                      <bdi>{view.details}</bdi>
                      {view.reason && (
                        <>
                          {view.details ? " · " : ""}
                          <span
                            class="audit-reason"
                            data-reason={view.reason.code}
                            title={`Reason code: ${view.reason.code}`}
                          >
                            {view.reason.label}
                            {view.reason.known && <code class="audit-reason__code">{view.reason.code}</code>}
                          </span>
                        </>
                      )}
                    </td>
                  </tr>
                );
              })}
            </tbody>
          </table>
        )}
        {cursor && (
          <div class="table-card__more">
            <button type="button" class="button button--ghost" onClick={() => void loadMore()} disabled={loadingMore}>
              {loadingMore ? "Loading…" : "Load more"}
            </button>
          </div>
        )}
      </div>
    </section>
  );
}

function ChainStatus({
  chain,
  error,
  loading,
  onVerify,
}: {
  chain: ChainVerification | null;
  error: unknown;
  loading: boolean;
  onVerify: () => void;
}) {
  let body;
  let tone = "pending";
  // a range: the trail was too long to verify whole on request, so it was verified from the newest checkpoint
  const range = chain ? describeRange(chain.range, formatTime) : null;
  if (loading) body = <span>Verifying the hash chain…</span>;
  else if (error) {
    tone = "unknown";
    body = <span>{describeError(error, "verify the chain").text}</span>;
  } else if (chain?.ok && range) {
    tone = "ok";
    body = (
      <span data-testid="chain-range">
        <strong>Chain verified from the newest checkpoint.</strong> {range} {eventsChecked(chain.checked)}; none
        altered, none missing. The whole trail is too long to verify here: the audit service verifies it in the
        background.
      </span>
    );
  } else if (chain?.ok) {
    tone = "ok";
    body = (
      <span>
        <strong>Chain verified.</strong> {eventsChecked(chain.checked)}; none altered, none missing.
      </span>
    );
  } else {
    tone = "broken";
    const where = chain?.first_bad;
    body = (
      <span>
        <strong>Chain broken.</strong>{" "}
        {where !== undefined ? `The trail was altered at event ${String(where)}.` : "The trail was altered."}{" "}
        {typeof chain?.reason === "string" ? chain.reason : ""}
        {range && <> (Verified: {range})</>}
      </span>
    );
  }
  return (
    <div class={`chain chain--${tone}`} role="status" data-testid="chain-status" data-ok={chain?.ok ? "true" : "false"}>
      <span class="chain__icon" aria-hidden="true">
        {tone === "ok" ? "✓" : tone === "broken" ? "✗" : "…"}
      </span>
      <div class="chain__text">
        {body}
        {chain && !loading && !error && <Checkpoints status={chain.checkpoints} />}
      </div>
      <button type="button" class="button button--ghost button--small" onClick={onVerify} disabled={loading}>
        Verify again
      </button>
    </div>
  );
}

/** The signed checkpoints the chain was held to: the newest, its signature, whether the events match. */
function Checkpoints({ status }: { status: ChainVerification["checkpoints"] }) {
  const view = describeCheckpoints(status, formatTime);
  return (
    <p
      class={`chain__checkpoints chain__checkpoints--${view.tone}`}
      data-testid="checkpoint-status"
      data-tone={view.tone}
      data-signatures={status ? String(status.signatures_valid) : undefined}
      data-matches={status ? String(status.chain_matches) : undefined}
    >
      {view.headline}
      {view.signature && <span> · {view.signature}</span>}
      {view.chain && <span> · {view.chain}</span>}
      {view.problem && <span class="chain__problem"> — {view.problem}</span>}
    </p>
  );
}
