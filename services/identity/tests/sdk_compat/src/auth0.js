// Auth0's own SPA SDK, configured exactly as against an Auth0 tenant, pointed at the identity service.
import { Auth0Client } from "@auth0/auth0-spa-js";

const cfg = window.HARNESS;
const here = window.location.origin + window.location.pathname;
const client = new Auth0Client({
  domain: cfg.issuer.replace(/\/$/, ""),
  clientId: cfg.clientId,
  useRefreshTokens: Boolean(cfg.useRefreshTokens),
  authorizationParams: {
    redirect_uri: here,
    audience: cfg.audience,
    scope: "openid profile email read:timesheets",
  },
});

window.harness = {
  login: () => client.loginWithRedirect(),
  callback: async () => (await client.handleRedirectCallback()).appState ?? null,
  user: () => client.getUser(),
  claims: () => client.getIdTokenClaims(),
  token: (options) => client.getTokenSilently(options),
  logout: () => client.logout({ logoutParams: { returnTo: here } }),
};
window.harnessReady = true;
