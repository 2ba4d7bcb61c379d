import type { ComponentChildren, VNode } from "preact";
import { describe, expect, it } from "vitest";
import { formatDay, formatHours, formatLongDate } from "../lib/week";
import { commentNeeded, decidedToast, decisionAction } from "./Approvals";
import { Banner, Field } from "./common";
import { addedToast, deletedToast, deleteLabel } from "./Timesheets";

/** What a browser's textContent of the rendered children would be (what Playwright's has_text reads). */
function textOf(children: ComponentChildren): string {
  if (children === null || children === undefined || typeof children === "boolean") return "";
  if (typeof children === "string" || typeof children === "number" || typeof children === "bigint")
    return String(children);
  if (Array.isArray(children)) return children.map(textOf).join("");
  const node = children as VNode<{ children?: ComponentChildren }>;
  return textOf(node.props.children);
}

/** The texts the children put inside <bdi> elements, in order. */
function isolatedParts(children: ComponentChildren): string[] {
  if (Array.isArray(children)) return children.flatMap(isolatedParts);
  if (children === null || typeof children !== "object") return [];
  const node = children as VNode<{ children?: ComponentChildren }>;
  return node.type === "bdi" ? [textOf(node.props.children)] : isolatedParts(node.props.children);
}

const OVERRIDE = "Apollo \u202egnp.exe"; // an override stored before the services refused them

describe("people's text inside toasts and labels stays inside its own direction", () => {
  it("isolates the owner and the project in a decision's toast, its text unchanged", () => {
    const shown = decidedToast("approved", "Alice\u202eecila", OVERRIDE);
    expect(isolatedParts(shown)).toEqual(["Alice\u202eecila", OVERRIDE]);
    expect(textOf(decidedToast("rejected", "Alice Employee", "Apollo"))).toBe("Rejected Alice Employee's Apollo entry");
    expect(textOf(shown)).toBe(`Approved Alice\u202eecila's ${OVERRIDE} entry`);
  });

  it("isolates the project in the added and deleted toasts, their text unchanged", () => {
    const added = addedToast(OVERRIDE, formatHours(7.5), "2026-11-23");
    expect(isolatedParts(added)).toEqual([OVERRIDE]);
    expect(textOf(added)).toBe(`Added ${OVERRIDE}, 7.5 h on ${formatDay("2026-11-23")}`);
    const deleted = deletedToast({ project: OVERRIDE, date: "2026-11-23" });
    expect(isolatedParts(deleted)).toEqual([OVERRIDE]);
    expect(textOf(deleted)).toBe(`Deleted ${OVERRIDE} on ${formatDay("2026-11-23")}`);
  });

  it("isolates the project in the delete button's name with U+2068 … U+2069 (an attribute holds no markup)", () => {
    const entry = { project: OVERRIDE, hours: 7.5, date: "2026-11-23" };
    expect(deleteLabel(entry)).toBe(`Delete \u2068${OVERRIDE}\u2069, 7.5 h on ${formatLongDate("2026-11-23")}`);
    expect(deleteLabel(entry)).toMatch(/^Delete/); // what the browser tests find it by
  });

  it("isolates the owner in the rejection's missing-comment message", () => {
    expect(commentNeeded("Alice\u202eecila")).toBe(
      "Say why you're rejecting it, so \u2068Alice\u202eecila\u2069 can fix it.",
    );
    expect(commentNeeded("Bob")).toMatch(/^Say why you're rejecting it/);
  });

  it("draws a message's isolated parts in <bdi>, its text without the isolate characters", () => {
    const text = `You can't reject ${decisionAction("reject", "Alice\u202eecila", OVERRIDE).slice("reject ".length)}.`;
    const banner = Banner({ message: { kind: "permission", title: "You don't have permission", text } });
    expect(isolatedParts(banner)).toEqual(["Alice\u202eecila", OVERRIDE]);
    expect(textOf(banner)).toContain(`You can't reject Alice\u202eecila's ${OVERRIDE} entry.`);
    expect(textOf(banner)).not.toMatch(/[\u2068\u2069]/);
    const field = Field({ id: "c", label: "Comment", error: commentNeeded("Alice Employee"), children: null });
    expect(isolatedParts(field)).toEqual(["Alice Employee"]);
    expect(textOf(field)).toContain("Say why you're rejecting it, so Alice Employee can fix it.");
  });

  it("isolates the owner and the project in what a failed decision was", () => {
    expect(decisionAction("approve", "Alice Employee", "Apollo")).toBe(
      "approve \u2068Alice Employee\u2069's \u2068Apollo\u2069 entry",
    );
  });
});
