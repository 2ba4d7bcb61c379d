/**
 * Silent sign-in through a hidden iframe with `prompt=none` and `response_mode=web_message` (Auth0's
 * mode, also served by the bundled identity service): the provider answers with a tiny page that
 * `postMessage`s `{type: "authorization_response", response: {...}}` to the window that framed it.
 *
 * The app's own pages are therefore never framed (the gateway serves them with
 * `frame-ancestors 'none'`), and the answer is accepted only from the provider's origin and from
 * the iframe this call created.
 */
import { AuthError } from "./types";

export const WEB_MESSAGE_TYPE = "authorization_response";

export function silentWebMessage(authorizeUrl: string, timeoutMs = 10_000): Promise<Record<string, string>> {
  const expectedOrigin = new URL(authorizeUrl).origin;
  const frame = document.createElement("iframe");
  frame.title = "silent sign-in";
  frame.setAttribute("aria-hidden", "true");
  frame.tabIndex = -1;
  frame.style.position = "absolute";
  frame.style.width = "0";
  frame.style.height = "0";
  frame.style.border = "0";
  frame.style.visibility = "hidden";
  return new Promise((resolve, reject) => {
    const cleanup = (): void => {
      window.removeEventListener("message", onMessage);
      clearTimeout(timer);
      frame.remove();
    };
    const onMessage = (event: MessageEvent): void => {
      if (event.origin !== expectedOrigin || event.source !== frame.contentWindow) return;
      const data = event.data as { type?: unknown; response?: unknown } | null;
      if (!data || data.type !== WEB_MESSAGE_TYPE || typeof data.response !== "object" || data.response === null)
        return;
      cleanup();
      const response: Record<string, string> = {};
      for (const [key, value] of Object.entries(data.response as Record<string, unknown>)) {
        if (typeof value === "string" || typeof value === "number") response[key] = String(value);
      }
      resolve(response);
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new AuthError("timeout", "the sign-in service did not answer the silent sign-in"));
    }, timeoutMs);
    window.addEventListener("message", onMessage);
    frame.src = authorizeUrl;
    document.body.appendChild(frame);
  });
}
