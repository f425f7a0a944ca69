// What the live tests share: the servers the pytest harness started (tests/clients/), tokens signed
// with its HS256 secret, waiting, and a fetch that watches (and can bend) the stream's requests.
import { createHmac, randomBytes } from "node:crypto";
import { ChatClient } from "../dist/index.js";

/** The harness's settings, or null when this file runs without it (the live tests then skip). */
export function live(...names) {
  const values = {};
  for (const name of ["CHAT_API_TEST_URL", "CHAT_API_TEST_SECRET", ...names]) {
    if (!process.env[name]) return null;
    values[name] = process.env[name];
  }
  return values;
}

export const SKIP = "needs a live chat-api serve: run it through pytest tests/clients";

export const uid = () => randomBytes(4).toString("hex");

/** An HS256 JWT for `sub`, as the service verifies them. */
export function mint(sub, ttlSeconds = 3600) {
  const b64 = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const head = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, iat: now, exp: now + ttlSeconds })}`;
  const signature = createHmac("sha256", process.env.CHAT_API_TEST_SECRET).update(head).digest("base64url");
  return `${head}.${signature}`;
}

/** A client of `sub` at `baseUrl` whose token provider mints a new token on `refresh`. */
export function clientOf(baseUrl, sub, { ttl = 3600, fetch, onToken } = {}) {
  let token = mint(sub, ttl);
  return new ChatClient({
    baseUrl,
    fetch,
    token: ({ refresh }) => {
      if (refresh) token = mint(sub, ttl);
      onToken?.(token, refresh);
      return token;
    },
  });
}

export async function until(condition, what, ms = 20_000) {
  const deadline = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`not within ${ms} ms: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

export const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export function claims(token) {
  return JSON.parse(Buffer.from(token.split(".")[1], "base64url").toString());
}

/**
 * A fetch that records every GET /v1/events request (url, headers, time) and the frames' text it
 * got; `rewrite(n, headers)` may change the n-th request's headers, and `cut(n, text)` ends the n-th
 * response's body (as a dropped connection would) once the text read so far satisfies it.
 */
export function watchedFetch({ rewrite, cut } = {}) {
  const requests = [];
  const watched = async (url, init = {}) => {
    if (!String(url).includes("/v1/events")) return fetch(url, init);
    const n = requests.length;
    const headers = { ...init.headers };
    rewrite?.(n, headers);
    const request = { url: String(url), headers, at: Date.now(), text: "" };
    requests.push(request);
    const response = await fetch(url, { ...init, headers });
    if (!response.body) return response;
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    const body = new ReadableStream({
      async pull(controller) {
        let chunk;
        try {
          chunk = await reader.read();
        } catch (error) {
          controller.error(error);
          return;
        }
        if (chunk.done) return controller.close();
        controller.enqueue(chunk.value);
        request.text += decoder.decode(chunk.value, { stream: true });
        if (cut?.(n, request.text)) {
          controller.close();
          reader.cancel().catch(() => {});
        }
      },
      cancel: (reason) => reader.cancel(reason),
    });
    return new Response(body, { status: response.status, headers: response.headers });
  };
  watched.requests = requests;
  return watched;
}

/** The message.created events of one room, as (seq, body). */
export function messagesOf(events, roomId) {
  return events
    .filter((e) => e.type === "message.created" && e.room_id === roomId)
    .map((e) => [e.seq, e.message.body]);
}
