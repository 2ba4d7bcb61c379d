import { describe, expect, it } from "vitest";
import { backstop, bidiInName, bidiInText, characters, COMMENT_MAX, NOTES_MAX, PROJECT_MAX, tooLong } from "./limits";

describe("text limits", () => {
  it("counts code points, as the services do, not UTF-16 units", () => {
    expect(characters("Apollo")).toBe(6);
    expect(characters("😀")).toBe(1); // two UTF-16 units
    expect(characters("𠀀a")).toBe(2); // CJK Extension B
    expect(characters("e\u0301")).toBe(2); // a combining accent is a character of its own
  });

  it("takes a name of the limit's length in any script and refuses one more", () => {
    for (const char of ["x", "é", "😀", "𠀀"]) {
      const name = char.repeat(PROJECT_MAX);
      expect(tooLong(name, PROJECT_MAX)).toBeNull();
      expect(name.length).toBeLessThanOrEqual(backstop(PROJECT_MAX));
      expect(tooLong(name + char, PROJECT_MAX)).toBe(
        `At most ${PROJECT_MAX} characters (this has ${PROJECT_MAX + 1}).`,
      );
    }
  });

  it("states the notes' and comments' limits as the contract does", () => {
    expect(tooLong("😀".repeat(NOTES_MAX), NOTES_MAX)).toBeNull();
    expect(tooLong("😀".repeat(COMMENT_MAX), COMMENT_MAX)).toBeNull();
    expect(tooLong("x".repeat(COMMENT_MAX + 1), COMMENT_MAX)).not.toBeNull();
  });
});

describe("bidirectional controls", () => {
  it("refuses every embedding, override and isolate in a name, naming it", () => {
    expect(bidiInName("Store \u202egnp.exe")).toBe(
      "Remove U+202E (RIGHT-TO-LEFT OVERRIDE): it makes text display in another order than it is written (right-to-left letters need none).",
    );
    for (const char of "\u202a\u202b\u202c\u202d\u2066\u2067\u2068\u2069") {
      expect(bidiInName(`a${char}b`)).not.toBeNull();
    }
  });

  it("keeps right-to-left letters and the marks", () => {
    for (const text of ["\u05e9\u05dc\u05d5\u05dd", "\u0645\u0634\u0631\u0648\u0639 1", "a\u200fb\u200e\u061c"]) {
      expect(bidiInName(text)).toBeNull();
      expect(bidiInText(text)).toBeNull();
    }
  });

  it("takes an isolate in free text closed on its line, not nested, as the services do", () => {
    expect(bidiInText("x \u2067\u05e9\u05dc\u05d5\u05dd\u2069 y")).toBeNull();
    expect(bidiInText("\u2066a\u2069\u2068b\u2069\n\u2067c\u2069")).toBeNull();
    expect(bidiInText("fine \u202egnp.exe")).toContain("U+202E (RIGHT-TO-LEFT OVERRIDE)");
    expect(bidiInText("open \u2067isolate")).toBe(
      "Close U+2067 (RIGHT-TO-LEFT ISOLATE) with U+2069 on its line, or remove it.",
    );
    expect(bidiInText("\u2067a\nb\u2069")).not.toBeNull();
    expect(bidiInText("\u2067a\u2029b\u2069")).not.toBeNull();
    expect(bidiInText("\u2066a\u2067b\u2069\u2069")).toContain("inside another");
    expect(bidiInText("stray\u2069")).toBe("Remove U+2069 (POP DIRECTIONAL ISOLATE): it closes no isolate.");
  });
});
