import { describe, expect, it } from "vitest";
import { grantedScopes, logoutUrl, profileFrom, renewAt } from "./tokens";

function fakeJwt(claims: Record<string, unknown>): string {
  const enc = (value: unknown) => Buffer.from(JSON.stringify(value)).toString("base64url");
  return `${enc({ alg: "RS256" })}.${enc(claims)}.c2ln`;
}

describe("tokens", () => {
  it("takes granted scopes from the access token, Auth0 permissions included", () => {
    expect(
      [...grantedScopes(fakeJwt({ scope: "openid read:timesheets", permissions: ["approve:timesheets"] }))].sort(),
    ).toEqual(["approve:timesheets", "openid", "read:timesheets"]);
    expect([...grantedScopes("opaque-token", "read:audit openid")].sort()).toEqual(["openid", "read:audit"]);
    expect(grantedScopes(fakeJwt({ scp: ["read:audit"] }), "ignored").has("ignored")).toBe(false);
  });

  it("builds RP-initiated logout, or Auth0's /v2/logout", () => {
    const oidc = new URL(
      logoutUrl(
        { issuer: "http://localhost:9000/", end_session_endpoint: "http://localhost:9000/oidc/logout" },
        { clientId: "c", idToken: "id.tok.en", returnTo: "http://localhost:8080/" },
      ),
    );
    expect(oidc.pathname).toBe("/oidc/logout");
    expect(oidc.searchParams.get("post_logout_redirect_uri")).toBe("http://localhost:8080/");
    expect(oidc.searchParams.get("id_token_hint")).toBe("id.tok.en");
    const auth0 = new URL(
      logoutUrl({ issuer: "https://t.auth0.com/" }, { clientId: "c", idToken: null, returnTo: "http://x/" }),
    );
    expect(auth0.toString()).toBe("https://t.auth0.com/v2/logout?client_id=c&returnTo=http%3A%2F%2Fx%2F");
  });

  it("renews a fifth of the lifetime early, between 5 and 60 seconds", () => {
    expect(renewAt(0, 3600)).toBe(3540);
    expect(renewAt(0, 100)).toBe(80);
    expect(renewAt(0, 10)).toBe(5);
    expect(renewAt(50, 40)).toBe(50);
  });

  it("reads a display name", () => {
    expect(profileFrom({ sub: "u1", email: "a@x" })).toEqual({ sub: "u1", name: "a@x", email: "a@x" });
    expect(profileFrom({ sub: "u1", name: "Alice", preferred_username: "alice" }).name).toBe("Alice");
  });
});
