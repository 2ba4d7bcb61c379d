/** Unit tests for the SPA's pure logic (config, week maths, error messages, token checks). */
import { defineConfig } from "vitest/config";

export default defineConfig({
  esbuild: { jsx: "automatic", jsxImportSource: "preact" },
  test: { environment: "node", include: ["src/**/*.test.ts"] },
});
