import { describe, expect, it } from "vitest";
import { backstop, characters, COMMENT_MAX, NOTES_MAX, PROJECT_MAX, tooLong } from "./limits";

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
