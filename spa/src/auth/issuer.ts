/**
 * RFC 9207: the authorization server names itself (`iss`) in every authorization response, so that a
 * client that could be talking to more than one server notices when an answer came from another one
 * than the request went to (a mix-up attack: an attacker's server makes the client hand it an honest
 * server's code). oidc-client-ts does not check it, so the flows do, before anything else of the answer
 * is used. Required when discovery says the provider sends it (the bundled provider does); checked when
 * present otherwise (a provider that does not send it, Auth0 today, is not refused for that).
 */
import { AuthError, type Discovery } from "./types";

export function checkResponseIssuer(params: URLSearchParams, discovery: Discovery): void {
  const iss = params.get("iss");
  if (iss === null) {
    if (discovery.authorization_response_iss_parameter_supported === true)
      throw new AuthError("invalid_issuer", "the sign-in answer does not name the sign-in service that gave it");
    return;
  }
  if (iss !== discovery.issuer)
    throw new AuthError("invalid_issuer", "the sign-in answer came from another sign-in service than this app uses");
}
