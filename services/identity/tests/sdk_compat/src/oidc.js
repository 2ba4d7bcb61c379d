// oidc-client-ts with discovery from the issuer, code + PKCE, iframe silent renew, RP-initiated logout.
import { UserManager } from "oidc-client-ts";

const cfg = window.HARNESS;
const base = window.location.origin + "/oidc/";
const manager = new UserManager({
  authority: cfg.issuer,
  client_id: cfg.clientId,
  redirect_uri: base,
  silent_redirect_uri: base + "silent.html",
  post_logout_redirect_uri: base,
  response_type: "code",
  scope: "openid profile email read:timesheets",
  extraQueryParams: { audience: cfg.audience },
  loadUserInfo: true,
  automaticSilentRenew: false,
});

const summary = (user) => user && {
  profile: user.profile,
  access_token: user.access_token,
  id_token: user.id_token,
  scope: user.scope,
  expires_in: user.expires_in,
};

window.harness = {
  login: () => manager.signinRedirect(),
  callback: async () => summary(await manager.signinRedirectCallback()),
  silent: async () => summary(await manager.signinSilent()),
  user: async () => summary(await manager.getUser()),
  logout: () => manager.signoutRedirect(),
  silentCallback: () => manager.signinSilentCallback(),
};
window.harnessReady = true;
if (window.location.pathname.endsWith("/silent.html")) {
  manager.signinSilentCallback();
}
