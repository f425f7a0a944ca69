// The whole /v1 API through the library against a live `chat-api serve`.
import assert from "node:assert/strict";
import { test } from "node:test";
import { ProblemError, VERSION } from "../dist/index.js";
import { clientOf, live, SKIP, uid } from "./support.mjs";

const env = live();

async function problem(promise) {
  const error = await promise.then(
    () => null,
    (e) => e,
  );
  assert.ok(error instanceof ProblemError, `expected a ProblemError, got ${error}`);
  return error;
}

test("rooms, members, direct messages, messages, threads, reactions, read markers, search, typing", { skip: !env && SKIP }, async () => {
  const url = env.CHAT_API_TEST_URL;
  const tag = uid();
  const [a, b, c, d] = ["alice", "bob", "carol", "dave"].map((n) => `${n}-${tag}`);
  const alice = clientOf(url, a);
  const bob = clientOf(url, b);
  const carol = clientOf(url, c);
  assert.equal(VERSION, process.env.CHAT_API_TEST_VERSION);
  assert.equal(await alice.userId(), a);

  // Rooms: create, list with a cursor, get, PATCH name and topic.
  const room = await alice.createRoom({ name: `lunch ${tag}`, members: [b] });
  assert.equal(room.kind, "group");
  assert.deepEqual(room.members.map((m) => [m.user_id, m.role]).sort(), [[a, "owner"], [b, "member"]]);
  const other = await alice.createRoom({ name: `other ${tag}` });
  const first = await alice.listRooms({ limit: 1 });
  assert.equal(first.items.length, 1);
  assert.ok(first.next_cursor && first.stream_cursor);
  const second = await alice.listRooms({ limit: 1, cursor: first.next_cursor });
  assert.deepEqual(new Set([first.items[0].id, second.items[0].id]), new Set([room.id, other.id]));
  const all = [];
  for await (const r of alice.rooms({ limit: 1 })) all.push(r.id);
  assert.deepEqual(new Set(all), new Set([room.id, other.id]));
  assert.equal((await bob.getRoom(room.id)).name, `lunch ${tag}`);
  const changed = await alice.updateRoom(room.id, { name: `brunch ${tag}`, topic: "eggs" });
  assert.deepEqual([changed.name, changed.topic], [`brunch ${tag}`, "eggs"]);
  assert.equal((await alice.updateRoom(room.id, { topic: null })).topic, null);
  assert.equal((await problem(bob.updateRoom(room.id, { topic: "mine" }))).status, 403);

  // Members: add (201, then 200), remove, leave with stay_out (then adding is refused), outsiders 404.
  assert.deepEqual(await alice.addMember(room.id, c), { member: { user_id: c, role: "member", last_read_seq: 0 }, created: true });
  assert.equal((await alice.addMember(room.id, c)).created, false);
  await alice.removeMember(room.id, c);
  const outsider = await problem(carol.getRoom(room.id));
  assert.deepEqual([outsider.status, outsider.title], [404, "Not Found"]);
  await alice.addMember(room.id, c);
  await carol.leaveRoom(room.id, { stayOut: true });
  const refused = await problem(alice.addMember(room.id, c));
  assert.deepEqual([refused.status, refused.type], [403, "tag:chat-api,2026:problem/refused"]);

  // Direct messages: one room per pair, from either side.
  const dm = await alice.openDirect(d);
  assert.equal(dm.created, true);
  assert.equal(dm.room.kind, "direct");
  const again = await clientOf(url, d).openDirect(a);
  assert.deepEqual([again.created, again.room.id], [false, dm.room.id]);
  assert.equal((await problem(alice.openDirect(a))).status, 422);

  // Messages: a send, its retry with the same key (replayed), the same key for another body (422).
  const sent = await alice.sendMessage(room.id, { body: "hi @" + b });
  assert.equal(sent.replayed, false);
  assert.deepEqual(sent.message.mentions, [b]);
  const retried = await alice.sendMessage(room.id, { body: "hi @" + b }, { idempotencyKey: sent.idempotencyKey });
  assert.deepEqual([retried.replayed, retried.message.id], [true, sent.message.id]);
  const reused = await problem(alice.sendMessage(room.id, { body: "other" }, { idempotencyKey: sent.idempotencyKey }));
  assert.deepEqual([reused.status, reused.type], [422, "tag:chat-api,2026:problem/idempotency-key-reused"]);
  const invalid = await problem(alice.createRoom({ name: "" }));
  assert.deepEqual([invalid.status, invalid.type], [422, "tag:chat-api,2026:problem/validation"]);

  // A send whose answer is lost on the way back: the library retries with the same key, and the
  // service answers the first message (one message, not two).
  let dropped = 0;
  const lossy = clientOf(url, a, {
    fetch: async (input, init) => {
      const response = await fetch(input, init);
      if (init.method === "POST" && String(input).endsWith("/messages") && dropped++ === 0) {
        throw new TypeError("fetch failed (the answer was lost)");
      }
      return response;
    },
  });
  const retriedAfterLoss = [];
  const lost = await lossy.sendMessage(room.id, { body: "answer lost once" }, { onRetry: (e) => retriedAfterLoss.push(e.message) });
  assert.equal(lost.replayed, true);
  assert.equal(retriedAfterLoss.length, 1);

  // History pages, a thread, one message, edit, delete.
  const seqs = [];
  for (let i = 1; i <= 5; i++) seqs.push((await bob.sendMessage(room.id, { body: `page ${i}` })).message.seq);
  const newest = await bob.history(room.id, { limit: 2 });
  assert.deepEqual(newest.items.map((m) => m.body), ["page 4", "page 5"]);
  assert.equal(newest.has_more, true);
  const older = await bob.history(room.id, { limit: 2, before: newest.items[0].seq });
  assert.deepEqual(older.items.map((m) => m.body), ["page 2", "page 3"]);
  const after = await bob.history(room.id, { limit: 100, after: seqs[3] });
  assert.deepEqual([after.items.map((m) => m.body), after.has_more], [["page 5"], false]);
  const root = sent.message.seq;
  const reply1 = (await bob.sendMessage(room.id, { body: "reply 1", reply_to: root })).message;
  const reply2 = (await alice.sendMessage(room.id, { body: "reply 2", reply_to: reply1.seq })).message;
  assert.equal(reply2.thread_root, root);
  const thread = await alice.thread(room.id, root, { limit: 1 });
  assert.deepEqual([thread.items.map((m) => m.body), thread.has_more], [["reply 2"], true]);
  assert.deepEqual((await alice.thread(room.id, root, { before: reply2.seq })).items.map((m) => m.body), ["reply 1"]);
  const rootNow = await bob.getMessage(room.id, root);
  assert.deepEqual([rootNow.reply_count, rootNow.last_reply_seq], [2, reply2.seq]);
  const edited = await alice.editMessage(room.id, root, "hello again");
  assert.ok(edited.edited_at);
  assert.equal((await problem(bob.editMessage(room.id, root, "not mine"))).status, 403);

  // Reactions: emoji percent-encoded in the path, shortcodes, 201 then 200, take back.
  for (const emoji of ["👍", "👩‍👩‍👧", "+1", "🇫🇷"]) {
    const added = await bob.addReaction(room.id, root, emoji);
    assert.equal(added.created, true, emoji);
    assert.ok(added.message.reactions.some((r) => r.emoji === emoji && r.users.includes(b)), emoji);
  }
  assert.equal((await bob.addReaction(room.id, root, "👍")).created, false);
  await bob.removeReaction(room.id, root, "👍");
  await bob.removeReaction(room.id, root, "👍"); // none left: still fine
  assert.deepEqual((await alice.getMessage(room.id, root)).reactions.map((r) => r.emoji), ["👩‍👩‍👧", "+1", "🇫🇷"]);
  assert.equal((await problem(bob.addReaction(room.id, root, "not an emoji"))).status, 422);

  await alice.deleteMessage(room.id, reply2.seq);
  const tombstone = await bob.getMessage(room.id, reply2.seq);
  assert.deepEqual([tombstone.deleted, tombstone.body], [true, null]);
  const gone = await problem(alice.editMessage(room.id, reply2.seq, "too late"));
  assert.deepEqual([gone.status, gone.type], [409, "tag:chat-api,2026:problem/message-deleted"]);

  // Read markers, unread and mention counts (bob's own sends moved his marker: alice writes again).
  await alice.sendMessage(room.id, { body: `ping @${b}` });
  const listed = async () => (await bob.listRooms()).items.find((r) => r.id === room.id);
  assert.ok((await listed()).unread_count > 0);
  assert.equal((await listed()).mention_count, 1);
  await bob.markRead(room.id, (await listed()).last_seq);
  assert.deepEqual([(await listed()).unread_count, (await listed()).mention_count], [0, 0]);
  const me = (await bob.getRoom(room.id)).members.find((m) => m.user_id === b);
  assert.equal(me.last_read_seq, (await listed()).last_seq);

  // Search, keyset-paged with a cursor; typing.
  const word = `zebra${tag}`;
  for (let i = 0; i < 3; i++) await alice.sendMessage(room.id, { body: `${word} ${i}` });
  const hits = await bob.search({ q: word, limit: 2 });
  assert.deepEqual(hits.items.map((m) => m.body), [`${word} 2`, `${word} 1`]);
  const rest = await bob.search({ q: word, limit: 2, cursor: hits.next_cursor });
  assert.deepEqual([rest.items.map((m) => m.body), rest.next_cursor], [[`${word} 0`], null]);
  assert.equal((await bob.search({ q: word, room_id: other.id }).catch((e) => e)).status, 404);
  await bob.typing(room.id);
  assert.equal((await problem(carol.typing(room.id))).status, 404);
});
