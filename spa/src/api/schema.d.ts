/**
 * The API's types, generated from the gateway's published OpenAPI document (GET /api/openapi.json)
 * by openapi-typescript: do not edit. Regenerate with `npm run gen:api`; a test in `make test`
 * fails when this file is stale. The hand-written helpers are in ./types.ts.
 */

export interface paths {
  "/api/timesheets": {
    parameters: {
      query?: never;
      header?: never;
      path?: never;
      cookie?: never;
    };
    /** The caller's own entries, newest date first */
    get: operations["listEntries"];
    put?: never;
    /** Create an entry owned by the caller (status submitted) */
    post: operations["createEntry"];
    delete?: never;
    options?: never;
    head?: never;
    patch?: never;
    trace?: never;
  };
  "/api/timesheets/upload": {
    parameters: {
      query?: never;
      header?: never;
      path?: never;
      cookie?: never;
    };
    get?: never;
    put?: never;
    /**
     * Batch upload by a machine client: up to 1,000 entries for named users, all or nothing
     * @description Any bad row refuses the whole batch; errors[] names every bad field as entries.N.field. A user's entries on one date add up to at most 24 hours: rows past that are refused the same way (entries.N.hours, day_hours_exceeded).
     */
    post: operations["uploadEntries"];
    delete?: never;
    options?: never;
    head?: never;
    patch?: never;
    trace?: never;
  };
  "/api/timesheets/{id}": {
    parameters: {
      query?: never;
      header?: never;
      path?: never;
      cookie?: never;
    };
    /** The caller's entry, or a submitted entry of someone else when the caller approves */
    get: operations["getEntry"];
    put?: never;
    post?: never;
    /** Delete the caller's own entry unless it is approved */
    delete: operations["deleteEntry"];
    options?: never;
    head?: never;
    patch?: never;
    trace?: never;
  };
  "/api/approvals": {
    parameters: {
      query?: never;
      header?: never;
      path?: never;
      cookie?: never;
    };
    /** Submitted entries of other users awaiting a decision, newest date first */
    get: operations["approvalQueue"];
    put?: never;
    post?: never;
    delete?: never;
    options?: never;
    head?: never;
    patch?: never;
    trace?: never;
  };
  "/api/approvals/{id}": {
    parameters: {
      query?: never;
      header?: never;
      path?: never;
      cookie?: never;
    };
    get?: never;
    /**
     * Approve or reject someone else's submitted entry (recorded once per entry)
     * @description A decision is recorded, applied at the timesheets service idempotently, and reconciled after failures: a 503 with decision set means it is recorded and will be applied; repeating the same request shows the outcome.
     */
    put: operations["decide"];
    post?: never;
    delete?: never;
    options?: never;
    head?: never;
    patch?: never;
    trace?: never;
  };
  "/api/audit/events": {
    parameters: {
      query?: never;
      header?: never;
      path?: never;
      cookie?: never;
    };
    /** Audit records, newest first */
    get: operations["listEvents"];
    put?: never;
    post?: never;
    delete?: never;
    options?: never;
    head?: never;
    patch?: never;
    trace?: never;
  };
  "/api/audit/verify": {
    parameters: {
      query?: never;
      header?: never;
      path?: never;
      cookie?: never;
    };
    /**
     * Recompute the hash chain (or a range of it) and hold it to its signed checkpoints
     * @description Walks every record, recomputing each hash and link, and requires the record at each signed checkpoint's position to still carry the head hash that was signed: a history rewritten and re-hashed with full database access is reported, with first_bad the first record after the last checkpoint that still matches. The checkpoints themselves are checked too: signatures, numbering and the chain of prev digests. A walk on request is bounded: within AUDIT_VERIFY_TIMEOUT_SECONDS (422 chain_too_long past it), at most AUDIT_VERIFY_CONCURRENCY at once (503 beyond); requests without parameters that arrive during a walk without any share its result instead of starting another. A range (from_checkpoint=<n>|latest, or since=<seq>: the newest checkpoint at or before it; optionally until=<seq>) is walked from a signed checkpoint whose signature must verify with a known key and whose record must still carry the head it signed (or from the chain's start when no checkpoint lies that early), then on to the head or until, holding the records to every later checkpoint: the answer's range says what was verified and what anchored it. A checkpoint that does not verify anchors nothing (ok false, checked 0). The same bounds apply; a range is cheap when it is short. audit_chain_ok is set to 0 by a broken range, left alone by an intact one.
     */
    get: operations["verifyChain"];
    put?: never;
    post?: never;
    delete?: never;
    options?: never;
    head?: never;
    patch?: never;
    trace?: never;
  };
  "/api/audit/checkpoints": {
    parameters: {
      query?: never;
      header?: never;
      path?: never;
      cookie?: never;
    };
    /**
     * Signed checkpoints of the chain, newest first
     * @description Each checkpoint signs the chain's head (seq and hash) at a moment, with a key kept outside the database, and chains to the one before (prev). Keep copies outside the platform: verifying against them (python -m audit verify --checkpoints FILE) also detects checkpoints deleted or re-signed later.
     */
    get: operations["listCheckpoints"];
    put?: never;
    post?: never;
    delete?: never;
    options?: never;
    head?: never;
    patch?: never;
    trace?: never;
  };
  "/api/audit/checkpoint-keys": {
    parameters: {
      query?: never;
      header?: never;
      path?: never;
      cookie?: never;
    };
    /**
     * The public keys checkpoints are signed with (a JWKS)
     * @description Ed25519 keys as JWKs (RFC 8037). Pin them where checkpoints are verified: keys fetched from the platform being audited are only as trustworthy as the platform.
     */
    get: operations["checkpointKeys"];
    put?: never;
    post?: never;
    delete?: never;
    options?: never;
    head?: never;
    patch?: never;
    trace?: never;
  };
}
export type webhooks = Record<string, never>;
export interface components {
  schemas: {
    /**
     * Actor
     * @description Who acted (a snapshot of the caller's :class:`~svckit.identity.Identity`). ``anonymous`` (with
     *     an empty issuer) is a caller whose token did not verify: the gateway records such denials too.
     */
    Actor: {
      issuer: string;
      subject: string;
      /** @enum {string} */
      kind: "user" | "client" | "service" | "anonymous";
      /** @default  */
      client_id: string;
      /** @default  */
      name: string;
    };
    /**
     * AuditRecord
     * @description A stored record: the ingested event plus its place in the chain.
     * @example {
     *       "action": "timesheet.created",
     *       "actor": {
     *         "client_id": "timesheets-spa",
     *         "issuer": "https://login.abc.example/",
     *         "kind": "user",
     *         "name": "Alice Example",
     *         "subject": "local|alice"
     *       },
     *       "details": {
     *         "date": "2026-11-23",
     *         "hours": 7.5,
     *         "project": "Store rollout"
     *       },
     *       "hash": "1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b",
     *       "id": "3c9a7e52-1b0d-4f6e-a8c2-5d4e3f2a1b0c",
     *       "occurred_at": "2026-11-23T17:02:11.204518Z",
     *       "outcome": "success",
     *       "prev_hash": "9f2b5c1d7e3a8f4b6c0d2e1f3a5b7c9d8e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b",
     *       "recorded_at": "2026-11-23T17:02:11.391204Z",
     *       "request_id": "5f0c6d0e8b3f4a0f9d1e2c3b4a5f6e7d",
     *       "resource": {
     *         "id": "0b5c6f9e-3d2a-4c1b-8e7f-6a5b4c3d2e1f",
     *         "type": "timesheet"
     *       },
     *       "seq": 1842,
     *       "source": "timesheets"
     *     }
     */
    AuditRecord: {
      /** @description Chain position: 1, 2, 3, … without gaps. */
      seq: number;
      /** Format: uuid */
      id: string;
      /**
       * Format: date-time
       * @description RFC 3339, UTC, Z.
       */
      occurred_at: string;
      /**
       * Format: date-time
       * @description RFC 3339, UTC, Z.
       */
      recorded_at: string;
      source: string;
      actor: components["schemas"]["Actor"];
      action: string;
      resource: components["schemas"]["Resource"];
      /** @enum {string} */
      outcome: "success" | "denied" | "failure";
      request_id: string | null;
      details: {
        [key: string]: unknown;
      };
      prev_hash: string;
      hash: string;
    };
    /**
     * CheckpointKey
     * @description An Ed25519 public key as a JWK (RFC 8037).
     */
    CheckpointKey: {
      /** @constant */
      kty: "OKP";
      /** @constant */
      crv: "Ed25519";
      x: string;
      kid: string;
      /** @constant */
      use: "sig";
      /** @constant */
      alg: "EdDSA";
    };
    /**
     * CheckpointKeySet
     * @description A JWKS (RFC 7517): the keys checkpoints are signed with, the current signing key first.
     * @example {
     *       "keys": [
     *         {
     *           "alg": "EdDSA",
     *           "crv": "Ed25519",
     *           "kid": "ck-2026-11",
     *           "kty": "OKP",
     *           "use": "sig",
     *           "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
     *         }
     *       ]
     *     }
     */
    CheckpointKeySet: {
      keys: components["schemas"]["CheckpointKey"][];
    };
    /**
     * CheckpointRecord
     * @description A signed checkpoint: ``jws`` is the checkpoint itself (RFC 7515 compact, EdDSA, verifiable with
     *     GET /audit/checkpoint-keys); the other fields repeat what it signs, for reading.
     * @example {
     *       "count": 1842,
     *       "head": "1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b",
     *       "jws": "eyJhbGciOiJFZERTQSIsImtpZCI6ImNrLTIwMjYtMTEiLCJ0eXAiOiJ0c3AtYXVkaXQtY2hlY2twb2ludCtqd3MifQ.eyJjb3VudCI6MTg0MiwiaGVhZCI6IjFhMmIuLi4iLCJuIjoxNywicHJldiI6IjdjOWQuLi4iLCJzZXEiOjE4NDJ9.c2lnbmF0dXJl",
     *       "key_id": "ck-2026-11",
     *       "number": 17,
     *       "prev": "9f2b5c1d7e3a8f4b6c0d2e1f3a5b7c9d8e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b",
     *       "seq": 1842,
     *       "signed_at": "2026-11-23T17:05:00Z"
     *     }
     */
    CheckpointRecord: {
      /** @description 1, 2, 3, … without gaps. */
      number: number;
      /** @description The chain position signed (its head). */
      seq: number;
      /** @description The hash of record seq. */
      head: string;
      /** @description Records in the chain up to seq (equal to seq: no gaps). */
      count: number;
      /**
       * Format: date-time
       * @description RFC 3339, UTC, Z.
       */
      signed_at: string;
      /** @description SHA-256 of the previous checkpoint's jws (zeros for 1). */
      prev: string;
      key_id: string;
      jws: string;
    };
    /**
     * CheckpointStatus
     * @description The chain against its signed checkpoints (present when the service signs checkpoints).
     */
    CheckpointStatus: {
      /** @description Checkpoints examined. */
      checked: number;
      /** @description Checkpoints whose signature verified with a published key. */
      verified: number;
      /**
       * @description The newest checkpoint; absent before the first.
       * @default null
       */
      latest: components["schemas"]["CheckpointSummary"] | null;
      /** @description Every checkpoint is signed by a published key, or chained to one that is. */
      signatures_valid: boolean;
      /** @description The records still hold every signed head, in place. */
      chain_matches: boolean;
      /**
       * @description The first thing wrong with the checkpoints (when any).
       * @default null
       */
      problem: string | null;
    };
    /**
     * CheckpointSummary
     * @description Which signed checkpoint is the newest: what the chain was held to last.
     */
    CheckpointSummary: {
      /** @description Checkpoint number (1, 2, 3, …). */
      number: number;
      /** @description The chain position it signs. */
      seq: number;
      /**
       * Format: date-time
       * @description RFC 3339, UTC, Z.
       */
      signed_at: string;
      /** @description The kid of the key that signed it (GET /audit/checkpoint-keys). */
      key_id: string;
    };
    /**
     * CheckpointsPage
     * @example {
     *       "items": [
     *         {
     *           "count": 1842,
     *           "head": "1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b",
     *           "jws": "eyJhbGciOiJFZERTQSIsImtpZCI6ImNrLTIwMjYtMTEiLCJ0eXAiOiJ0c3AtYXVkaXQtY2hlY2twb2ludCtqd3MifQ.eyJjb3VudCI6MTg0MiwiaGVhZCI6IjFhMmIuLi4iLCJuIjoxNywicHJldiI6IjdjOWQuLi4iLCJzZXEiOjE4NDJ9.c2lnbmF0dXJl",
     *           "key_id": "ck-2026-11",
     *           "number": 17,
     *           "prev": "9f2b5c1d7e3a8f4b6c0d2e1f3a5b7c9d8e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b",
     *           "seq": 1842,
     *           "signed_at": "2026-11-23T17:05:00Z"
     *         }
     *       ],
     *       "next_cursor": "YzE3"
     *     }
     */
    CheckpointsPage: {
      items: components["schemas"]["CheckpointRecord"][];
      /** @description Pass as ?cursor= for the next (older) page; null at the end. */
      next_cursor: string | null;
    };
    /**
     * Decision
     * @description A decision: ``applied`` once the entry carries it, ``pending`` while it is being applied (the
     *     reconciler finishes it), ``void`` if the timesheets service refused it for good.
     * @example {
     *       "at": "2026-11-24T09:12:40.118220Z",
     *       "by": {
     *         "issuer": "https://login.abc.example/",
     *         "name": "Bob Example",
     *         "subject": "local|bob"
     *       },
     *       "comment": null,
     *       "decision": "approved",
     *       "entry": {
     *         "created_at": "2026-11-23T17:02:11.204518Z",
     *         "date": "2026-11-23",
     *         "decision": {
     *           "at": "2026-11-24T09:12:40.118220Z",
     *           "by": {
     *             "issuer": "https://login.abc.example/",
     *             "name": "Bob Example",
     *             "subject": "local|bob"
     *           },
     *           "comment": null,
     *           "decision": "approved"
     *         },
     *         "hours": 7.5,
     *         "id": "0b5c6f9e-3d2a-4c1b-8e7f-6a5b4c3d2e1f",
     *         "notes": "Pairing on the data migration",
     *         "owner": {
     *           "issuer": "https://login.abc.example/",
     *           "name": "Alice Example",
     *           "subject": "local|alice"
     *         },
     *         "project": "Store rollout",
     *         "status": "approved",
     *         "updated_at": "2026-11-24T09:12:40.301554Z"
     *       },
     *       "entry_id": "0b5c6f9e-3d2a-4c1b-8e7f-6a5b4c3d2e1f",
     *       "id": "7d1e5b0a-2c4f-4e8a-9b6d-3f2a1c0e9d8b",
     *       "state": "applied"
     *     }
     */
    Decision: {
      /** Format: uuid */
      id: string;
      /** Format: uuid */
      entry_id: string;
      /** @enum {string} */
      decision: "approved" | "rejected";
      comment: string | null;
      by: components["schemas"]["Person"];
      /**
       * Format: date-time
       * @description RFC 3339, UTC, microseconds, Z.
       */
      at: string;
      /** @enum {string} */
      state: "pending" | "applied" | "void";
      /** @description The decided entry (when the timesheets service returned it). */
      entry: components["schemas"]["Entry"] | null;
    };
    /**
     * DecisionIn
     * @description ``PUT /approvals/{id}``: approve or reject someone else's submitted entry.
     * @example {
     *       "decision": "approved"
     *     }
     * @example {
     *       "comment": "Please split the hours by project.",
     *       "decision": "rejected"
     *     }
     */
    DecisionIn: {
      /** @enum {string} */
      decision: "approved" | "rejected";
      /**
       * @description Why, for the entry's owner. At most 2000 characters; line breaks are fine, other control characters are not. No bidirectional embedding or override (U+202A-U+202E); an isolate (U+2066-U+2068) is closed by U+2069 on its line, not nested. An empty string means none.
       * @default null
       */
      comment: string | null;
    };
    /**
     * Entry
     * @description A timesheet entry as every route returns it.
     * @example {
     *       "created_at": "2026-11-23T17:02:11.204518Z",
     *       "date": "2026-11-23",
     *       "decision": null,
     *       "hours": 7.5,
     *       "id": "0b5c6f9e-3d2a-4c1b-8e7f-6a5b4c3d2e1f",
     *       "notes": "Pairing on the data migration",
     *       "owner": {
     *         "issuer": "https://login.abc.example/",
     *         "name": "Alice Example",
     *         "subject": "local|alice"
     *       },
     *       "project": "Store rollout",
     *       "status": "submitted",
     *       "updated_at": "2026-11-23T17:02:11.204518Z"
     *     }
     */
    Entry: {
      /** Format: uuid */
      id: string;
      owner: components["schemas"]["Person"];
      /** Format: date */
      date: string;
      project: string;
      /** @description Hours worked, in quarter hours: more than 0, at most 24; a person's entries on one date add up to at most 24 (422 day_hours_exceeded). */
      hours: number;
      notes: string | null;
      /** @enum {string} */
      status: "submitted" | "approved" | "rejected";
      /** @description Present once the entry is approved or rejected. */
      decision: components["schemas"]["EntryDecision"] | null;
      /**
       * Format: date-time
       * @description RFC 3339, UTC, microseconds, Z.
       */
      created_at: string;
      /**
       * Format: date-time
       * @description RFC 3339, UTC, microseconds, Z.
       */
      updated_at: string;
    };
    /**
     * EntryDecision
     * @description The decision an entry carries once approved or rejected.
     */
    EntryDecision: {
      /** @enum {string} */
      decision: "approved" | "rejected";
      by: components["schemas"]["Person"];
      /**
       * Format: date-time
       * @description RFC 3339, UTC, microseconds, Z.
       */
      at: string;
      comment: string | null;
    };
    /**
     * EntryIn
     * @description ``POST /timesheets``: a new entry, owned by the caller.
     * @example {
     *       "date": "2026-11-23",
     *       "hours": 7.5,
     *       "notes": "Data migration",
     *       "project": "Store rollout"
     *     }
     */
    EntryIn: {
      /**
       * Format: date
       * @description The day worked, YYYY-MM-DD, 2000-01-01 to 2099-12-31.
       */
      date: string;
      /** @description The project the hours were spent on. Not blank, no control characters, no bidirectional controls (U+202A-U+202E, U+2066-U+2069); surrounding whitespace is removed. Stored in Unicode NFC (a decomposed spelling is the same name). */
      project: string;
      /** @description Hours worked, in quarter hours: more than 0, at most 24; a person's entries on one date add up to at most 24 (422 day_hours_exceeded). */
      hours: number;
      /**
       * @description Free-text notes. At most 2000 characters; line breaks are fine, other control characters are not. No bidirectional embedding or override (U+202A-U+202E); an isolate (U+2066-U+2068) is closed by U+2069 on its line, not nested. An empty string means none.
       * @default null
       */
      notes: string | null;
    };
    /**
     * EntryPage
     * @description One page of entries, newest date first.
     * @example {
     *       "items": [
     *         {
     *           "created_at": "2026-11-23T17:02:11.204518Z",
     *           "date": "2026-11-23",
     *           "decision": null,
     *           "hours": 7.5,
     *           "id": "0b5c6f9e-3d2a-4c1b-8e7f-6a5b4c3d2e1f",
     *           "notes": "Pairing on the data migration",
     *           "owner": {
     *             "issuer": "https://login.abc.example/",
     *             "name": "Alice Example",
     *             "subject": "local|alice"
     *           },
     *           "project": "Store rollout",
     *           "status": "submitted",
     *           "updated_at": "2026-11-23T17:02:11.204518Z"
     *         }
     *       ],
     *       "next_cursor": null
     *     }
     */
    EntryPage: {
      items: components["schemas"]["Entry"][];
      /** @description Pass as ?cursor= for the next page; null on the last page (opaque). */
      next_cursor: string | null;
    };
    /**
     * EventsPage
     * @example {
     *       "items": [
     *         {
     *           "action": "timesheet.created",
     *           "actor": {
     *             "client_id": "timesheets-spa",
     *             "issuer": "https://login.abc.example/",
     *             "kind": "user",
     *             "name": "Alice Example",
     *             "subject": "local|alice"
     *           },
     *           "details": {
     *             "date": "2026-11-23",
     *             "hours": 7.5,
     *             "project": "Store rollout"
     *           },
     *           "hash": "1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b",
     *           "id": "3c9a7e52-1b0d-4f6e-a8c2-5d4e3f2a1b0c",
     *           "occurred_at": "2026-11-23T17:02:11.204518Z",
     *           "outcome": "success",
     *           "prev_hash": "9f2b5c1d7e3a8f4b6c0d2e1f3a5b7c9d8e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b",
     *           "recorded_at": "2026-11-23T17:02:11.391204Z",
     *           "request_id": "5f0c6d0e8b3f4a0f9d1e2c3b4a5f6e7d",
     *           "resource": {
     *             "id": "0b5c6f9e-3d2a-4c1b-8e7f-6a5b4c3d2e1f",
     *             "type": "timesheet"
     *           },
     *           "seq": 1842,
     *           "source": "timesheets"
     *         }
     *       ],
     *       "next_cursor": null
     *     }
     */
    EventsPage: {
      items: components["schemas"]["AuditRecord"][];
      /** @description Pass as ?cursor= for the next (older) page; null at the end. */
      next_cursor: string | null;
    };
    /**
     * FieldError
     * @description One invalid input, named so a client can show it next to the right field.
     */
    FieldError: {
      /** @description Dotted path of the field or parameter, e.g. entries.3.hours or limit. */
      field: string;
      /** @description The same path as a list; query and header names start with 'query' or 'header'. */
      loc: (string | number)[];
      /** @description What is wrong, for people. */
      message: string;
      /** @description What is wrong, for programs (e.g. missing, range, invalid_cursor). */
      type: string;
    } & {
      [key: string]: unknown;
    };
    /**
     * Person
     * @description A user as entries and decisions show them: subjects are unique within their issuer only.
     */
    Person: {
      /** @description The issuer of the person's token (an OIDC issuer URL). */
      issuer: string;
      /** @description The token's sub, unique within the issuer. */
      subject: string;
      /** @description A display name when the token carried one. */
      name: string | null;
    };
    /**
     * Problem
     * @description RFC 9457 problem details (``application/problem+json``).
     * @example {
     *       "detail": "The request has invalid fields.",
     *       "errors": [
     *         {
     *           "field": "hours",
     *           "loc": [
     *             "hours"
     *           ],
     *           "message": "must be in quarter hours (a multiple of 0.25)",
     *           "type": "value_error"
     *         }
     *       ],
     *       "request_id": "5f0c6d0e8b3f4a0f9d1e2c3b4a5f6e7d",
     *       "status": 422,
     *       "title": "Unprocessable Content",
     *       "type": "about:blank"
     *     }
     */
    Problem: {
      /**
       * @description A URI naming the problem type; about:blank by default.
       * @default about:blank
       */
      type: string;
      /** @description The HTTP status phrase or a short summary. */
      title: string;
      /** @description The HTTP status code, repeated. */
      status: number;
      /**
       * @description What happened, for people.
       * @default null
       */
      detail: string | null;
      /**
       * @description The X-Request-Id of the request, for support.
       * @default null
       */
      request_id: string | null;
      /**
       * @description Per-field errors (400 and 422): at most 50; errors_total says how many there were when there were more.
       * @default null
       */
      errors: components["schemas"]["FieldError"][] | null;
      /**
       * @description Only when errors was cut at 50: how many errors there were in all.
       * @default null
       */
      errors_total: number | null;
    } & {
      [key: string]: unknown;
    };
    /**
     * RangeAnchor
     * @description What a ranged verification starts from: a signed checkpoint whose signature verified with a
     *     known key (its record must carry that hash), or the chain's start (record 1 links to 64 zeros).
     */
    RangeAnchor: {
      /** @enum {string} */
      kind: "checkpoint" | "start";
      /** @description The record it vouches for (the checkpoint's seq; 0 for the start). */
      seq: number;
      /** @description The head hash the checkpoint signed (64 zeros for the start: record 1's prev_hash). */
      hash: string;
      /**
       * @description The checkpoint's number (a checkpoint only).
       * @default null
       */
      number: number | null;
      /**
       * @description The kid of the key its signature verified with.
       * @default null
       */
      key_id: string | null;
      /**
       * @description When it was signed.
       * @default null
       */
      signed_at: string | null;
    };
    /** Resource */
    Resource: {
      type: string;
      /** @default  */
      id: string;
    };
    /**
     * UploadIn
     * @description ``POST /timesheets/upload``: rows are validated one by one (so that every bad row is named,
     *     as ``entries.N.field``), hence ``dict`` here and :class:`UploadRow` in the published schema.
     * @example {
     *       "entries": [
     *         {
     *           "date": "2026-11-23",
     *           "hours": 8,
     *           "project": "Store rollout",
     *           "user": "local|alice"
     *         },
     *         {
     *           "date": "2026-11-23",
     *           "hours": 4.25,
     *           "project": "Support",
     *           "user": "local|bob"
     *         }
     *       ]
     *     }
     */
    UploadIn: {
      /** @description 1 to 1000 entries, stored all or nothing. */
      entries: components["schemas"]["UploadRow"][];
    };
    /**
     * UploadResult
     * @description What a batch upload stored.
     * @example {
     *       "count": 1,
     *       "items": [
     *         {
     *           "created_at": "2026-11-23T17:02:11.204518Z",
     *           "date": "2026-11-23",
     *           "decision": null,
     *           "hours": 7.5,
     *           "id": "0b5c6f9e-3d2a-4c1b-8e7f-6a5b4c3d2e1f",
     *           "notes": null,
     *           "owner": {
     *             "issuer": "https://login.abc.example/",
     *             "name": null,
     *             "subject": "local|alice"
     *           },
     *           "project": "Store rollout",
     *           "status": "submitted",
     *           "updated_at": "2026-11-23T17:02:11.204518Z"
     *         }
     *       ],
     *       "upload_id": "5d2c1b0a-9e8f-4a7b-b6c5-d4e3f2a1b0c9"
     *     }
     */
    UploadResult: {
      /** Format: uuid */
      upload_id: string;
      count: number;
      items: components["schemas"]["Entry"][];
    };
    /**
     * UploadRow
     * @description One row of ``POST /timesheets/upload``: an entry for the named user.
     * @example {
     *       "date": "2026-11-23",
     *       "hours": 8,
     *       "project": "Store rollout",
     *       "user": "local|alice"
     *     }
     */
    UploadRow: {
      /**
       * Format: date
       * @description The day worked, YYYY-MM-DD, 2000-01-01 to 2099-12-31.
       */
      date: string;
      /** @description The project the hours were spent on. Not blank, no control characters, no bidirectional controls (U+202A-U+202E, U+2066-U+2069); surrounding whitespace is removed. Stored in Unicode NFC (a decomposed spelling is the same name). */
      project: string;
      /** @description Hours worked, in quarter hours: more than 0, at most 24; a person's entries on one date add up to at most 24 (422 day_hours_exceeded). */
      hours: number;
      /**
       * @description Free-text notes. At most 2000 characters; line breaks are fine, other control characters are not. No bidirectional embedding or override (U+202A-U+202E); an isolate (U+2066-U+2068) is closed by U+2069 on its line, not nested. An empty string means none.
       * @default null
       */
      notes: string | null;
      /** @description The subject (sub) of the user the entry is for, within the uploader's issuer. Not blank, no control characters, no bidirectional controls (U+202A-U+202E, U+2066-U+2069); surrounding whitespace is removed. */
      user: string;
    };
    /**
     * VerifiedRange
     * @description The range a verification covered, and what anchored it (only when a range was asked for).
     */
    VerifiedRange: {
      /** @description The first record walked: the anchor's (1 from the start). */
      from_seq: number;
      /** @description The last record of the range: until, or the head. */
      to_seq: number;
      /** @description to_seq was the chain's head when the walk began. */
      to_head: boolean;
      /**
       * @description The last record of the range that a verified checkpoint signs: up to it the records are those that were signed; after it (appended since the newest checkpoint) the chain alone holds them. Absent when no checkpoint covers any of the range, and when ok is false.
       * @default null
       */
      signed_through: number | null;
      anchor: components["schemas"]["RangeAnchor"];
    };
    /**
     * VerifyResult
     * @example {
     *       "checked": 1842,
     *       "checkpoints": {
     *         "chain_matches": true,
     *         "checked": 17,
     *         "latest": {
     *           "key_id": "ck-2026-11",
     *           "number": 17,
     *           "seq": 1842,
     *           "signed_at": "2026-11-23T17:05:00Z"
     *         },
     *         "signatures_valid": true,
     *         "verified": 17
     *       },
     *       "ok": true
     *     }
     * @example {
     *       "checked": 43,
     *       "checkpoints": {
     *         "chain_matches": true,
     *         "checked": 2,
     *         "latest": {
     *           "key_id": "ck-2026-11",
     *           "number": 17,
     *           "seq": 1842,
     *           "signed_at": "2026-11-23T17:05:00Z"
     *         },
     *         "signatures_valid": true,
     *         "verified": 2
     *       },
     *       "ok": true,
     *       "range": {
     *         "anchor": {
     *           "hash": "3f5e000000000000000000000000000000000000000000000000000000000000",
     *           "key_id": "ck-2026-11",
     *           "kind": "checkpoint",
     *           "number": 16,
     *           "seq": 1800,
     *           "signed_at": "2026-11-23T17:04:00Z"
     *         },
     *         "from_seq": 1800,
     *         "signed_through": 1842,
     *         "to_head": true,
     *         "to_seq": 1842
     *       }
     *     }
     * @example {
     *       "checked": 977,
     *       "first_bad": 977,
     *       "ok": false,
     *       "reason": "hash does not match the record's content"
     *     }
     * @example {
     *       "checked": 1842,
     *       "first_bad": 1801,
     *       "ok": false,
     *       "reason": "records 1801 to 1842 differ from signed checkpoint 17: the history was rewritten and the chain recomputed after it was signed"
     *     }
     */
    VerifyResult: {
      ok: boolean;
      /** @description Records examined. */
      checked: number;
      /**
       * @description The first seq that is missing, altered or unlinked, or — when the records no longer match a signed checkpoint — the first one after the last checkpoint that still matches (only when ok is false and records are at fault). In a range: the anchor's own record when it no longer carries the head its checkpoint signed (the history up to it was rewritten).
       * @default null
       */
      first_bad: number | null;
      /**
       * @description What is wrong (only when ok is false).
       * @default null
       */
      reason: string | null;
      /**
       * @description The chain against its signed checkpoints (absent when checkpoints are off).
       * @default null
       */
      checkpoints: components["schemas"]["CheckpointStatus"] | null;
      /**
       * @description What was verified, from what anchor (only when a range was asked for, and its anchor held: an anchor that does not verify anchors nothing, and ok is false).
       * @default null
       */
      range: components["schemas"]["VerifiedRange"] | null;
    };
  };
  responses: never;
  parameters: never;
  requestBodies: never;
  headers: never;
  pathItems: never;
}
export type $defs = Record<string, never>;
export interface operations {
  listEntries: {
    parameters: {
      query?: {
        /** @description Earliest date (inclusive). */
        from?: string;
        /** @description Latest date (inclusive); not before from. */
        to?: string;
        /** @description Only entries in this status. */
        status?: "submitted" | "approved" | "rejected";
        /** @description Only entries of this project (exact). */
        project?: string;
        /** @description Page size. */
        limit?: number;
        /** @description The next_cursor of the previous page, unchanged (opaque). */
        cursor?: string;
      };
      header?: never;
      path?: never;
      cookie?: never;
    };
    requestBody?: never;
    responses: {
      /** @description One page; next_cursor leads to the next. */
      200: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "items": [
           *         {
           *           "id": "0b5c6f9e-3d2a-4c1b-8e7f-6a5b4c3d2e1f",
           *           "owner": {
           *             "issuer": "https://login.abc.example/",
           *             "subject": "local|alice",
           *             "name": "Alice Example"
           *           },
           *           "date": "2026-11-23",
           *           "project": "Store rollout",
           *           "hours": 7.5,
           *           "notes": "Pairing on the data migration",
           *           "status": "submitted",
           *           "decision": null,
           *           "created_at": "2026-11-23T17:02:11.204518Z",
           *           "updated_at": "2026-11-23T17:02:11.204518Z"
           *         }
           *       ],
           *       "next_cursor": null
           *     }
           */
          "application/json": components["schemas"]["EntryPage"];
        };
      };
      /** @description Malformed: the request target (encoded separators, dot segments, characters beyond printable ASCII), a header, or the JSON body. */
      400: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Bad Request",
           *       "status": 400,
           *       "detail": "The path contains encoded separators or dot segments."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description No access token, or one that does not verify (expired, wrong audience or issuer, bad signature, revoked). */
      401: {
        headers: {
          /** @description An RFC 6750 challenge: error invalid_token or insufficient_scope (with scope). */
          "WWW-Authenticate"?: string;
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Unauthorized",
           *       "status": 401,
           *       "detail": "This API needs a bearer access token.",
           *       "reason": "missing_token"
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The token lacks a scope the operation needs. */
      403: {
        headers: {
          /** @description An RFC 6750 challenge: error invalid_token or insufficient_scope (with scope). */
          "WWW-Authenticate"?: string;
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Forbidden",
           *       "status": 403,
           *       "detail": "This route needs the scope read:timesheets.",
           *       "reason": "insufficient_scope",
           *       "required_scope": "read:timesheets"
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description A query parameter is invalid, unknown or repeated; errors[] names it. */
      422: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Unprocessable Content",
           *       "status": 422,
           *       "detail": "The query string has invalid parameters.",
           *       "errors": [
           *         {
           *           "field": "limit",
           *           "loc": [
           *             "query",
           *             "limit"
           *           ],
           *           "message": "Input should be less than or equal to 100",
           *           "type": "less_than_equal"
           *         }
           *       ]
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description Too many requests for this subject or client, or too many of the subject's to one service in progress at once; retry after Retry-After seconds. */
      429: {
        headers: {
          /** @description Seconds to wait before retrying. */
          "Retry-After"?: number;
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Too Many Requests",
           *       "status": 429,
           *       "detail": "Too many requests for this subject; retry in 12 s.",
           *       "reason": "rate_limit_subject"
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The service behind the gateway failed; retry after Retry-After seconds. For a write, outcome says whether it can have taken effect: unknown (repeat it with the same Idempotency-Key, or look the resource up) or not_stored. */
      502: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Bad Gateway",
           *       "status": 502,
           *       "detail": "The service is unreachable."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description A service, its database or the token issuer is unavailable; retry after Retry-After seconds. For a write, outcome not_stored says nothing was changed, unknown that it may have been. */
      503: {
        headers: {
          /** @description Seconds to wait before retrying. */
          "Retry-After"?: number;
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Service Unavailable",
           *       "status": 503,
           *       "detail": "A backing service is unreachable; retry shortly."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The service did not answer in time; for a write, outcome unknown: it may have taken effect. */
      504: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Gateway Timeout",
           *       "status": 504,
           *       "detail": "The service timed out."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
    };
  };
  createEntry: {
    parameters: {
      query?: never;
      header?: {
        /**
         * @description 1-255 visible ASCII characters (the service also accepts the key as a quoted string). A retry with the same key and body replays the first answer (header Idempotent-Replayed: true) and creates nothing; the same key with a different body answers 422. Keys are per caller and remembered for 24 hours (IDEMPOTENCY_TTL_HOURS).
         * @example 2f6c0e1c-4b7a-4d2e-9c55-6b0d3f8e1a27
         */
        "Idempotency-Key"?: string;
      };
      path?: never;
      cookie?: never;
    };
    requestBody: {
      content: {
        "application/json": components["schemas"]["EntryIn"];
      };
    };
    responses: {
      /** @description Created, or the stored answer to a retry with the same Idempotency-Key and body. */
      201: {
        headers: {
          /** @description The entry's URL, relative to the request's (timesheets/{id}). */
          Location?: string;
          /** @description true when this is the stored answer to an earlier request with the same key. */
          "Idempotent-Replayed"?: "true";
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "id": "0b5c6f9e-3d2a-4c1b-8e7f-6a5b4c3d2e1f",
           *       "owner": {
           *         "issuer": "https://login.abc.example/",
           *         "subject": "local|alice",
           *         "name": "Alice Example"
           *       },
           *       "date": "2026-11-23",
           *       "project": "Store rollout",
           *       "hours": 7.5,
           *       "notes": "Pairing on the data migration",
           *       "status": "submitted",
           *       "decision": null,
           *       "created_at": "2026-11-23T17:02:11.204518Z",
           *       "updated_at": "2026-11-23T17:02:11.204518Z"
           *     }
           */
          "application/json": components["schemas"]["Entry"];
        };
      };
      /** @description Malformed: the request target (encoded separators, dot segments, characters beyond printable ASCII), a header, or the JSON body. */
      400: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Bad Request",
           *       "status": 400,
           *       "detail": "The path contains encoded separators or dot segments."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description No access token, or one that does not verify (expired, wrong audience or issuer, bad signature, revoked). */
      401: {
        headers: {
          /** @description An RFC 6750 challenge: error invalid_token or insufficient_scope (with scope). */
          "WWW-Authenticate"?: string;
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Unauthorized",
           *       "status": 401,
           *       "detail": "This API needs a bearer access token.",
           *       "reason": "missing_token"
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The token lacks a scope the operation needs. */
      403: {
        headers: {
          /** @description An RFC 6750 challenge: error invalid_token or insufficient_scope (with scope). */
          "WWW-Authenticate"?: string;
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Forbidden",
           *       "status": 403,
           *       "detail": "This route needs the scope read:timesheets.",
           *       "reason": "insufficient_scope",
           *       "required_scope": "read:timesheets"
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The body is too large. */
      413: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Content Too Large",
           *       "status": 413,
           *       "detail": "The request body is too large."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The body is not application/json, or is in a content coding (a Content-Encoding other than identity: Accept-Encoding says so). */
      415: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Unsupported Media Type",
           *       "status": 415,
           *       "detail": "Send the body as application/json."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description Invalid fields (errors[] names each one), an Idempotency-Key reused with a different body (type idempotency_key_reused), or the entry would take the caller's entries on its date past 24 hours (type day_hours_exceeded on hours: the detail says the day, the hours already recorded and how many more fit; deleted entries do not count, rejected ones do until deleted). Checked under a lock per person and day: of concurrent creates that together pass the limit, the later ones get this answer. Not kept for an Idempotency-Key: the same request may be repeated once the day has room. */
      422: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Unprocessable Content",
           *       "status": 422,
           *       "detail": "A day holds at most 24 hours: 20 hours are already recorded on 2026-11-23, so at most 4 more can be added.",
           *       "errors": [
           *         {
           *           "field": "hours",
           *           "loc": [
           *             "hours"
           *           ],
           *           "message": "would bring 2026-11-23 to 28 hours; 20 already recorded, at most 24 a day",
           *           "type": "day_hours_exceeded"
           *         }
           *       ]
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description Too many requests for this subject or client, or too many of the subject's to one service in progress at once; retry after Retry-After seconds. */
      429: {
        headers: {
          /** @description Seconds to wait before retrying. */
          "Retry-After"?: number;
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Too Many Requests",
           *       "status": 429,
           *       "detail": "Too many requests for this subject; retry in 12 s.",
           *       "reason": "rate_limit_subject"
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The service behind the gateway failed; retry after Retry-After seconds. For a write, outcome says whether it can have taken effect: unknown (repeat it with the same Idempotency-Key, or look the resource up) or not_stored. */
      502: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Bad Gateway",
           *       "status": 502,
           *       "detail": "The service is unreachable."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description Unavailable; with outcome unknown, the database went away while the entry was being committed: look it up at Location, or repeat with the same Idempotency-Key. */
      503: {
        headers: {
          /** @description Seconds to wait. */
          "Retry-After"?: number;
          /** @description Where the entry is if it was stored (outcome unknown only). */
          Location?: string;
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Service Unavailable",
           *       "status": 503,
           *       "detail": "The database went away while the entry was being committed; whether it was stored is not known yet. Look it up at the Location given, or repeat with the same Idempotency-Key.",
           *       "outcome": "unknown"
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The service did not answer in time; for a write, outcome unknown: it may have taken effect. */
      504: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Gateway Timeout",
           *       "status": 504,
           *       "detail": "The service timed out."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
    };
  };
  uploadEntries: {
    parameters: {
      query?: never;
      header?: {
        /**
         * @description 1-255 visible ASCII characters (the service also accepts the key as a quoted string). A retry with the same key and body replays the first answer (header Idempotent-Replayed: true) and creates nothing; the same key with a different body answers 422. Keys are per caller and remembered for 24 hours (IDEMPOTENCY_TTL_HOURS).
         * @example 2f6c0e1c-4b7a-4d2e-9c55-6b0d3f8e1a27
         */
        "Idempotency-Key"?: string;
      };
      path?: never;
      cookie?: never;
    };
    requestBody: {
      content: {
        "application/json": components["schemas"]["UploadIn"];
      };
    };
    responses: {
      /** @description All rows stored. */
      201: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "upload_id": "5d2c1b0a-9e8f-4a7b-b6c5-d4e3f2a1b0c9",
           *       "count": 1,
           *       "items": [
           *         {
           *           "id": "0b5c6f9e-3d2a-4c1b-8e7f-6a5b4c3d2e1f",
           *           "owner": {
           *             "issuer": "https://login.abc.example/",
           *             "subject": "local|alice",
           *             "name": null
           *           },
           *           "date": "2026-11-23",
           *           "project": "Store rollout",
           *           "hours": 7.5,
           *           "notes": null,
           *           "status": "submitted",
           *           "decision": null,
           *           "created_at": "2026-11-23T17:02:11.204518Z",
           *           "updated_at": "2026-11-23T17:02:11.204518Z"
           *         }
           *       ]
           *     }
           */
          "application/json": components["schemas"]["UploadResult"];
        };
      };
      /** @description Malformed: the request target (encoded separators, dot segments, characters beyond printable ASCII), a header, or the JSON body. */
      400: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Bad Request",
           *       "status": 400,
           *       "detail": "The path contains encoded separators or dot segments."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description No access token, or one that does not verify (expired, wrong audience or issuer, bad signature, revoked). */
      401: {
        headers: {
          /** @description An RFC 6750 challenge: error invalid_token or insufficient_scope (with scope). */
          "WWW-Authenticate"?: string;
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Unauthorized",
           *       "status": 401,
           *       "detail": "This API needs a bearer access token.",
           *       "reason": "missing_token"
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The caller lacks the scope, or is not a machine client acting as itself. */
      403: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Forbidden",
           *       "status": 403,
           *       "detail": "Batch upload is for machine clients acting as themselves."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The body is too large. */
      413: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Content Too Large",
           *       "status": 413,
           *       "detail": "The request body is too large."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The body is not application/json, or is in a content coding (a Content-Encoding other than identity: Accept-Encoding says so). */
      415: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Unsupported Media Type",
           *       "status": 415,
           *       "detail": "Send the body as application/json."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description Nothing was stored. Invalid fields (errors[] names each one as entries.N.field), an Idempotency-Key reused with a different body (type idempotency_key_reused), or rows that would take a user's day past 24 hours (type day_hours_exceeded, entries.N.hours, counting the hours already recorded and the batch's earlier rows that fit; reported once every row is valid). */
      422: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Unprocessable Content",
           *       "status": 422,
           *       "detail": "2 of 7 rows would take a day past 24 hours; nothing was stored.",
           *       "errors": [
           *         {
           *           "field": "entries.2.hours",
           *           "loc": [
           *             "entries",
           *             2,
           *             "hours"
           *           ],
           *           "message": "would bring 2026-11-23 to 25 hours for local|alice: 20 already recorded, 4 in rows before it; at most 24 a day",
           *           "type": "day_hours_exceeded"
           *         }
           *       ]
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description Too many requests for this subject or client, or too many of the subject's to one service in progress at once; retry after Retry-After seconds. */
      429: {
        headers: {
          /** @description Seconds to wait before retrying. */
          "Retry-After"?: number;
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Too Many Requests",
           *       "status": 429,
           *       "detail": "Too many requests for this subject; retry in 12 s.",
           *       "reason": "rate_limit_subject"
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The service behind the gateway failed; retry after Retry-After seconds. For a write, outcome says whether it can have taken effect: unknown (repeat it with the same Idempotency-Key, or look the resource up) or not_stored. */
      502: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Bad Gateway",
           *       "status": 502,
           *       "detail": "The service is unreachable."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description A service, its database or the token issuer is unavailable; retry after Retry-After seconds. For a write, outcome not_stored says nothing was changed, unknown that it may have been. */
      503: {
        headers: {
          /** @description Seconds to wait before retrying. */
          "Retry-After"?: number;
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Service Unavailable",
           *       "status": 503,
           *       "detail": "A backing service is unreachable; retry shortly."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The service did not answer in time; for a write, outcome unknown: it may have taken effect. */
      504: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Gateway Timeout",
           *       "status": 504,
           *       "detail": "The service timed out."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
    };
  };
  getEntry: {
    parameters: {
      query?: never;
      header?: never;
      path: {
        /** @description The entry's id (a UUID; anything else names no entry: 404). */
        id: string;
      };
      cookie?: never;
    };
    requestBody?: never;
    responses: {
      /** @description The entry. */
      200: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "id": "0b5c6f9e-3d2a-4c1b-8e7f-6a5b4c3d2e1f",
           *       "owner": {
           *         "issuer": "https://login.abc.example/",
           *         "subject": "local|alice",
           *         "name": "Alice Example"
           *       },
           *       "date": "2026-11-23",
           *       "project": "Store rollout",
           *       "hours": 7.5,
           *       "notes": "Pairing on the data migration",
           *       "status": "submitted",
           *       "decision": null,
           *       "created_at": "2026-11-23T17:02:11.204518Z",
           *       "updated_at": "2026-11-23T17:02:11.204518Z"
           *     }
           */
          "application/json": components["schemas"]["Entry"];
        };
      };
      /** @description Malformed: the request target (encoded separators, dot segments, characters beyond printable ASCII), a header, or the JSON body. */
      400: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Bad Request",
           *       "status": 400,
           *       "detail": "The path contains encoded separators or dot segments."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description No access token, or one that does not verify (expired, wrong audience or issuer, bad signature, revoked). */
      401: {
        headers: {
          /** @description An RFC 6750 challenge: error invalid_token or insufficient_scope (with scope). */
          "WWW-Authenticate"?: string;
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Unauthorized",
           *       "status": 401,
           *       "detail": "This API needs a bearer access token.",
           *       "reason": "missing_token"
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The token lacks a scope the operation needs. */
      403: {
        headers: {
          /** @description An RFC 6750 challenge: error invalid_token or insufficient_scope (with scope). */
          "WWW-Authenticate"?: string;
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Forbidden",
           *       "status": 403,
           *       "detail": "This route needs the scope read:timesheets.",
           *       "reason": "insufficient_scope",
           *       "required_scope": "read:timesheets"
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description No such entry (unknown, deleted, or not visible to the caller). */
      404: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Not Found",
           *       "status": 404,
           *       "detail": "No such timesheet entry."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The operation takes no query parameters: one given is refused (errors[] names it), and nothing is done. */
      422: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Unprocessable Content",
           *       "status": 422,
           *       "detail": "The query string has invalid parameters.",
           *       "errors": [
           *         {
           *           "field": "dry_run",
           *           "loc": [
           *             "query",
           *             "dry_run"
           *           ],
           *           "message": "this operation takes no query parameters",
           *           "type": "extra_forbidden"
           *         }
           *       ]
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description Too many requests for this subject or client, or too many of the subject's to one service in progress at once; retry after Retry-After seconds. */
      429: {
        headers: {
          /** @description Seconds to wait before retrying. */
          "Retry-After"?: number;
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Too Many Requests",
           *       "status": 429,
           *       "detail": "Too many requests for this subject; retry in 12 s.",
           *       "reason": "rate_limit_subject"
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The service behind the gateway failed; retry after Retry-After seconds. For a write, outcome says whether it can have taken effect: unknown (repeat it with the same Idempotency-Key, or look the resource up) or not_stored. */
      502: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Bad Gateway",
           *       "status": 502,
           *       "detail": "The service is unreachable."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description A service, its database or the token issuer is unavailable; retry after Retry-After seconds. For a write, outcome not_stored says nothing was changed, unknown that it may have been. */
      503: {
        headers: {
          /** @description Seconds to wait before retrying. */
          "Retry-After"?: number;
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Service Unavailable",
           *       "status": 503,
           *       "detail": "A backing service is unreachable; retry shortly."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The service did not answer in time; for a write, outcome unknown: it may have taken effect. */
      504: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Gateway Timeout",
           *       "status": 504,
           *       "detail": "The service timed out."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
    };
  };
  deleteEntry: {
    parameters: {
      query?: never;
      header?: never;
      path: {
        /** @description The entry's id (a UUID; anything else names no entry: 404). */
        id: string;
      };
      cookie?: never;
    };
    requestBody?: never;
    responses: {
      /** @description Deleted. */
      204: {
        headers: {
          [name: string]: unknown;
        };
        content?: never;
      };
      /** @description Malformed: the request target (encoded separators, dot segments, characters beyond printable ASCII), a header, or the JSON body. */
      400: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Bad Request",
           *       "status": 400,
           *       "detail": "The path contains encoded separators or dot segments."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description No access token, or one that does not verify (expired, wrong audience or issuer, bad signature, revoked). */
      401: {
        headers: {
          /** @description An RFC 6750 challenge: error invalid_token or insufficient_scope (with scope). */
          "WWW-Authenticate"?: string;
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Unauthorized",
           *       "status": 401,
           *       "detail": "This API needs a bearer access token.",
           *       "reason": "missing_token"
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The token lacks a scope the operation needs. */
      403: {
        headers: {
          /** @description An RFC 6750 challenge: error invalid_token or insufficient_scope (with scope). */
          "WWW-Authenticate"?: string;
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Forbidden",
           *       "status": 403,
           *       "detail": "This route needs the scope read:timesheets.",
           *       "reason": "insufficient_scope",
           *       "required_scope": "read:timesheets"
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description No such entry (unknown, deleted, or not visible to the caller). */
      404: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Not Found",
           *       "status": 404,
           *       "detail": "No such timesheet entry."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The entry is approved and stays. */
      409: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Conflict",
           *       "status": 409,
           *       "detail": "An approved entry cannot be deleted.",
           *       "status_text": "approved"
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The operation takes no query parameters: one given is refused (errors[] names it), and nothing is done. */
      422: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Unprocessable Content",
           *       "status": 422,
           *       "detail": "The query string has invalid parameters.",
           *       "errors": [
           *         {
           *           "field": "dry_run",
           *           "loc": [
           *             "query",
           *             "dry_run"
           *           ],
           *           "message": "this operation takes no query parameters",
           *           "type": "extra_forbidden"
           *         }
           *       ]
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description Too many requests for this subject or client, or too many of the subject's to one service in progress at once; retry after Retry-After seconds. */
      429: {
        headers: {
          /** @description Seconds to wait before retrying. */
          "Retry-After"?: number;
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Too Many Requests",
           *       "status": 429,
           *       "detail": "Too many requests for this subject; retry in 12 s.",
           *       "reason": "rate_limit_subject"
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The service behind the gateway failed; retry after Retry-After seconds. For a write, outcome says whether it can have taken effect: unknown (repeat it with the same Idempotency-Key, or look the resource up) or not_stored. */
      502: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Bad Gateway",
           *       "status": 502,
           *       "detail": "The service is unreachable."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description A service, its database or the token issuer is unavailable; retry after Retry-After seconds. For a write, outcome not_stored says nothing was changed, unknown that it may have been. */
      503: {
        headers: {
          /** @description Seconds to wait before retrying. */
          "Retry-After"?: number;
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Service Unavailable",
           *       "status": 503,
           *       "detail": "A backing service is unreachable; retry shortly."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The service did not answer in time; for a write, outcome unknown: it may have taken effect. */
      504: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Gateway Timeout",
           *       "status": 504,
           *       "detail": "The service timed out."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
    };
  };
  approvalQueue: {
    parameters: {
      query?: {
        /** @description Page size. */
        limit?: number;
        /** @description The next_cursor of the previous page, unchanged (opaque). */
        cursor?: string;
      };
      header?: never;
      path?: never;
      cookie?: never;
    };
    requestBody?: never;
    responses: {
      /** @description One page. */
      200: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "items": [
           *         {
           *           "id": "0b5c6f9e-3d2a-4c1b-8e7f-6a5b4c3d2e1f",
           *           "owner": {
           *             "issuer": "https://login.abc.example/",
           *             "subject": "local|alice",
           *             "name": "Alice Example"
           *           },
           *           "date": "2026-11-23",
           *           "project": "Store rollout",
           *           "hours": 7.5,
           *           "notes": "Pairing on the data migration",
           *           "status": "submitted",
           *           "decision": null,
           *           "created_at": "2026-11-23T17:02:11.204518Z",
           *           "updated_at": "2026-11-23T17:02:11.204518Z"
           *         }
           *       ],
           *       "next_cursor": null
           *     }
           */
          "application/json": components["schemas"]["EntryPage"];
        };
      };
      /** @description Malformed: the request target (encoded separators, dot segments, characters beyond printable ASCII), a header, or the JSON body. */
      400: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Bad Request",
           *       "status": 400,
           *       "detail": "The path contains encoded separators or dot segments."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description No access token, or one that does not verify (expired, wrong audience or issuer, bad signature, revoked). */
      401: {
        headers: {
          /** @description An RFC 6750 challenge: error invalid_token or insufficient_scope (with scope). */
          "WWW-Authenticate"?: string;
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Unauthorized",
           *       "status": 401,
           *       "detail": "This API needs a bearer access token.",
           *       "reason": "missing_token"
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The token lacks a scope the operation needs. */
      403: {
        headers: {
          /** @description An RFC 6750 challenge: error invalid_token or insufficient_scope (with scope). */
          "WWW-Authenticate"?: string;
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Forbidden",
           *       "status": 403,
           *       "detail": "This route needs the scope read:timesheets.",
           *       "reason": "insufficient_scope",
           *       "required_scope": "read:timesheets"
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description A query parameter is invalid, unknown or repeated; errors[] names it. */
      422: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Unprocessable Content",
           *       "status": 422,
           *       "detail": "The query string has invalid parameters.",
           *       "errors": [
           *         {
           *           "field": "limit",
           *           "loc": [
           *             "query",
           *             "limit"
           *           ],
           *           "message": "Input should be less than or equal to 100",
           *           "type": "less_than_equal"
           *         }
           *       ]
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description Too many requests for this subject or client, or too many of the subject's to one service in progress at once; retry after Retry-After seconds. */
      429: {
        headers: {
          /** @description Seconds to wait before retrying. */
          "Retry-After"?: number;
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Too Many Requests",
           *       "status": 429,
           *       "detail": "Too many requests for this subject; retry in 12 s.",
           *       "reason": "rate_limit_subject"
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The timesheets service answered something unexpected. */
      502: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Bad Gateway",
           *       "status": 502,
           *       "detail": "The timesheets service answered 500."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description A service, its database or the token issuer is unavailable; retry after Retry-After seconds. For a write, outcome not_stored says nothing was changed, unknown that it may have been. */
      503: {
        headers: {
          /** @description Seconds to wait before retrying. */
          "Retry-After"?: number;
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Service Unavailable",
           *       "status": 503,
           *       "detail": "A backing service is unreachable; retry shortly."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The service did not answer in time; for a write, outcome unknown: it may have taken effect. */
      504: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Gateway Timeout",
           *       "status": 504,
           *       "detail": "The service timed out."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
    };
  };
  decide: {
    parameters: {
      query?: never;
      header?: never;
      path: {
        /** @description The entry's id (a UUID; anything else names no entry: 404). */
        id: string;
      };
      cookie?: never;
    };
    requestBody: {
      content: {
        "application/json": components["schemas"]["DecisionIn"];
      };
    };
    responses: {
      /** @description Applied; entry holds the decided entry. */
      200: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "id": "7d1e5b0a-2c4f-4e8a-9b6d-3f2a1c0e9d8b",
           *       "entry_id": "0b5c6f9e-3d2a-4c1b-8e7f-6a5b4c3d2e1f",
           *       "decision": "approved",
           *       "comment": null,
           *       "by": {
           *         "issuer": "https://login.abc.example/",
           *         "subject": "local|bob",
           *         "name": "Bob Example"
           *       },
           *       "at": "2026-11-24T09:12:40.118220Z",
           *       "state": "applied",
           *       "entry": {
           *         "id": "0b5c6f9e-3d2a-4c1b-8e7f-6a5b4c3d2e1f",
           *         "owner": {
           *           "issuer": "https://login.abc.example/",
           *           "subject": "local|alice",
           *           "name": "Alice Example"
           *         },
           *         "date": "2026-11-23",
           *         "project": "Store rollout",
           *         "hours": 7.5,
           *         "notes": "Pairing on the data migration",
           *         "status": "approved",
           *         "decision": {
           *           "decision": "approved",
           *           "by": {
           *             "issuer": "https://login.abc.example/",
           *             "subject": "local|bob",
           *             "name": "Bob Example"
           *           },
           *           "at": "2026-11-24T09:12:40.118220Z",
           *           "comment": null
           *         },
           *         "created_at": "2026-11-23T17:02:11.204518Z",
           *         "updated_at": "2026-11-24T09:12:40.301554Z"
           *       }
           *     }
           */
          "application/json": components["schemas"]["Decision"];
        };
      };
      /** @description Malformed: the request target (encoded separators, dot segments, characters beyond printable ASCII), a header, or the JSON body. */
      400: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Bad Request",
           *       "status": 400,
           *       "detail": "The path contains encoded separators or dot segments."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description No access token, or one that does not verify (expired, wrong audience or issuer, bad signature, revoked). */
      401: {
        headers: {
          /** @description An RFC 6750 challenge: error invalid_token or insufficient_scope (with scope). */
          "WWW-Authenticate"?: string;
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Unauthorized",
           *       "status": 401,
           *       "detail": "This API needs a bearer access token.",
           *       "reason": "missing_token"
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The caller lacks the scope, or the entry is the caller's own. */
      403: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Forbidden",
           *       "status": 403,
           *       "detail": "Approvers cannot decide their own entries."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description No such entry (unknown, deleted, or not visible to the caller). */
      404: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Not Found",
           *       "status": 404,
           *       "detail": "No such timesheet entry."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The entry already has a decision (decision carries it, when known). */
      409: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Conflict",
           *       "status": 409,
           *       "detail": "The entry already has a decision."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The body is too large. */
      413: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Content Too Large",
           *       "status": 413,
           *       "detail": "The request body is too large."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The body is not application/json, or is in a content coding (a Content-Encoding other than identity: Accept-Encoding says so). */
      415: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Unsupported Media Type",
           *       "status": 415,
           *       "detail": "Send the body as application/json."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description Invalid fields; errors[] names each one. */
      422: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Unprocessable Content",
           *       "status": 422,
           *       "detail": "The request has invalid fields.",
           *       "errors": [
           *         {
           *           "field": "hours",
           *           "loc": [
           *             "hours"
           *           ],
           *           "message": "must be in quarter hours (a multiple of 0.25)",
           *           "type": "value_error"
           *         }
           *       ]
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description Too many requests for this subject or client, or too many of the subject's to one service in progress at once; retry after Retry-After seconds. */
      429: {
        headers: {
          /** @description Seconds to wait before retrying. */
          "Retry-After"?: number;
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Too Many Requests",
           *       "status": 429,
           *       "detail": "Too many requests for this subject; retry in 12 s.",
           *       "reason": "rate_limit_subject"
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The timesheets service refused the decision unexpectedly; it stays recorded and is retried. */
      502: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Bad Gateway",
           *       "status": 502,
           *       "detail": "The timesheets service refused the decision unexpectedly; it stays recorded and is retried."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description A service, its database or the token issuer is unavailable; retry after Retry-After seconds. For a write, outcome not_stored says nothing was changed, unknown that it may have been. */
      503: {
        headers: {
          /** @description Seconds to wait before retrying. */
          "Retry-After"?: number;
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Service Unavailable",
           *       "status": 503,
           *       "detail": "A backing service is unreachable; retry shortly."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The service did not answer in time; for a write, outcome unknown: it may have taken effect. */
      504: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Gateway Timeout",
           *       "status": 504,
           *       "detail": "The service timed out."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
    };
  };
  listEvents: {
    parameters: {
      query?: {
        /** @description Actor subject. */
        actor?: string;
        /** @description Actor issuer (with or without actor). */
        actor_issuer?: string;
        /** @description Client id of the actor's token. */
        client_id?: string;
        /** @description Exact action, e.g. timesheet.created. */
        action?: string;
        /** @description Resource type, e.g. timesheet. */
        resource_type?: string;
        /** @description Resource id. */
        resource_id?: string;
        /** @description Outcome. */
        outcome?: "success" | "denied" | "failure";
        /** @description Producing service. */
        source?: string;
        /** @description occurred_at ≥ from (RFC 3339 with an offset). */
        from?: string;
        /** @description occurred_at < to (RFC 3339 with an offset); later than from. */
        to?: string;
        /** @description Page size. */
        limit?: number;
        /** @description The next_cursor of the previous page, unchanged (opaque). */
        cursor?: string;
      };
      header?: never;
      path?: never;
      cookie?: never;
    };
    requestBody?: never;
    responses: {
      /** @description One page of records. */
      200: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "items": [
           *         {
           *           "seq": 1842,
           *           "id": "3c9a7e52-1b0d-4f6e-a8c2-5d4e3f2a1b0c",
           *           "occurred_at": "2026-11-23T17:02:11.204518Z",
           *           "recorded_at": "2026-11-23T17:02:11.391204Z",
           *           "source": "timesheets",
           *           "actor": {
           *             "issuer": "https://login.abc.example/",
           *             "subject": "local|alice",
           *             "kind": "user",
           *             "client_id": "timesheets-spa",
           *             "name": "Alice Example"
           *           },
           *           "action": "timesheet.created",
           *           "resource": {
           *             "type": "timesheet",
           *             "id": "0b5c6f9e-3d2a-4c1b-8e7f-6a5b4c3d2e1f"
           *           },
           *           "outcome": "success",
           *           "request_id": "5f0c6d0e8b3f4a0f9d1e2c3b4a5f6e7d",
           *           "details": {
           *             "date": "2026-11-23",
           *             "project": "Store rollout",
           *             "hours": 7.5
           *           },
           *           "prev_hash": "9f2b5c1d7e3a8f4b6c0d2e1f3a5b7c9d8e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b",
           *           "hash": "1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b"
           *         }
           *       ],
           *       "next_cursor": null
           *     }
           */
          "application/json": components["schemas"]["EventsPage"];
        };
      };
      /** @description Malformed: the request target (encoded separators, dot segments, characters beyond printable ASCII), a header, or the JSON body. */
      400: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Bad Request",
           *       "status": 400,
           *       "detail": "The path contains encoded separators or dot segments."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description No access token, or one that does not verify (expired, wrong audience or issuer, bad signature, revoked). */
      401: {
        headers: {
          /** @description An RFC 6750 challenge: error invalid_token or insufficient_scope (with scope). */
          "WWW-Authenticate"?: string;
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Unauthorized",
           *       "status": 401,
           *       "detail": "This API needs a bearer access token.",
           *       "reason": "missing_token"
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The token lacks a scope the operation needs. */
      403: {
        headers: {
          /** @description An RFC 6750 challenge: error invalid_token or insufficient_scope (with scope). */
          "WWW-Authenticate"?: string;
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Forbidden",
           *       "status": 403,
           *       "detail": "This route needs the scope read:timesheets.",
           *       "reason": "insufficient_scope",
           *       "required_scope": "read:timesheets"
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description A query parameter is invalid, unknown or repeated (errors[] names it), or the listing selects too much to list within the read timeout (AUDIT_READ_TIMEOUT_SECONDS): errors[0].type query_too_broad; narrow the from/to window or filter more. A retry costs the same again. */
      422: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Unprocessable Content",
           *       "status": 422,
           *       "detail": "The listing took longer than 5 s and was stopped. Narrow it: a shorter from/to window, or a filter that selects fewer records (actor, resource_id, client_id).",
           *       "errors": [
           *         {
           *           "field": "query",
           *           "loc": [
           *             "query"
           *           ],
           *           "message": "selects too much to list within 5 s",
           *           "type": "query_too_broad"
           *         }
           *       ]
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description Too many requests for this subject or client, or too many of the subject's to one service in progress at once; retry after Retry-After seconds. */
      429: {
        headers: {
          /** @description Seconds to wait before retrying. */
          "Retry-After"?: number;
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Too Many Requests",
           *       "status": 429,
           *       "detail": "Too many requests for this subject; retry in 12 s.",
           *       "reason": "rate_limit_subject"
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The service behind the gateway failed; retry after Retry-After seconds. For a write, outcome says whether it can have taken effect: unknown (repeat it with the same Idempotency-Key, or look the resource up) or not_stored. */
      502: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Bad Gateway",
           *       "status": 502,
           *       "detail": "The service is unreachable."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The database is unreachable, or every listing turn (AUDIT_READ_CONCURRENCY, shared with GET /audit/checkpoints and /audit/verify) stayed taken for the read timeout; retry after Retry-After seconds. */
      503: {
        headers: {
          /** @description Seconds to wait. */
          "Retry-After"?: number;
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Service Unavailable",
           *       "status": 503,
           *       "detail": "The listing was not started: every listing turn (4) is taken; retry after 2 s."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The service did not answer in time; for a write, outcome unknown: it may have taken effect. */
      504: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Gateway Timeout",
           *       "status": 504,
           *       "detail": "The service timed out."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
    };
  };
  verifyChain: {
    parameters: {
      query?: {
        /** @description '<seq>:<hash>' of a record seen earlier (e.g. the newest from GET /audit/events?limit=1, kept outside the database): the chain must still hold it unchanged, which catches truncation and re-hashed rewrites. In a range, its seq must lie within the range. */
        anchor?: string;
        /** @description Verify from this signed checkpoint (its number, or 'latest' for the newest) to the head: its signature must verify with a known key and its record must still carry the head it signed. Not with since. */
        from_checkpoint?: number | "latest";
        /** @description Verify from the newest signed checkpoint at or before this seq (the chain's start when there is none) to the head: the range covers since. Not with from_checkpoint. */
        since?: number;
        /** @description End the range at this seq instead of the head (at most the head; not before the range's start). */
        until?: number;
      };
      header?: never;
      path?: never;
      cookie?: never;
    };
    requestBody?: never;
    responses: {
      /** @description Whether the chain (or the range, with what anchored it) is intact, and where it breaks. */
      200: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "ok": true,
           *       "checked": 1842,
           *       "checkpoints": {
           *         "checked": 17,
           *         "verified": 17,
           *         "latest": {
           *           "number": 17,
           *           "seq": 1842,
           *           "signed_at": "2026-11-23T17:05:00Z",
           *           "key_id": "ck-2026-11"
           *         },
           *         "signatures_valid": true,
           *         "chain_matches": true
           *       }
           *     }
           */
          "application/json": components["schemas"]["VerifyResult"];
        };
      };
      /** @description Malformed: the request target (encoded separators, dot segments, characters beyond printable ASCII), a header, or the JSON body. */
      400: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Bad Request",
           *       "status": 400,
           *       "detail": "The path contains encoded separators or dot segments."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description No access token, or one that does not verify (expired, wrong audience or issuer, bad signature, revoked). */
      401: {
        headers: {
          /** @description An RFC 6750 challenge: error invalid_token or insufficient_scope (with scope). */
          "WWW-Authenticate"?: string;
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Unauthorized",
           *       "status": 401,
           *       "detail": "This API needs a bearer access token.",
           *       "reason": "missing_token"
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The token lacks a scope the operation needs. */
      403: {
        headers: {
          /** @description An RFC 6750 challenge: error invalid_token or insufficient_scope (with scope). */
          "WWW-Authenticate"?: string;
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Forbidden",
           *       "status": 403,
           *       "detail": "This route needs the scope read:timesheets.",
           *       "reason": "insufficient_scope",
           *       "required_scope": "read:timesheets"
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description A query parameter is invalid, unknown or repeated (errors[] names it); a range that names nothing on this chain (since or until beyond the head, until before the range's start, no such checkpoint, since with from_checkpoint, a checkpoint signed by a key the service no longer knows, checkpoints off: errors[] names the parameter, type bad_range); or the walk ran into the verification time limit (AUDIT_VERIFY_TIMEOUT_SECONDS) and was stopped: errors[0].type chain_too_long. Nothing is known about the chain from such an answer (audit_chain_ok is the background verifier's verdict); a retry is stopped again: verify a range (from_checkpoint=latest), or from outside with python -m audit verify. */
      422: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Unprocessable Content",
           *       "status": 422,
           *       "detail": "Verifying the chain took longer than 25 s and was stopped: the trail is too long to verify on request, and nothing is known about it from this one. The service verifies it in the background (audit_chain_ok); verify it yourself from outside with `python -m audit verify`, or verify a range on request instead: ?from_checkpoint=latest (from the newest signed checkpoint to the head) or ?since=<seq> (from the newest checkpoint at or before that record).",
           *       "errors": [
           *         {
           *           "field": "query",
           *           "loc": [
           *             "query"
           *           ],
           *           "message": "the chain cannot be walked within 25 s",
           *           "type": "chain_too_long"
           *         }
           *       ]
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description Too many requests for this subject or client, or too many of the subject's to one service in progress at once; retry after Retry-After seconds. */
      429: {
        headers: {
          /** @description Seconds to wait before retrying. */
          "Retry-After"?: number;
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Too Many Requests",
           *       "status": 429,
           *       "detail": "Too many requests for this subject; retry in 12 s.",
           *       "reason": "rate_limit_subject"
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The service behind the gateway failed; retry after Retry-After seconds. For a write, outcome says whether it can have taken effect: unknown (repeat it with the same Idempotency-Key, or look the resource up) or not_stored. */
      502: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Bad Gateway",
           *       "status": 502,
           *       "detail": "The service is unreachable."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The database is unreachable, or AUDIT_VERIFY_CONCURRENCY walks are running already (the request is refused at once, not queued), or no listing turn (AUDIT_READ_CONCURRENCY) came within the read timeout; retry after Retry-After seconds (when the running walk must have ended). */
      503: {
        headers: {
          /** @description Seconds to wait. */
          "Retry-After"?: number;
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Service Unavailable",
           *       "status": 503,
           *       "detail": "The verification was not started: every verification turn (1) is taken; retry after 18 s."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The service did not answer in time; for a write, outcome unknown: it may have taken effect. */
      504: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Gateway Timeout",
           *       "status": 504,
           *       "detail": "The service timed out."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
    };
  };
  listCheckpoints: {
    parameters: {
      query?: {
        /** @description Page size. */
        limit?: number;
        /** @description The next_cursor of the previous page, unchanged (opaque). */
        cursor?: string;
      };
      header?: never;
      path?: never;
      cookie?: never;
    };
    requestBody?: never;
    responses: {
      /** @description One page of checkpoints. */
      200: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "items": [
           *         {
           *           "number": 17,
           *           "seq": 1842,
           *           "head": "1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b",
           *           "count": 1842,
           *           "signed_at": "2026-11-23T17:05:00Z",
           *           "prev": "9f2b5c1d7e3a8f4b6c0d2e1f3a5b7c9d8e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b",
           *           "key_id": "ck-2026-11",
           *           "jws": "eyJhbGciOiJFZERTQSIsImtpZCI6ImNrLTIwMjYtMTEiLCJ0eXAiOiJ0c3AtYXVkaXQtY2hlY2twb2ludCtqd3MifQ.eyJjb3VudCI6MTg0MiwiaGVhZCI6IjFhMmIuLi4iLCJuIjoxNywicHJldiI6IjdjOWQuLi4iLCJzZXEiOjE4NDJ9.c2lnbmF0dXJl"
           *         }
           *       ],
           *       "next_cursor": "YzE3"
           *     }
           */
          "application/json": components["schemas"]["CheckpointsPage"];
        };
      };
      /** @description Malformed: the request target (encoded separators, dot segments, characters beyond printable ASCII), a header, or the JSON body. */
      400: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Bad Request",
           *       "status": 400,
           *       "detail": "The path contains encoded separators or dot segments."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description No access token, or one that does not verify (expired, wrong audience or issuer, bad signature, revoked). */
      401: {
        headers: {
          /** @description An RFC 6750 challenge: error invalid_token or insufficient_scope (with scope). */
          "WWW-Authenticate"?: string;
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Unauthorized",
           *       "status": 401,
           *       "detail": "This API needs a bearer access token.",
           *       "reason": "missing_token"
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The token lacks a scope the operation needs. */
      403: {
        headers: {
          /** @description An RFC 6750 challenge: error invalid_token or insufficient_scope (with scope). */
          "WWW-Authenticate"?: string;
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Forbidden",
           *       "status": 403,
           *       "detail": "This route needs the scope read:timesheets.",
           *       "reason": "insufficient_scope",
           *       "required_scope": "read:timesheets"
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description A query parameter is invalid, unknown or repeated; errors[] names it. */
      422: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Unprocessable Content",
           *       "status": 422,
           *       "detail": "The query string has invalid parameters.",
           *       "errors": [
           *         {
           *           "field": "limit",
           *           "loc": [
           *             "query",
           *             "limit"
           *           ],
           *           "message": "Input should be less than or equal to 100",
           *           "type": "less_than_equal"
           *         }
           *       ]
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description Too many requests for this subject or client, or too many of the subject's to one service in progress at once; retry after Retry-After seconds. */
      429: {
        headers: {
          /** @description Seconds to wait before retrying. */
          "Retry-After"?: number;
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Too Many Requests",
           *       "status": 429,
           *       "detail": "Too many requests for this subject; retry in 12 s.",
           *       "reason": "rate_limit_subject"
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The service behind the gateway failed; retry after Retry-After seconds. For a write, outcome says whether it can have taken effect: unknown (repeat it with the same Idempotency-Key, or look the resource up) or not_stored. */
      502: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Bad Gateway",
           *       "status": 502,
           *       "detail": "The service is unreachable."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The database is unreachable or slow (a page, at most 100 checkpoints read by key, ran into the read timeout, AUDIT_READ_TIMEOUT_SECONDS), or every listing turn (AUDIT_READ_CONCURRENCY) stayed taken; retry after Retry-After seconds. */
      503: {
        headers: {
          /** @description Seconds to wait. */
          "Retry-After"?: number;
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Service Unavailable",
           *       "status": 503,
           *       "detail": "The page of checkpoints took longer than 5 s and was stopped; retry shortly."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The service did not answer in time; for a write, outcome unknown: it may have taken effect. */
      504: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Gateway Timeout",
           *       "status": 504,
           *       "detail": "The service timed out."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
    };
  };
  checkpointKeys: {
    parameters: {
      query?: never;
      header?: never;
      path?: never;
      cookie?: never;
    };
    requestBody?: never;
    responses: {
      /** @description The current signing key first, then keys that only verify. */
      200: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "keys": [
           *         {
           *           "kty": "OKP",
           *           "crv": "Ed25519",
           *           "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
           *           "kid": "ck-2026-11",
           *           "use": "sig",
           *           "alg": "EdDSA"
           *         }
           *       ]
           *     }
           */
          "application/json": components["schemas"]["CheckpointKeySet"];
        };
      };
      /** @description Malformed: the request target (encoded separators, dot segments, characters beyond printable ASCII), a header, or the JSON body. */
      400: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Bad Request",
           *       "status": 400,
           *       "detail": "The path contains encoded separators or dot segments."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description No access token, or one that does not verify (expired, wrong audience or issuer, bad signature, revoked). */
      401: {
        headers: {
          /** @description An RFC 6750 challenge: error invalid_token or insufficient_scope (with scope). */
          "WWW-Authenticate"?: string;
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Unauthorized",
           *       "status": 401,
           *       "detail": "This API needs a bearer access token.",
           *       "reason": "missing_token"
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The token lacks a scope the operation needs. */
      403: {
        headers: {
          /** @description An RFC 6750 challenge: error invalid_token or insufficient_scope (with scope). */
          "WWW-Authenticate"?: string;
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Forbidden",
           *       "status": 403,
           *       "detail": "This route needs the scope read:timesheets.",
           *       "reason": "insufficient_scope",
           *       "required_scope": "read:timesheets"
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The operation takes no query parameters: one given is refused (errors[] names it), and nothing is done. */
      422: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Unprocessable Content",
           *       "status": 422,
           *       "detail": "The query string has invalid parameters.",
           *       "errors": [
           *         {
           *           "field": "dry_run",
           *           "loc": [
           *             "query",
           *             "dry_run"
           *           ],
           *           "message": "this operation takes no query parameters",
           *           "type": "extra_forbidden"
           *         }
           *       ]
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description Too many requests for this subject or client, or too many of the subject's to one service in progress at once; retry after Retry-After seconds. */
      429: {
        headers: {
          /** @description Seconds to wait before retrying. */
          "Retry-After"?: number;
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Too Many Requests",
           *       "status": 429,
           *       "detail": "Too many requests for this subject; retry in 12 s.",
           *       "reason": "rate_limit_subject"
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The service behind the gateway failed; retry after Retry-After seconds. For a write, outcome says whether it can have taken effect: unknown (repeat it with the same Idempotency-Key, or look the resource up) or not_stored. */
      502: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Bad Gateway",
           *       "status": 502,
           *       "detail": "The service is unreachable."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description A service, its database or the token issuer is unavailable; retry after Retry-After seconds. For a write, outcome not_stored says nothing was changed, unknown that it may have been. */
      503: {
        headers: {
          /** @description Seconds to wait before retrying. */
          "Retry-After"?: number;
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Service Unavailable",
           *       "status": 503,
           *       "detail": "A backing service is unreachable; retry shortly."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
      /** @description The service did not answer in time; for a write, outcome unknown: it may have taken effect. */
      504: {
        headers: {
          [name: string]: unknown;
        };
        content: {
          /**
           * @example {
           *       "type": "about:blank",
           *       "title": "Gateway Timeout",
           *       "status": 504,
           *       "detail": "The service timed out."
           *     }
           */
          "application/problem+json": components["schemas"]["Problem"];
        };
      };
    };
  };
}
