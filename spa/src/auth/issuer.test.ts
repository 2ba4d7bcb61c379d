import { describe, expect, it } from "vitest";
import { checkResponseIssuer } from "./issuer";
import { AuthError, type Discovery } from "./types";

const base: Discovery = {
  issuer: "https://id.example.com/",
  authorization_endpoint: "https://id.example.com/authorize",
  token_endpoint: "https://id.example.com/oauth/token",
  jwks_uri: "https://id.example.com/.well-known/jwks.json",
};
const announcing: Discovery = { ...base, authorization_response_iss_parameter_supported: true };

function code(error: () => void): string | null {
  try {
    error();
    return null;
  } catch (caught) {
    return caught instanceof AuthError ? caught.code : "other";
  }
}

describe("the authorization response's issuer (RFC 9207)", () => {
  it("passes an answer naming this app's provider, code or error alike", () => {
    expect(
      code(() =>
        checkResponseIssuer(new URLSearchParams("code=c&state=s&iss=https%3A%2F%2Fid.example.com%2F"), announcing),
      ),
    ).toBeNull();
    expect(
      code(() => checkResponseIssuer(new URLSearchParams("error=access_denied&iss=https://id.example.com/"), base)),
    ).toBeNull();
  });

  it("refuses an answer naming another provider, whether or not discovery announces the parameter", () => {
    for (const discovery of [announcing, base]) {
      expect(
        code(() => checkResponseIssuer(new URLSearchParams("code=c&state=s&iss=https://evil.example/"), discovery)),
      ).toBe("invalid_issuer");
      // one character off: a trailing slash is part of the issuer
      expect(code(() => checkResponseIssuer(new URLSearchParams("code=c&iss=https://id.example.com"), discovery))).toBe(
        "invalid_issuer",
      );
    }
  });

  it("requires it where discovery says the provider sends it, and only there", () => {
    expect(code(() => checkResponseIssuer(new URLSearchParams("code=c&state=s"), announcing))).toBe("invalid_issuer");
    expect(code(() => checkResponseIssuer(new URLSearchParams("code=c&state=s"), base))).toBeNull();
  });
});
