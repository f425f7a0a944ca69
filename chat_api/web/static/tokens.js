// Where the page's bearer tokens come from: `chat-api dev` mints them by name (POST /dev/token) and
// renews them before they run out; a pasted token is what it is until it expires. Everything else
// about the API (calls, retries, the stream) is the library's (vendor/chat-api-client).

import { ProblemError, claimsOf } from "./vendor/chat-api-client/index.js";

/** POST /dev/token: only `chat-api dev` has it; null when this server does not. */
export async function devToken(sub) {
  const response = await fetch("/dev/token", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ sub }),
    cache: "no-store",
  });
  if (response.status === 404 || response.status === 405) return null;
  const body = (response.headers.get("content-type") || "").includes("json") ? await response.json() : null;
  if (!response.ok) throw new ProblemError(response.status, body);
  return body;
}

function wornOut(token) {
  // Most of its life is over: the last quarter, at most the last five minutes.
  const claims = claimsOf(token);
  if (!claims || typeof claims.exp !== "number") return false;
  const life = typeof claims.iat === "number" ? claims.exp - claims.iat : 3600;
  return Date.now() / 1000 >= claims.exp - Math.min(300, life / 4);
}

/**
 * A token source: `get(force)` resolves to a token that is good for a while. With `renew` (a
 * function that resolves to a fresh token, e.g. POST /dev/token in `chat-api dev`) a token that is
 * mostly used up — or any token when `force`d, after a 401 — is replaced, once however many calls
 * ask at the same time; `onRenewed` hears of each new one. Without it (a pasted token) the token is
 * what it is until it expires, and a forced renewal answers null.
 */
export function tokenSource(token, renew, onRenewed) {
  let current = token;
  let pending = null;
  return async (force = false) => {
    if (!renew) return force ? null : current; // nothing fresher to offer
    if (!force && !wornOut(current)) return current;
    pending ||= renew()
      .then((fresh) => {
        current = fresh;
        onRenewed(fresh);
        return fresh;
      })
      .finally(() => {
        pending = null;
      });
    return pending;
  };
}
