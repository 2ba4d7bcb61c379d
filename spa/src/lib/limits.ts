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
