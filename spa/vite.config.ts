/**
 * Vite build for the SPA. Assets are referenced from the site root (`/assets/…`) so that the same build
 * works when the gateway serves it at `/` and at `/partner/` (the third-party client demo).
 *
 * `vite` / `vite preview` also answer `/config.json` from the same environment variables the gateway
 * reads (SPA_AUTH_ISSUER, SPA_CLIENT_ID, SPA_AUDIENCE, SPA_AUTH_FLOW, SPA_SCOPES), so the app can be
 * developed without the gateway. The production build contains no configuration at all.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { defineConfig, type Plugin } from "vite";

function runtimeConfig(): Record<string, string> {
  const env = process.env;
  return {
    issuer: env.SPA_AUTH_ISSUER ?? "http://localhost:9000/",
    clientId: env.SPA_CLIENT_ID ?? "timesheets-spa",
    audience: env.SPA_AUDIENCE ?? env.OIDC_AUDIENCE ?? "https://timesheets.abc.example/api",
    flow: env.SPA_AUTH_FLOW ?? "code",
    scopes:
      env.SPA_SCOPES ??
      "openid profile email read:timesheets create:timesheets delete:timesheets approve:timesheets read:audit",
    apiBase: "/api",
  };
}

function configJson(): Plugin {
  const handler = (req: IncomingMessage, res: ServerResponse, next: () => void): void => {
    if (req.url !== "/config.json") return next();
    res.setHeader("content-type", "application/json");
    res.setHeader("cache-control", "no-store");
    res.end(JSON.stringify(runtimeConfig()));
  };
  return {
    name: "timesheets-runtime-config",
    configureServer: (server) => void server.middlewares.use(handler),
    configurePreviewServer: (server) => void server.middlewares.use(handler),
  };
}

export default defineConfig({
  base: "/",
  plugins: [configJson()],
  esbuild: { jsx: "automatic", jsxImportSource: "preact" },
  build: { target: "es2022", sourcemap: true, outDir: "dist", emptyOutDir: true },
  server: { port: 5173, strictPort: true },
});
