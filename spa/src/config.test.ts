import { describe, expect, it } from "vitest";
import { DEFAULT_REQUEST_TIMEOUT_MS } from "./api/client";
import { ConfigError, DEFAULTS, resolveConfig, safeReturnPath } from "./config";

const at = (pathname: string, search = "") => ({ origin: "http://localhost:8080", pathname, search });

describe("resolveConfig", () => {
  it("uses the served values and derives redirect URIs from the page origin", () => {
    const config = resolveConfig(
      {
        issuer: "https://tenant.auth0.com",
        clientId: "abc",
        audience: "https://api",
        flow: "implicit",
        scopes: "openid  read:timesheets",
      },
      at("/"),
    );
    expect(config).toMatchObject({
      issuer: "https://tenant.auth0.com/",
      clientId: "abc",
      audience: "https://api",
      flow: "implicit",
      scopes: "openid read:timesheets",
      apiBase: "/api",
      basePath: "/",
      redirectUri: "http://localhost:8080/callback",
      postLogoutRedirectUri: "http://localhost:8080/",
    });
  });

  it("falls back to the local-run defaults", () => {
    const config = resolveConfig({}, at("/audit"));
    expect(config.issuer).toBe("http://localhost:9000/");
    expect(config.clientId).toBe("timesheets-spa");
    expect(config.flow).toBe("code");
    expect(config.scopes.split(" ")).toContain("read:audit");
  });

  it("takes the gateway's request timeout, within bounds, or a default above the gateway's own", () => {
    expect(resolveConfig({ requestTimeoutMs: 22_250 }, at("/")).requestTimeoutMs).toBe(22_250);
    expect(resolveConfig({}, at("/")).requestTimeoutMs).toBe(DEFAULTS.requestTimeoutMs);
    expect(DEFAULTS.requestTimeoutMs).toBe(DEFAULT_REQUEST_TIMEOUT_MS);
    for (const bad of [0, 999, 900_001, 1.5e3 + 0.5, "45000", -1])
      expect(() => resolveConfig({ requestTimeoutMs: bad }, at("/"))).toThrow(ConfigError);
  });

  it("acts as partner-spa under /partner/", () => {
    const config = resolveConfig({ clientId: "timesheets-spa" }, at("/partner/callback"));
    expect(config.clientId).toBe("partner-spa");
    expect(config.redirectUri).toBe("http://localhost:8080/partner/callback");
    expect(config.postLogoutRedirectUri).toBe("http://localhost:8080/partner/");
  });

  it("lets ?flow= override, then the tab's stored choice, then the server", () => {
    expect(resolveConfig({ flow: "code" }, at("/", "?flow=implicit")).flow).toBe("implicit");
    expect(resolveConfig({ flow: "code" }, at("/callback"), "implicit").flow).toBe("implicit");
    expect(resolveConfig({ flow: "implicit" }, at("/")).flow).toBe("implicit");
  });

  it("refuses unknown flows and non-URL issuers", () => {
    expect(() => resolveConfig({}, at("/", "?flow=password"))).toThrow(ConfigError);
    expect(() => resolveConfig({ issuer: "javascript:alert(1)" }, at("/"))).toThrow(ConfigError);
    expect(() => resolveConfig({ issuer: 42 }, at("/"))).toThrow(ConfigError);
  });
});

describe("safeReturnPath", () => {
  it("keeps only paths inside the app", () => {
    expect(safeReturnPath("/approvals", "/")).toBe("/approvals");
    expect(safeReturnPath("//evil.example/x", "/")).toBe("/");
    expect(safeReturnPath("https://evil.example/", "/")).toBe("/");
    expect(safeReturnPath("/approvals", "/partner/")).toBe("/partner/");
    expect(safeReturnPath("/callback", "/")).toBe("/");
    expect(safeReturnPath(undefined, "/partner/")).toBe("/partner/");
  });
});
