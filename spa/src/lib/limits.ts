/**
 * How long a text field may be, counted as the services count it.
 *
 * The limits are the contract's (`svckit/contracts`: `maxLength` in the published document, pydantic's
 * `max_length`, the database's `char_length` checks), and all three count characters — Unicode code
 * points. A browser's `maxlength` counts UTF-16 code units instead, so an emoji or a character outside
 * the Basic Multilingual Plane counted twice: the form stopped a project name at 50 emoji where the
 * service takes 100, and cut a longer paste short without a word. The fields' `maxlength` is therefore
 * only a backstop at twice the limit (no text within the limit is longer in UTF-16), and the form says
 * when a text is over the limit. `tests/contracts/test_spa_limits.py` holds these numbers to the
 * contract's.
 */

export const PROJECT_MAX = 100;
export const NOTES_MAX = 2000;
export const COMMENT_MAX = 2000;

/** The `maxlength` of a field whose limit is `max` characters: never shorter than a valid text. */
export const backstop = (max: number): number => 2 * max;

/** The number of characters (code points) in `text`, as the services count them. */
export function characters(text: string): number {
  let count = 0;
  for (const _ of text) count++; // a string iterates by code point
  return count;
}

/** A message for a text over `max` characters, or null when it fits. */
export function tooLong(text: string, max: number): string | null {
  const count = characters(text);
  return count > max ? `At most ${max} characters (this has ${count}).` : null;
}

/**
 * Bidirectional controls ("Trojan Source"), as the services refuse them (`svckit.contracts.fields`):
 * the embeddings and overrides U+202A–U+202E make one person's text display reversed in another's view
 * (an approver's queue, the audit trail), and an isolate U+2066–U+2068 left open, or a U+2069 closing
 * nothing, reorders what is drawn after it. A name holds none; free text (notes, comments) no embedding
 * or override, and an isolate only closed by U+2069 on its own line, not nested. Right-to-left letters
 * need none of them, nor do the marks U+200E, U+200F and U+061C, which stay allowed.
 */
const BIDI_NAMES: Record<string, string> = {
  "\u202a": "LEFT-TO-RIGHT EMBEDDING",
  "\u202b": "RIGHT-TO-LEFT EMBEDDING",
  "\u202c": "POP DIRECTIONAL FORMATTING",
  "\u202d": "LEFT-TO-RIGHT OVERRIDE",
  "\u202e": "RIGHT-TO-LEFT OVERRIDE",
  "\u2066": "LEFT-TO-RIGHT ISOLATE",
  "\u2067": "RIGHT-TO-LEFT ISOLATE",
  "\u2068": "FIRST STRONG ISOLATE",
  "\u2069": "POP DIRECTIONAL ISOLATE",
};
const PARAGRAPH_ENDS = "\n\r\u2029";

/** `U+202E (RIGHT-TO-LEFT OVERRIDE)`, as the services' messages name a character. */
const named = (char: string): string =>
  `U+${char.codePointAt(0)!.toString(16).toUpperCase().padStart(4, "0")} (${BIDI_NAMES[char]})`;

const reorders = (char: string): string =>
  `Remove ${named(char)}: it makes text display in another order than it is written (right-to-left letters need none).`;

/** A message for a name (a project) holding a bidirectional control, or null. */
export function bidiInName(text: string): string | null {
  for (const char of text) if (BIDI_NAMES[char]) return reorders(char);
  return null;
}

/** A message for free text (notes, a comment) whose bidirectional controls the services refuse, or null. */
export function bidiInText(text: string): string | null {
  let opened: string | null = null;
  for (const char of text) {
    if (char === "\u2066" || char === "\u2067" || char === "\u2068") {
      if (opened) return `Remove ${named(char)}: it opens an isolate inside another (${named(opened)}).`;
      opened = char;
    } else if (char === "\u2069") {
      if (!opened) return `Remove ${named(char)}: it closes no isolate.`;
      opened = null;
    } else if (PARAGRAPH_ENDS.includes(char)) {
      if (opened) break;
    } else if (BIDI_NAMES[char]) {
      return reorders(char);
    }
  }
  return opened ? `Close ${named(opened)} with U+2069 on its line, or remove it.` : null;
}

/**
 * People's text inside a string (an attribute, a message) between U+2068 FIRST STRONG ISOLATE and
 * U+2069 POP DIRECTIONAL ISOLATE: a right-to-left name cannot reorder the words around it, and a
 * bidirectional override stored before the services refused them (old rows are not rewritten)
 * reverses only its own text, not the rest of the line. In markup, `<bdi>` does the same and leaves
 * the text as it is (what a test or a copy reads).
 */
export const isolated = (value: string): string => `\u2068${value}\u2069`;
