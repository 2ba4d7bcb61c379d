/** Test helper: run code as if the browser were in another time zone. */

/** `run` with the process in time zone `name` (Node reads `TZ` again when it changes). */
export function inZone<T>(name: string, run: () => T): T {
  const saved = process.env.TZ;
  process.env.TZ = name;
  try {
    return run();
  } finally {
    if (saved === undefined) delete process.env.TZ;
    else process.env.TZ = saved;
  }
}
