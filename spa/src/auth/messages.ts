/** Plain-words messages for sign-in failures reported by the provider or by our own checks. */
import type { UserMessage } from "../api/errors";
import { AuthError } from "./types";

export function describeAuthError(error: unknown): UserMessage {
  const code = error instanceof AuthError ? error.code : "error";
  switch (code) {
    case "access_denied":
      return {
        kind: "permission",
        title: "Access was not granted",
        text: "You chose not to allow this app to use your account, so you are not signed in. You can sign in again at any time.",
      };
    case "login_required":
    case "interaction_required":
      return { kind: "signin", title: "Please sign in", text: "Your session at the sign-in service has ended." };
    case "consent_required":
      return {
        kind: "signin",
        title: "Please sign in",
        text: "This app needs your permission before it can continue.",
      };
    case "invalid_id_token":
    case "invalid_issuer":
      return {
        kind: "error",
        title: "Sign-in answer rejected",
        text: "The answer from the sign-in service failed its security checks, so it was discarded. Please sign in again.",
      };
    case "invalid_state":
      return {
        kind: "error",
        title: "Sign-in could not be completed",
        text: "That sign-in answer did not match a request from this tab (it may be old or opened elsewhere). Please sign in again.",
      };
    case "invalid_scope":
    case "unauthorized_client":
      return {
        kind: "permission",
        title: "This app isn't allowed to ask for that",
        text: `The sign-in service refused the request${error instanceof AuthError && error.description ? `: ${error.description}` : "."}`,
      };
    case "timeout":
      return {
        kind: "unavailable",
        title: "The sign-in service didn't answer",
        text: "It did not answer in time, so you are not signed in. Please sign in again in a moment.",
      };
    default:
      return {
        kind: "error",
        title: "Sign-in failed",
        text:
          error instanceof AuthError && error.description
            ? error.description
            : "Something went wrong while signing you in. Please try again.",
      };
  }
}
