// The stream helper against live `chat-api serve` processes: a cut across two processes, a reset,
// a reauth (and an early renewal), typing frames, and a repeated event.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import net from "node:net";
import { test } from "node:test";
import { clientOf, claims, live, messagesOf, pause, SKIP, uid, until, watchedFetch } from "./support.mjs";

const env = live();
const skip = !env && SKIP;

/** A load balancer: each connection goes to the first upstream that accepts it. While `hold()`ed,
 * new connections wait (the test decides when the helper may reach a server again). */
async function balancer(upstreams) {
  const connections = [];
  let held = null;
  const server = net.createServer(async (client) => {
    client.on("error", () => {});
    await held?.promise;
    const tryUpstream = (i) => {
      if (i >= upstreams.length) return client.destroy();
      const { hostname, port } = new URL(upstreams[i]);
      const upstream = net.connect(Number(port), hostname);
      upstream.once("error", () => {
        if (!upstream.connected) return tryUpstream(i + 1);
        client.destroy();
      });
      upstream.once("connect", () => {
        connections.push({ upstream: upstreams[i], at: Date.now() });
        upstream.on("error", () => client.destroy());
        client.on("error", () => upstream.destroy());
        client.pipe(upstream).pipe(client);
        upstream.on("close", () => client.destroy());
        client.on("close", () => upstream.destroy());
      });
    };
    tryUpstream(0);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    connections,
    hold: () => {
      let resolve;
      held = { promise: new Promise((r) => (resolve = r)), resolve: () => resolve() };
    },
    release: () => held?.resolve(),
    close: () => server.close(),
  };
}

test(
  "a stream cut when its server process dies resumes on another process: nothing lost, nothing repeated",
  { skip: skip || (!process.env.CHAT_API_TEST_URL_A && "needs a second server") },
  async () => {
    const [urlA, urlB] = [process.env.CHAT_API_TEST_URL_A, env.CHAT_API_TEST_URL];
    const tag = uid();
    const [a, b] = [`alice-${tag}`, `bob-${tag}`];
    const lb = await balancer([urlA, urlB]);
    const watched = watchedFetch();
    const bob = clientOf(lb.url, b, { fetch: watched });
    const aliceOnA = clientOf(urlA, a);
    const aliceOnB = clientOf(urlB, a);
    const room = await aliceOnA.createRoom({ name: `cut ${tag}`, members: [b] });
    const events = [];
    const states = [];
    const reconnects = [];
    // No cursor given: the helper takes stream_cursor from GET /v1/rooms (through the balancer: A).
    const stream = bob.stream({
      onEvent: (e) => events.push(e),
      onState: (s) => states.push(s),
      onReconnect: (info) => reconnects.push({ ...info, at: Date.now() }),
    });
    try {
      await until(() => states.includes("live"), "the stream is live");
      assert.equal(watched.requests.length, 1);
      assert.ok(watched.requests[0].headers["Last-Event-ID"], "started from stream_cursor");
      let n = 0;
      const send = async (client) => (await client.sendMessage(room.id, { body: `m${++n}` })).message.seq;
      for (let i = 0; i < 10; i++) await send(aliceOnA);
      await until(() => messagesOf(events, room.id).length >= 3, "some messages through A");
      const lastIdOnA = stream.lastEventId;
      lb.hold(); // the helper's reconnection waits until the gap's messages are in
      process.kill(Number(process.env.CHAT_API_TEST_PID_A), "SIGKILL"); // process A dies mid-stream
      const cutAt = Date.now();
      await until(() => reconnects.length >= 1, "the helper noticed the cut");
      for (let i = 0; i < 10; i++) await send(aliceOnB); // while the helper is away
      const gapSentAt = Date.now();
      lb.release();
      await until(() => lb.connections.some((c) => c.upstream === urlB), "a reconnection to B");
      await until(() => states.at(-1) === "live", "live again");
      for (let i = 0; i < 10; i++) await send(aliceOnB);
      await until(() => messagesOf(events, room.id).length >= 30, "30 messages");
      await pause(500); // anything repeated would come now
      const got = messagesOf(events, room.id);
      assert.deepEqual(got.map(([, body]) => body), Array.from({ length: 30 }, (_, i) => `m${i + 1}`));
      assert.ok(got.every(([seq], i) => i === 0 || seq > got[i - 1][0]), "in seq order");
      // The 10 sent during the cut could not come live: the helper reached B after they were
      // written, so it got them by resuming from the last id it had received (Last-Event-ID).
      const onB = lb.connections.filter((c) => c.upstream === urlB);
      assert.ok(onB.length >= 1 && onB[0].at >= gapSentAt, "B was reached after the gap's sends");
      const resumed = watched.requests.find((r) => r.at >= cutAt);
      assert.ok(resumed, "a reconnection");
      assert.ok(["error", "ended"].includes(reconnects[0].reason), JSON.stringify(reconnects));
      assert.ok(resumed.headers["Last-Event-ID"]);
      assert.notEqual(resumed.headers["Last-Event-ID"], watched.requests[0].headers["Last-Event-ID"]);
      assert.ok(lastIdOnA && events.some((e) => e.id === resumed.headers["Last-Event-ID"]));
    } finally {
      stream.close();
      lb.close();
    }
  },
);

test("a cursor older than the retained log: onReset, then on from the reset's id, never a partial replay", { skip }, async () => {
  const url = env.CHAT_API_TEST_URL;
  const tag = uid();
  const [a, b] = [`alice-${tag}`, `bob-${tag}`];
  const alice = clientOf(url, a);
  const room = await alice.createRoom({ name: `reset ${tag}`, members: [b] });
  const oldCursor = (await alice.listRooms()).stream_cursor;
  await alice.sendMessage(room.id, { body: "soon pruned" });
  // The harness's command ages this room's events past the retention and prunes the log.
  const [command, ...args] = JSON.parse(process.env.CHAT_API_TEST_AGE_EVENTS);
  execFileSync(command, [...args, room.id], { stdio: "inherit" });

  // The first connection is cut right after its reset frame: the next one must start from the
  // reset's id (another reset would mean the helper kept the stale cursor).
  const watched = watchedFetch({ cut: (n, text) => n === 0 && text.includes("event: reset") });
  const bob = clientOf(url, b, { fetch: watched });
  const log = [];
  const stream = bob.stream({
    cursor: oldCursor,
    onReset: async ({ cursor }) => {
      log.push(["reset", cursor, stream.lastEventId]);
      const reloaded = await bob.listRooms(); // what an app does: reload its state
      log.push(["reloaded", reloaded.items.some((r) => r.id === room.id)]);
    },
    onEvent: (e) => log.push([e.type, e.message?.body ?? null]),
  });
  try {
    await until(() => watched.requests.length >= 2, "a second connection");
    await alice.sendMessage(room.id, { body: "after reset" });
    await until(() => log.some(([, body]) => body === "after reset"), "the message after the reset");
    const [reset, cursor, before] = log[0];
    assert.deepEqual([reset, before], ["reset", oldCursor], "onReset comes first, before the cursor moves");
    assert.deepEqual(log[1], ["reloaded", true]);
    assert.ok(cursor && cursor !== oldCursor);
    assert.equal(log.filter(([kind]) => kind === "reset").length, 1, "one reset: it went on from its id");
    assert.equal(watched.requests[1].headers["Last-Event-ID"], cursor);
    assert.ok(!log.some(([, body]) => body === "soon pruned"), "never a partial replay");
  } finally {
    stream.close();
  }
});

/** Alice sends `count` messages `every` ms while bob's helper streams; answers what bob got. */
async function sendWhileStreaming({ ttl, renewEarly, count, every }) {
  const url = env.CHAT_API_TEST_URL;
  const tag = uid();
  const [a, b] = [`alice-${tag}`, `bob-${tag}`];
  const alice = clientOf(url, a);
  const room = await alice.createRoom({ name: `reauth ${tag}`, members: [b] });
  const tokens = [];
  const watched = watchedFetch();
  const bob = clientOf(url, b, { ttl, fetch: watched, onToken: (token, refresh) => refresh && tokens.push(token) });
  const events = [];
  const reconnects = [];
  const stream = bob.stream({
    cursor: (await bob.listRooms()).stream_cursor,
    renewEarly,
    onEvent: (e) => events.push(e),
    onReconnect: (info) => reconnects.push(info),
  });
  try {
    for (let i = 1; i <= count; i++) {
      await alice.sendMessage(room.id, { body: `tick ${i}` });
      await pause(every);
    }
    await until(() => messagesOf(events, room.id).length >= count, `${count} messages`);
    await pause(500);
  } finally {
    stream.close();
  }
  const got = messagesOf(events, room.id).map(([, body]) => body);
  assert.deepEqual(got, Array.from({ length: count }, (_, i) => `tick ${i + 1}`), "each once, in order");
  return { events, reconnects, tokens, requests: watched.requests };
}

test("event: reauth at token expiry: a fresh token from the provider, resumed from the last id", { skip }, async () => {
  // 2 s tokens, the server's heartbeat (which ends expired streams) every 0.3 s; no early renewal.
  const { events, reconnects, tokens, requests } = await sendWhileStreaming({ ttl: 2, renewEarly: false, count: 30, every: 200 });
  const reauths = reconnects.filter((r) => r.reason === "reauth");
  assert.ok(reauths.length >= 2, JSON.stringify(reconnects));
  assert.ok(requests.length >= reauths.length + 1);
  assert.ok(tokens.length >= reauths.length, "a fresh token per reauth");
  for (const [i, request] of requests.entries()) {
    const token = request.headers.Authorization.replace("Bearer ", "");
    if (i > 0) {
      assert.ok(claims(token).exp * 1000 > request.at, `request ${i} used a token that had not expired`);
      // each reconnection resumed from the last id received before it
      const lastBefore = events.filter((e) => e.id && requests[i - 1].text.includes(`id: ${e.id}\n`)).at(-1);
      const expected = lastBefore?.id ?? requests[i - 1].headers["Last-Event-ID"];
      assert.equal(request.headers["Last-Event-ID"], expected, `request ${i}`);
    }
  }
  const reauthFrames = requests.filter((r) => r.text.includes("event: reauth")).length;
  assert.ok(reauthFrames >= 2, "the server did end the streams with event: reauth");
});

test("renewEarly: the helper reconnects with a fresh token before the server has to send reauth", { skip }, async () => {
  const { reconnects, requests } = await sendWhileStreaming({ ttl: 6, renewEarly: true, count: 30, every: 200 });
  assert.ok(reconnects.filter((r) => r.reason === "renew").length >= 1, JSON.stringify(reconnects));
  assert.ok(!requests.some((r) => r.text.includes("event: reauth")), "renewed before expiry");
});

test("typing frames go to onTyping, never to onEvent, and never move the cursor", { skip }, async () => {
  const url = env.CHAT_API_TEST_URL;
  const tag = uid();
  const [a, b] = [`alice-${tag}`, `bob-${tag}`];
  const alice = clientOf(url, a);
  const bob = clientOf(url, b);
  const room = await alice.createRoom({ name: `typing ${tag}`, members: [b] });
  const typing = [];
  const events = [];
  const stream = bob.stream({
    cursor: null,
    roomId: room.id,
    onEvent: (e) => events.push(e),
    onTyping: (t) => typing.push({ ...t, cursor: stream.lastEventId }),
    onState: (s) => s === "live" && typing.push("live"),
  });
  try {
    await until(() => typing.includes("live"), "live");
    const sent = (await alice.sendMessage(room.id, { body: "before typing" })).message;
    await until(() => events.length === 1, "the message");
    const cursor = stream.lastEventId;
    await alice.typing(room.id);
    await until(() => typing.length === 2, "the typing frame");
    const notice = typing[1];
    assert.deepEqual([notice.room_id, notice.user_id, notice.cursor], [room.id, a, cursor]);
    assert.ok(Date.parse(notice.expires_at) > Date.now());
    await pause(300);
    assert.equal(stream.lastEventId, cursor, "a typing frame has no id: the cursor stays");
    assert.deepEqual(events.map((e) => [e.type, e.seq]), [["message.created", sent.seq]]);
  } finally {
    stream.close();
  }
});

test("a repeated event (the server replays what the helper has applied) is skipped by (room_id, seq)", { skip }, async () => {
  const url = env.CHAT_API_TEST_URL;
  const tag = uid();
  const [a, b] = [`alice-${tag}`, `bob-${tag}`];
  const alice = clientOf(url, a);
  const room = await alice.createRoom({ name: `dedupe ${tag}`, members: [b] });
  const start = (await alice.listRooms()).stream_cursor;
  for (let i = 1; i <= 3; i++) await alice.sendMessage(room.id, { body: `m${i}` });
  // Connection 1 ends after its third message; connection 2 resumes from the START cursor (as a
  // client that lost its position would), so the service sends m1..m3 again.
  const count = (text) => (text.match(/event: message\.created/g) || []).length;
  const watched = watchedFetch({
    cut: (n, text) => n === 0 && count(text) >= 3,
    rewrite: (n, headers) => {
      if (n === 1) headers["Last-Event-ID"] = start;
    },
  });
  const bob = clientOf(url, b, { fetch: watched });
  const events = [];
  const stream = bob.stream({ cursor: start, roomId: room.id, retryMs: 100, onEvent: (e) => events.push(e) });
  try {
    await until(() => watched.requests.length >= 2, "a second connection");
    for (let i = 4; i <= 5; i++) await alice.sendMessage(room.id, { body: `m${i}` });
    await until(() => messagesOf(events, room.id).length >= 5, "5 messages");
    await pause(500);
    assert.ok(count(watched.requests[1].text) >= 5, "the service did send m1..m3 again");
    assert.deepEqual(messagesOf(events, room.id).map(([, body]) => body), ["m1", "m2", "m3", "m4", "m5"]);
    assert.equal(stream.seenSeq(room.id), messagesOf(events, room.id).at(-1)[0]);
  } finally {
    stream.close();
  }
});
