// The library without a server: the SSE parser, and the stream helper against a scripted fetch
// (dedupe, typing, reset, reauth, resume with Last-Event-ID), the client's 401 refresh and problems.
import assert from "node:assert/strict";
import { test } from "node:test";
import { ChatClient, ProblemError, SseParser } from "../dist/index.js";

test("the SSE parser reads fields, comments, retry and every line ending, across chunk boundaries", () => {
  const text =
    "retry: 2000\n\n: keepalive\n\nid: c1\r\nevent: message.created\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\n" +
    "event: typing\rdata: {}\r\revent: reauth\ndata:{\"reason\":\"token expired\"}\n\n";
  for (const size of [1, 2, 3, 7, text.length]) {
    const parser = new SseParser();
    const frames = [];
    for (let i = 0; i < text.length; i += size) frames.push(...parser.feed(text.slice(i, i + size)));
    assert.equal(parser.retry, 2000);
    assert.deepEqual(frames, [
      { event: "message.created", data: '{"a":\n1}', id: "c1" },
      { event: "typing", data: "{}", id: undefined },
      { event: "reauth", data: '{"reason":"token expired"}', id: undefined },
    ]);
  }
});

function frame(id, event, data) {
  return `${id ? `id: ${id}\n` : ""}event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
}

function created(id, room, seq) {
  return frame(id, "message.created", { room_id: room, seq, message: { room_id: room, seq, body: `m${seq}` } });
}

/** A fetch that answers each GET /v1/events with the next scripted body (then keeps it open). */
function scripted(bodies, seen) {
  return async (url, init) => {
    seen.push({ url: String(url), headers: { ...init.headers } });
    const next = bodies.shift();
    if (next === undefined) return new Promise(() => {}); // nothing more: hangs until aborted
    if (typeof next === "number") {
      const problem = { type: "about:blank", title: "x", status: next, detail: `status ${next}` };
      return new Response(JSON.stringify(problem), { status: next, headers: { "content-type": "application/problem+json" } });
    }
    const stream = new ReadableStream({
      start(controller) {
        controller.enqueue(new TextEncoder().encode(next.text));
        if (next.end) controller.close();
        init.signal?.addEventListener("abort", () => controller.error(new DOMException("aborted", "AbortError")));
      },
    });
    return new Response(stream, { status: 200, headers: { "content-type": "text/event-stream" } });
  };
}

async function until(condition, what, ms = 5000) {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

test("the stream helper dedupes by (room_id, seq), resumes with Last-Event-ID, handles typing, reset and reauth", async () => {
  const seen = [];
  const tokens = [];
  const client = new ChatClient({
    baseUrl: "http://chat.invalid",
    token: ({ refresh }) => {
      tokens.push(refresh);
      return refresh ? "fresh" : "first";
    },
    fetch: scripted(
      [
        // 1: two events, a typing frame, then the server ends the stream
        { text: "retry: 10\n\n" + created("c1", "r", 1) + frame(null, "typing", { room_id: "r", user_id: "b", expires_at: "x" }) + created("c2", "r", 2), end: true },
        // 2: resumed: a repeat of seq 2 (skipped, its id kept), then 3, then reauth
        { text: created("c2b", "r", 2) + created("c3", "r", 3) + frame(null, "reauth", { reason: "token expired" }) },
        // 3: reset, then 4
        { text: frame("c9", "reset", { cursor: "c9" }) + created("c10", "r", 4) },
      ],
      seen,
    ),
  });
  const events = [];
  const typing = [];
  const resets = [];
  const reasons = [];
  const stream = client.stream({
    cursor: "c0",
    retryMs: 10,
    onEvent: (e) => events.push([e.type, e.room_id, e.seq, e.id, stream.lastEventId]),
    onTyping: (t) => typing.push([t.user_id, stream.lastEventId]),
    onReset: async ({ cursor }) => {
      await new Promise((r) => setTimeout(r, 20));
      resets.push([cursor, stream.lastEventId]);
    },
    onReconnect: ({ reason, lastEventId }) => reasons.push([reason, lastEventId]),
  });
  await until(() => events.length === 4, "4 events");
  stream.close();
  await stream.done;
  assert.deepEqual(
    events.map((e) => e.slice(0, 4)),
    [
      ["message.created", "r", 1, "c1"],
      ["message.created", "r", 2, "c2"],
      ["message.created", "r", 3, "c3"],
      ["message.created", "r", 4, "c10"],
    ],
  );
  assert.deepEqual(typing, [["b", "c1"]], "typing never moves the cursor");
  assert.deepEqual(resets, [["c9", "c3"]], "onReset is awaited before the cursor moves to the reset's id");
  assert.deepEqual(reasons, [["ended", "c2"], ["reauth", "c3"]]);
  assert.deepEqual(seen.map((s) => s.headers["Last-Event-ID"]), ["c0", "c2", "c3"]);
  assert.deepEqual(seen.map((s) => s.headers.Authorization), ["Bearer first", "Bearer first", "Bearer fresh"]);
  assert.deepEqual(tokens, [false, false, true], "a fresh token after reauth only");
  assert.equal(stream.lastEventId, "c10");
});

test("markSeen skips what a listing already showed; a 401 is retried once with a fresh credential", async () => {
  const seen = [];
  const client = new ChatClient({
    token: ({ refresh }) => (refresh ? "fresh" : "stale"),
    fetch: scripted([401, { text: created("c1", "r", 5) + created("c2", "r", 6) + created("c3", "q", 1) }], seen),
  });
  const events = [];
  const stream = client.stream({ cursor: null, retryMs: 10, onEvent: (e) => events.push([e.room_id, e.seq]) });
  stream.markSeen("r", 5);
  await until(() => events.length === 2, "2 events");
  stream.close();
  assert.deepEqual(events, [["r", 6], ["q", 1]]);
  assert.deepEqual(seen.map((s) => [s.headers.Authorization, s.headers["Last-Event-ID"]]), [
    ["Bearer stale", undefined],
    ["Bearer fresh", undefined],
  ]);
});

test("a 400 (malformed cursor) stops the helper with a fatal error; a 503 is retried", async () => {
  const seen = [];
  const client = new ChatClient({ token: "t", fetch: scripted([503, 400], seen) });
  const errors = [];
  const states = [];
  const stream = client.stream({
    cursor: "bad",
    retryMs: 10,
    onEvent: () => {},
    onError: (error, { fatal }) => errors.push([error.status, fatal]),
    onState: (s) => states.push(s),
  });
  await stream.done;
  assert.deepEqual(errors, [[503, false], [400, true]]);
  assert.deepEqual(states, ["connecting", "reconnecting", "closed"]);
});

test("the client retries a 401 once with a refreshed token and throws problems as ProblemError", async () => {
  const calls = [];
  const unauthorized = [];
  const client = new ChatClient({
    baseUrl: "http://chat.invalid/",
    token: ({ refresh }) => (refresh ? null : "old"),
    onUnauthorized: (e) => unauthorized.push(e.status),
    fetch: async (url, init) => {
      calls.push([init.method, String(url), init.headers.Authorization]);
      const problem = { type: "tag:chat-api,2026:problem/unauthorized", title: "Unauthorized", status: 401, detail: "expired" };
      return new Response(JSON.stringify(problem), { status: 401, headers: { "content-type": "application/problem+json" } });
    },
  });
  const error = await client.getRoom("a b").catch((e) => e);
  assert.ok(error instanceof ProblemError);
  assert.deepEqual([error.status, error.type, error.title, error.detail], [401, "tag:chat-api,2026:problem/unauthorized", "Unauthorized", "expired"]);
  assert.deepEqual(calls, [["GET", "http://chat.invalid/v1/rooms/a%20b", "Bearer old"]], "no fresh token: no retry");
  assert.deepEqual(unauthorized, [401]);
});
