// oidc-client-ts with discovery from the issuer, code + PKCE, iframe silent renew, RP-initiated logout.
// cfg.dpop: the library's DPoP settings (key in IndexedDB, dpop_jkt on the authorization request) and
// API calls to cfg.apiBase with manager.dpopProof(). The library (3.5) calls /userinfo with Bearer
// only, which a provider must refuse for a DPoP-bound token: with DPoP the profile comes from the ID
// token (loadUserInfo off).
import { IndexedDbDPoPStore, UserManager } from "oidc-client-ts";

const cfg = window.HARNESS;
const base = window.location.origin + window.location.pathname.replace(/silent\.html$/, "");
const manager = new UserManager({
  authority: cfg.issuer,
  client_id: cfg.clientId,
  redirect_uri: base,
  silent_redirect_uri: base + "silent.html",
  post_logout_redirect_uri: base,
  response_type: "code",
  scope: "openid profile email read:timesheets",
  extraQueryParams: { audience: cfg.audience },
  loadUserInfo: !cfg.dpop,
  automaticSilentRenew: false,
  ...(cfg.dpop ? { dpop: { store: new IndexedDbDPoPStore(), bind_authorization_code: true } } : {}),
});

const summary = (user) => user && {
  profile: user.profile,
  access_token: user.access_token,
  token_type: user.token_type,
  id_token: user.id_token,
  scope: user.scope,
  expires_in: user.expires_in,
};

// The API's DPoP-Nonce (RFC 9449 §9): kept from every answer, and a use_dpop_nonce refusal retried once.
let apiNonce;
async function api(path) {
  const user = await manager.getUser();
  const url = new URL(cfg.apiBase + path, window.location.href);
  const send = async () => {
    const proof = await manager.dpopProof(url.origin + url.pathname, user, "GET", apiNonce);
    const headers = { authorization: `${proof ? "DPoP" : "Bearer"} ${user.access_token}` };
    if (proof) headers.dpop = proof;
    const response = await fetch(url, { headers });
    apiNonce = response.headers.get("dpop-nonce") ?? apiNonce;
    return response;
  };
  let response = await send();
  if (response.status === 401 && /use_dpop_nonce/.test(response.headers.get("www-authenticate") ?? "")) {
    response = await send();
  }
  return { status: response.status, body: await response.text() };
}

window.harness = {
  login: () => manager.signinRedirect(),
  callback: async () => summary(await manager.signinRedirectCallback()),
  silent: async () => summary(await manager.signinSilent()),
  user: async () => summary(await manager.getUser()),
  api,
  logout: () => manager.signoutRedirect(),
  silentCallback: () => manager.signinSilentCallback(),
};
window.harnessReady = true;
if (window.location.pathname.endsWith("/silent.html")) {
  manager.signinSilentCallback();
}
