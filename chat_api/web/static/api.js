// HTTP calls to the service, same origin. State-changing calls carry the bearer token in the
// Authorization header (never a cookie: see chat_api/web/README.md).

export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && problem.detail) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

/** A network failure or an answer that says "try again": a send may be retried with the same key. */
export function isTransient(error) {
  if (error instanceof ApiError) return [0, 408, 429, 502, 503, 504].includes(error.status);
  return error instanceof TypeError; // fetch rejects with a TypeError when the network fails
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A random Idempotency-Key (crypto.randomUUID needs a secure context; this does not). */
export function newKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function answer(response) {
  if (response.status === 204) return null;
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : null;
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

/** POST /dev/token: only `chat-api dev` has it; null when this server does not. */
export async function devToken(sub) {
  const response = await fetch("/dev/token", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ sub }),
    cache: "no-store",
  });
  if (response.status === 404 || response.status === 405) return null;
  return answer(response);
}

/** The claims of a JWT, read without verifying it (the page only wants its own token's exp). */
export function claimsOf(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)));
  } catch {
    return null;
  }
}

function wornOut(token) {
  // Most of its life is over: the last quarter, at most the last five minutes.
  const claims = claimsOf(token);
  if (!claims || typeof claims.exp !== "number") return false;
  const life = typeof claims.iat === "number" ? claims.exp - claims.iat : 3600;
  return Date.now() / 1000 >= claims.exp - Math.min(300, life / 4);
}

/**
 * A token source: `get()` resolves to a token that is good for a while. With `renew` (a function
 * that resolves to a fresh token, e.g. POST /dev/token in `chat-api dev`) a token that is mostly
 * used up is replaced before it runs out, once however many calls ask at the same time; `onRenewed`
 * hears of each new one. Without it (a pasted token) the token is what it is until it expires.
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

export class Api {
  constructor(token, onUnauthorized) {
    this.token = token; // a token source (see tokenSource)
    this.onUnauthorized = onUnauthorized;
  }

  async call(method, path, { json, headers = {} } = {}) {
    try {
      return await this.request(method, path, json, headers, await this.token());
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 401)) throw error;
      // Refused: one more try with a renewed token (when the source can renew), else signed out.
      const fresh = await this.token(true).catch(() => null);
      if (fresh) {
        try {
          return await this.request(method, path, json, headers, fresh);
        } catch (again) {
          error = again;
        }
      }
      if (error instanceof ApiError && error.status === 401) this.onUnauthorized(error);
      throw error;
    }
  }

  async request(method, path, json, headers, token) {
    const init = {
      method,
      headers: { Authorization: `Bearer ${token}`, ...headers },
      cache: "no-store",
    };
    if (json !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(json);
    }
    return answer(await fetch(path, init));
  }

  openSession() { return this.call("POST", "/v1/session"); }
  closeSession() { return this.call("DELETE", "/v1/session"); }

  listRooms(cursor) {
    const query = new URLSearchParams({ limit: "100" });
    if (cursor) query.set("cursor", cursor);
    return this.call("GET", `/v1/rooms?${query}`);
  }

  room(roomId) { return this.call("GET", `/v1/rooms/${encodeURIComponent(roomId)}`); }
  createRoom(name, members) { return this.call("POST", "/v1/rooms", { json: { name, members } }); }

  addMember(roomId, user) {
    return this.call("PUT", `/v1/rooms/${encodeURIComponent(roomId)}/members/${encodeURIComponent(user)}`);
  }

  /** A page of history in ascending seq: the newest, or the one before `before` (keyset). */
  history(roomId, before, limit = 50) {
    const query = new URLSearchParams({ limit: String(limit) });
    if (before !== undefined) query.set("before", String(before));
    return this.call("GET", `/v1/rooms/${encodeURIComponent(roomId)}/messages?${query}`);
  }

  /** A new message; with `replyTo` (a seq) it joins that message's thread. */
  send(roomId, body, key, replyTo) {
    const json = replyTo === undefined ? { body } : { body, reply_to: replyTo };
    return this.call("POST", `/v1/rooms/${encodeURIComponent(roomId)}/messages`, {
      json,
      headers: { "Idempotency-Key": key },
    });
  }

  message(roomId, seq) {
    return this.call("GET", `/v1/rooms/${encodeURIComponent(roomId)}/messages/${seq}`);
  }

  /** A page of a thread's replies in ascending seq: the newest, or the ones before `before`. */
  thread(roomId, root, before, limit = 50) {
    const query = new URLSearchParams({ thread: String(root), limit: String(limit) });
    if (before !== undefined) query.set("before", String(before));
    return this.call("GET", `/v1/rooms/${encodeURIComponent(roomId)}/messages?${query}`);
  }

  /** PUT adds the caller's reaction (answers the message), DELETE takes it away (204). */
  react(roomId, seq, emoji, on) {
    const path = `/v1/rooms/${encodeURIComponent(roomId)}/messages/${seq}/reactions/${encodeURIComponent(emoji)}`;
    return this.call(on ? "PUT" : "DELETE", path);
  }

  search(q, cursor) {
    const query = new URLSearchParams({ q, limit: "20" });
    if (cursor) query.set("cursor", cursor);
    return this.call("GET", `/v1/search?${query}`);
  }

  /** The one direct room of the caller and `user` (made on first use). */
  directRoom(user) { return this.call("PUT", `/v1/dms/${encodeURIComponent(user)}`); }

  /** `changes`: {name?, topic?} (owner only). */
  updateRoom(roomId, changes) {
    return this.call("PATCH", `/v1/rooms/${encodeURIComponent(roomId)}`, { json: changes });
  }

  typing(roomId) { return this.call("POST", `/v1/rooms/${encodeURIComponent(roomId)}/typing`); }

  edit(roomId, seq, body) {
    return this.call("PATCH", `/v1/rooms/${encodeURIComponent(roomId)}/messages/${seq}`, { json: { body } });
  }

  remove(roomId, seq) {
    return this.call("DELETE", `/v1/rooms/${encodeURIComponent(roomId)}/messages/${seq}`);
  }

  markRead(roomId, seq) {
    return this.call("POST", `/v1/rooms/${encodeURIComponent(roomId)}/read`, { json: { seq } });
  }
}

/**
 * Sends until the service has the message: network errors and 503s are retried with the SAME
 * Idempotency-Key, so a retry of a send that did arrive returns the first message, never a copy.
 */
export async function sendWithRetry(api, roomId, body, key, onRetry, replyTo) {
  let delay = 500;
  for (;;) {
    try {
      return await api.send(roomId, body, key, replyTo);
    } catch (error) {
      if (!isTransient(error)) throw error;
      onRetry(error);
      await sleep(delay);
      delay = Math.min(delay * 2, 4000);
    }
  }
}
