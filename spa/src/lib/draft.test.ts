import { describe, expect, it } from "vitest";
import {
  MAX_COMMENTS,
  clearComment,
  clearDraft,
  clearDrafts,
  commentsKey,
  draftKey,
  forgetOthers,
  loadComments,
  loadDraft,
  loadRecorded,
  markRecorded,
  saveComment,
  saveDraft,
  type Draft,
  type DraftStorage,
} from "./draft";

/** sessionStorage's behaviour, in memory (Node has no Web Storage). */
class MemoryStorage implements DraftStorage {
  readonly items = new Map<string, string>();
  get length(): number {
    return this.items.size;
  }
  key(index: number): string | null {
    return [...this.items.keys()][index] ?? null;
  }
  getItem(key: string): string | null {
    return this.items.get(key) ?? null;
  }
  setItem(key: string, value: string): void {
    this.items.set(key, value);
  }
  removeItem(key: string): void {
    this.items.delete(key);
  }
}

const typed: Draft = { date: "2026-12-07", project: "Apollo", hours: "1.5", notes: "design review" };

describe("entry drafts", () => {
  it("gives the draft back to the user who typed it", () => {
    const storage = new MemoryStorage();
    saveDraft(storage, "alice", typed);
    expect(loadDraft(storage, "alice")).toEqual(typed);
  });

  it("never gives one user's draft to another", () => {
    const storage = new MemoryStorage();
    saveDraft(storage, "alice", typed);
    expect(loadDraft(storage, "bob")).toBeNull();
    // Even if alice's value were stored under bob's key, the value names its owner.
    storage.setItem(draftKey("bob"), storage.getItem(draftKey("alice")) ?? "");
    expect(loadDraft(storage, "bob")).toBeNull();
  });

  it("drops the other users' drafts when someone else signs in, and nothing else", () => {
    const storage = new MemoryStorage();
    saveDraft(storage, "alice", typed);
    saveDraft(storage, "bob", typed);
    storage.setItem("tsp.signedIn", "1");
    forgetOthers(storage, "bob");
    expect(loadDraft(storage, "alice")).toBeNull();
    expect(loadDraft(storage, "bob")).toEqual(typed);
    expect(storage.getItem("tsp.signedIn")).toBe("1");
  });

  it("keeps users apart whatever their sub contains", () => {
    expect(draftKey("a.b")).not.toBe(draftKey("a%2Eb"));
    expect(draftKey("auth0|alice")).toBe("tsp.draft.auth0%7Calice");
  });

  it("forgets an empty form and a cleared draft", () => {
    const storage = new MemoryStorage();
    saveDraft(storage, "alice", typed);
    saveDraft(storage, "alice", { ...typed, project: "", hours: "", notes: "" });
    expect(storage.items.size).toBe(0);
    saveDraft(storage, "alice", typed);
    clearDraft(storage, "alice");
    expect(loadDraft(storage, "alice")).toBeNull();
  });

  it("stores the four fields and a pending create's key, nothing else", () => {
    const storage = new MemoryStorage();
    saveDraft(storage, "alice", { ...typed, accessToken: "eyJ.secret" } as Draft);
    const stored = JSON.parse(storage.getItem(draftKey("alice")) ?? "{}") as Record<string, unknown>;
    expect(Object.keys(stored).sort()).toEqual(["date", "hours", "notes", "pending", "project", "sub"]);
    expect(stored.pending).toBeNull();
  });

  it("gives back the key of a create whose outcome is unknown, with the body it was sent with", () => {
    const storage = new MemoryStorage();
    const pending = { key: "0b7f7a4e-54a4-4c43-9d4e-2b1e8a4c1f00", body: '{"project":"Apollo"}' };
    saveDraft(storage, "alice", { ...typed, pending });
    expect(loadDraft(storage, "alice")).toEqual({ ...typed, pending });
    expect(loadDraft(storage, "bob")).toBeNull();
    for (const odd of [{ key: "", body: "{}" }, { key: "a b", body: "{}" }, { key: "k", body: 3 }, "k", 7]) {
      storage.setItem(draftKey("alice"), JSON.stringify({ sub: "alice", ...typed, pending: odd }));
      expect(loadDraft(storage, "alice")).toEqual(typed); // the fields without a key
    }
  });

  it("refuses what the form did not write", () => {
    const storage = new MemoryStorage();
    for (const raw of [
      "not json",
      "null",
      "[]",
      JSON.stringify({ sub: "alice", date: "x", project: 3, hours: "1", notes: "" }),
      JSON.stringify({ sub: "alice", date: "x", project: "p".repeat(5000), hours: "1", notes: "" }),
    ]) {
      storage.setItem(draftKey("alice"), raw);
      expect(loadDraft(storage, "alice")).toBeNull();
    }
  });

  it("survives a storage that refuses", () => {
    const refusing: DraftStorage = {
      length: 1,
      key: () => {
        throw new Error("SecurityError");
      },
      getItem: () => {
        throw new Error("SecurityError");
      },
      setItem: () => {
        throw new Error("QuotaExceededError");
      },
      removeItem: () => {
        throw new Error("SecurityError");
      },
    };
    expect(() => saveDraft(refusing, "alice", typed)).not.toThrow();
    expect(loadDraft(refusing, "alice")).toBeNull();
    expect(() => clearDraft(refusing, "alice")).not.toThrow();
    expect(() => forgetOthers(refusing, "alice")).not.toThrow();
    expect(() => saveComment(refusing, "bob", "e1", "why")).not.toThrow();
    expect(loadComments(refusing, "bob")).toEqual({});
    expect(() => clearDrafts(refusing, "bob")).not.toThrow();
  });
});

const ENTRY = "0b5c6f9e-3d2a-4c1b-8e7f-6a5b4c3d2e1f";
const OTHER = "7d1e5b0a-2c4f-4e8a-9b6d-3f2a1c0e9d8b";

describe("approval comments", () => {
  it("gives each entry's comment back to the approver who typed it, and to no one else", () => {
    const storage = new MemoryStorage();
    saveComment(storage, "bob", ENTRY, "Split the hours, please");
    saveComment(storage, "bob", OTHER, "Fine");
    expect(loadComments(storage, "bob")).toEqual({ [ENTRY]: "Split the hours, please", [OTHER]: "Fine" });
    expect(loadComments(storage, "dave")).toEqual({});
    storage.setItem(commentsKey("dave"), storage.getItem(commentsKey("bob")) ?? "");
    expect(loadComments(storage, "dave")).toEqual({});
  });

  it("forgets a comment once its decision is recorded, or when it is emptied", () => {
    const storage = new MemoryStorage();
    saveComment(storage, "bob", ENTRY, "Split the hours, please");
    saveComment(storage, "bob", OTHER, "Fine");
    clearComment(storage, "bob", ENTRY);
    expect(loadComments(storage, "bob")).toEqual({ [OTHER]: "Fine" });
    saveComment(storage, "bob", OTHER, "  ");
    expect(storage.items.size).toBe(0);
  });

  it("remembers a decision recorded but not applied yet, with its comment, until the comment is done with", () => {
    const storage = new MemoryStorage();
    saveComment(storage, "bob", ENTRY, "Matches the plan");
    markRecorded(storage, "bob", ENTRY, "approved");
    markRecorded(storage, "bob", OTHER, "rejected"); // recorded with no comment kept
    saveComment(storage, "bob", ENTRY, "Matches the plan"); // the card saving its comment again on a reload
    expect(loadRecorded(storage, "bob")).toEqual({ [ENTRY]: "approved", [OTHER]: "rejected" });
    expect(loadComments(storage, "bob")).toEqual({ [ENTRY]: "Matches the plan" });
    expect(loadRecorded(storage, "dave")).toEqual({});
    clearComment(storage, "bob", ENTRY); // seen applied
    expect(loadRecorded(storage, "bob")).toEqual({ [OTHER]: "rejected" });
    expect(loadComments(storage, "bob")).toEqual({});
    clearComment(storage, "bob", OTHER);
    expect(storage.items.size).toBe(0);
    storage.setItem(
      commentsKey("bob"),
      JSON.stringify({ sub: "bob", recorded: { [ENTRY]: "maybe", "a b": "approved" } }),
    );
    expect(loadRecorded(storage, "bob")).toEqual({});
  });

  it("lives beside the entry draft: signing out drops both, another user signing in drops the others'", () => {
    const storage = new MemoryStorage();
    saveDraft(storage, "bob", typed);
    saveComment(storage, "bob", ENTRY, "why");
    saveComment(storage, "alice", ENTRY, "hers");
    forgetOthers(storage, "bob");
    expect(loadComments(storage, "alice")).toEqual({});
    expect(loadComments(storage, "bob")).toEqual({ [ENTRY]: "why" });
    expect(loadDraft(storage, "bob")).toEqual(typed);
    clearDraft(storage, "bob"); // the entry saved: the comments stay
    expect(loadComments(storage, "bob")).toEqual({ [ENTRY]: "why" });
    clearDrafts(storage, "bob");
    expect(storage.items.size).toBe(0);
  });

  it("keeps the newest comments only, and only what it writes", () => {
    const storage = new MemoryStorage();
    for (let index = 0; index <= MAX_COMMENTS; index++) saveComment(storage, "bob", `e-${index}`, `c${index}`);
    const kept = loadComments(storage, "bob");
    expect(Object.keys(kept)).toHaveLength(MAX_COMMENTS);
    expect(kept["e-0"]).toBeUndefined();
    expect(kept[`e-${MAX_COMMENTS}`]).toBe(`c${MAX_COMMENTS}`);
    saveComment(storage, "bob", "not an id!", "x");
    expect(loadComments(storage, "bob")["not an id!"]).toBeUndefined();
    storage.setItem(
      commentsKey("bob"),
      JSON.stringify({ sub: "bob", comments: { [ENTRY]: "ok", [OTHER]: 3, "a b": "x", e2: "c".repeat(5000) } }),
    );
    expect(loadComments(storage, "bob")).toEqual({ [ENTRY]: "ok" });
    for (const raw of ["not json", "[]", JSON.stringify({ sub: "bob", comments: ["x"] })]) {
      storage.setItem(commentsKey("bob"), raw);
      expect(loadComments(storage, "bob")).toEqual({});
    }
  });

  it("stores the approver and the comments only", () => {
    const storage = new MemoryStorage();
    saveComment(storage, "bob", ENTRY, "why");
    const stored = JSON.parse(storage.getItem(commentsKey("bob")) ?? "{}") as Record<string, unknown>;
    expect(Object.keys(stored).sort()).toEqual(["comments", "sub"]);
  });
});
