// Auth0's own SPA SDK, configured exactly as against an Auth0 tenant, pointed at the identity service.
// cfg.useDpop: the SDK's DPoP (RFC 9449): bound tokens, and API calls through its fetcher (proof,
// DPoP-Nonce retry) to cfg.apiBase.
import { Auth0Client } from "@auth0/auth0-spa-js";

const cfg = window.HARNESS;
const here = window.location.origin + window.location.pathname;
const client = new Auth0Client({
  domain: cfg.issuer.replace(/\/$/, ""),
  clientId: cfg.clientId,
  useRefreshTokens: Boolean(cfg.useRefreshTokens),
  useDpop: Boolean(cfg.useDpop),
  authorizationParams: {
    redirect_uri: here,
    audience: cfg.audience,
    scope: "openid profile email read:timesheets",
  },
});
const fetcher = client.createFetcher({ baseUrl: cfg.apiBase, dpopNonceId: "gateway" });

window.harness = {
  login: () => client.loginWithRedirect(),
  callback: async () => (await client.handleRedirectCallback()).appState ?? null,
  user: () => client.getUser(),
  claims: () => client.getIdTokenClaims(),
  token: (options) => client.getTokenSilently(options),
  tokenType: async () => (await client.getTokenSilently({ detailedResponse: true })).token_type ?? null,
  api: async (path) => {
    const response = await fetcher.fetchWithAuth(path);
    return { status: response.status, body: await response.text() };
  },
  logout: () => client.logout({ logoutParams: { returnTo: here } }),
};
window.harnessReady = true;
