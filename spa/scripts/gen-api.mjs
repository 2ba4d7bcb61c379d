// Generates src/api/schema.d.ts, the TypeScript types of the API, from the gateway's published
// OpenAPI document (GET /api/openapi.json) with openapi-typescript.
//
//   npm run gen:api                                  # the document as this checkout publishes it
//   npm run gen:api -- --from http://localhost:8080/api/openapi.json   # or as a running gateway does
//   npm run gen:api -- --out /tmp/schema.d.ts        # somewhere else (the staleness test does this)
//
// Without --from, the document comes from `python -m gateway.openapi` (the generator the gateway
// serves from), run with $PYTHON or the repository's .venv. The output is formatted with the SPA's
// prettier settings, so regenerating an unchanged API changes no byte.
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import openapiTS, { astToString } from "openapi-typescript";
import * as prettier from "prettier";

const spa = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const repo = resolve(spa, "..");

function option(name, fallback) {
  const at = process.argv.indexOf(name);
  return at >= 0 && process.argv[at + 1] ? process.argv[at + 1] : fallback;
}

async function publishedDocument(from) {
  if (from && /^https?:\/\//.test(from)) {
    const response = await fetch(from);
    if (!response.ok) throw new Error(`${from} answered ${response.status}`);
    return await response.json();
  }
  if (from) return JSON.parse(readFileSync(from, "utf8"));
  const venv = resolve(repo, ".venv", "bin", "python");
  const python = process.env.PYTHON || (existsSync(venv) ? venv : "python3");
  const text = execFileSync(python, ["-m", "gateway.openapi"], { cwd: repo, encoding: "utf8" });
  return JSON.parse(text);
}

const HEADER = `/**
 * The API's types, generated from the gateway's published OpenAPI document (GET /api/openapi.json)
 * by openapi-typescript: do not edit. Regenerate with \`npm run gen:api\`; a test in \`make test\`
 * fails when this file is stale. The hand-written helpers are in ./types.ts.
 */

`;

const document = await publishedDocument(option("--from", ""));
const ast = await openapiTS(document, { alphabetize: false });
const config = (await prettier.resolveConfig(resolve(spa, "src", "api", "schema.d.ts"))) ?? {};
const text = await prettier.format(HEADER + astToString(ast), { ...config, parser: "typescript" });
const out = resolve(option("--out", resolve(spa, "src", "api", "schema.d.ts")));
writeFileSync(out, text);
console.log(`wrote ${out}`);
