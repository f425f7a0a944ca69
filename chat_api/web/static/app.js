// The chat page: sign-in, room list (direct messages apart) with unread and mention badges, a
// timeline with keyset paging, a composer with idempotent retries, edit/delete of one's own
// messages, reactions, threads, search, room name and topic, typing, read markers, live updates.
//
// Client rule of the event stream: apply by (room_id, seq) and ignore what is already there. Each
// room keeps `seenSeq`, the newest seq it reflects (from the listing, then from events); an event
// at or below it is skipped. REST answers (a sent or edited message) update the timeline but never
// `seenSeq`, so no event can be skipped because of them.
//
// Events that carry less than a whole object are applied locally: a message.created with
// `thread_root` bumps the root's reply_count (the server sends nothing for the root), and `typing`
// frames (no id, not in the log) show "bob is typing…" until their `expires_at`.
//
// The API and the stream are chat-api-client's (clients/typescript), whose compiled ESM is served
// from vendor/chat-api-client/ (a fresh build, checked in CI): its stream helper also dedupes by
// (room_id, seq), resumes with Last-Event-ID, renews the stream cookie and handles reset and reauth.

import { ChatClient, ProblemError, newIdempotencyKey, sleep } from "./vendor/chat-api-client/index.js";
import {
  QUICK_REACTIONS,
  mentionParts,
  partnerOf,
  plural,
  reactedBy,
  typingFor,
  typingLine,
  withReply,
  withoutReaction,
} from "./model.js";
import { devToken, tokenSource } from "./tokens.js";

const TOKEN_KEY = "chat-api.token";
const DEV_NAME_KEY = "chat-api.dev-name"; // signed in by name (chat-api dev): tokens are renewed
const FLASH_KEY = "chat-api.flash";
const ROOM_KEY = "chat-api.room";
const PAGE = 50;
const TYPING_EVERY_MS = 2000; // the server forwards one typing call per user and room per 2 s
const JUMP_PAGES = 20; // how far back (pages of history) a search result is looked for

const $ = (id) => document.getElementById(id);

let api = null; // a ChatClient (clients/typescript, served from vendor/)
let stream = null;
let me = null;
let activeId = null;
let leaving = false;
const rooms = new Map(); // room id -> room state (see newRoom)
const fetching = new Map(); // room id -> events that arrived while the room was being fetched
const typers = new Map(); // room id -> Map user id -> timer that ends their "is typing…"
let thread = null; // the open thread pane (see openThread)
let typingSent = { roomId: null, at: 0 };
let searched = { q: "", cursor: null };

// -- sign-in ----------------------------------------------------------------------------------------

function showSignIn(message) {
  $("chat").hidden = true;
  $("whoami").hidden = true;
  $("connection").hidden = true;
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = message || "";
  $("dev-name").focus();
}

function leave(message) {
  // A clean slate: forget the token and reload the page (once, however many calls fail at once).
  if (leaving) return;
  leaving = true;
  if (stream) stream.close();
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(DEV_NAME_KEY);
  sessionStorage.removeItem(ROOM_KEY);
  if (message) sessionStorage.setItem(FLASH_KEY, message);
  location.reload();
}

async function signOut() {
  if (stream) stream.close();
  try {
    await api.closeSession(); // expires the HttpOnly stream cookie
  } catch {
    // signed out here anyway
  }
  leave();
}

async function untilReachable(what) {
  // The service may be restarting: keep trying, and say so.
  for (let delay = 1000; ; delay = Math.min(delay * 2, 10000)) {
    try {
      return await what();
    } catch (error) {
      if (error instanceof ProblemError) throw error;
      setConnection("reconnecting");
      await sleep(delay);
    }
  }
}

/** Where tokens come from: `chat-api dev` mints new ones by name; a pasted one cannot be renewed. */
function tokensFor(token, devName) {
  const renew = devName
    ? async () => {
        const minted = await devToken(devName);
        if (!minted) throw new Error("this server has no /dev/token");
        return minted.token;
      }
    : null;
  return tokenSource(token, renew, (fresh) => sessionStorage.setItem(TOKEN_KEY, fresh));
}

async function start(token, devName) {
  const tokens = tokensFor(token, devName);
  api = new ChatClient({
    token: ({ refresh }) => tokens(refresh),
    onUnauthorized: () => leave("Your sign-in is no longer valid: sign in again."),
  });
  let session;
  try {
    session = await untilReachable(() => api.openSession());
  } catch (error) {
    showSignIn(error.message);
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, await api.token()); // it may have been renewed meanwhile
  if (devName) sessionStorage.setItem(DEV_NAME_KEY, devName);
  me = session.user;
  $("me").textContent = me;
  $("sign-in").hidden = true;
  $("whoami").hidden = false;
  $("chat").hidden = false;
  setConnection("connecting");
  const cursor = await untilReachable(() => loadRooms());
  // The library's stream helper reads /v1/events with fetch, authenticated by the HttpOnly stream
  // cookie (`?session=` names it); it renews the cookie (POST /v1/session) before it runs out and on
  // `event: reauth`, and resumes with Last-Event-ID after any disconnect.
  stream = api.stream({
    cursor,
    session: { id: session.stream_session, expiresIn: session.expires_in, renew: () => api.openSession() },
    onEvent: (event) => onEvent(event.type, event),
    onTyping,
    onReset: reloadEverything,
    onState: (state) => state !== "closed" && setConnection(state),
  });
  const last = sessionStorage.getItem(ROOM_KEY); // a reload reopens the room that was open
  if (last && rooms.has(last)) await openRoom(last);
}

function setConnection(state) {
  const el = $("connection");
  el.hidden = false;
  el.dataset.state = state;
  el.textContent = { connecting: "Connecting…", live: "Live", reconnecting: "Reconnecting…" }[state];
}

// -- rooms ------------------------------------------------------------------------------------------

function newRoom(item) {
  const room = {
    id: item.id,
    name: item.name,
    kind: "group",
    topic: null,
    createdBy: item.created_by,
    seenSeq: 0,
    unread: 0,
    mentions: 0, // unread messages of others that mention me
    lastMessage: null,
    activity: item.created_at,
    members: null, // [{user_id, role, last_read_seq}] once fetched
    messages: null, // Map seq -> message once the timeline is loaded
    hasMore: false,
    loading: false,
    loadingOlder: false,
    buffer: [],
    readSent: 0,
    readWanted: 0,
    el: null,
  };
  applyRoom(room, item);
  return room;
}

/** The room's own fields from a room object (listing, detail, room.created, room.updated, PATCH):
 * never its counts, which in an event or another member's answer are someone else's. */
function applyRoom(room, item) {
  room.name = item.name;
  room.kind = item.kind || "group";
  room.topic = item.topic ?? null;
  room.createdBy = item.created_by;
  if (item.members) room.members = item.members;
}

/** A room as the listing (or GET /v1/rooms/{id}) shows it now, to the caller. */
function takeListed(item) {
  let room = rooms.get(item.id);
  if (!room) rooms.set(item.id, (room = newRoom(item)));
  applyRoom(room, item);
  room.seenSeq = Math.max(room.seenSeq, item.last_seq);
  room.unread = item.unread_count;
  room.mentions = item.mention_count ?? 0;
  room.lastMessage = item.last_message;
  room.activity = item.last_message ? item.last_message.created_at : item.created_at;
  return room;
}

function titleOf(room) {
  return room.kind === "direct" ? partnerOf(room, me) : room.name;
}

async function loadRooms() {
  let cursor = null;
  let streamCursor = null;
  const listed = new Set();
  do {
    const page = await api.listRooms({ limit: 100, cursor });
    if (streamCursor === null) streamCursor = page.stream_cursor;
    for (const item of page.items) {
      takeListed(item);
      listed.add(item.id);
    }
    cursor = page.next_cursor;
  } while (cursor && listed.size < 1000);
  for (const id of [...rooms.keys()]) if (!listed.has(id)) dropRoom(id);
  renderRooms();
  return streamCursor;
}

async function fetchRoom(roomId) {
  // A room we do not know yet (added to it, or it appeared between listing and stream).
  if (fetching.has(roomId)) return;
  fetching.set(roomId, []);
  let detail = null;
  try {
    detail = await api.getRoom(roomId);
  } catch {
    // 404: removed again meanwhile
  }
  const held = fetching.get(roomId);
  fetching.delete(roomId);
  if (!detail) return;
  takeListed(detail);
  renderRooms();
  for (const [kind, data] of held) onEvent(kind, data);
}

function dropRoom(roomId) {
  const room = rooms.get(roomId);
  if (!room) return;
  rooms.delete(roomId);
  typers.delete(roomId);
  if (room.el) room.el.remove();
  if (thread && thread.roomId === roomId) closeThread();
  if (activeId === roomId) closeRoom();
}

function byActivity(a, b) {
  return a.activity < b.activity ? 1 : a.activity > b.activity ? -1 : 0;
}

function renderRooms() {
  const sorted = [...rooms.values()].sort(byActivity);
  placeRooms($("dm-list"), sorted.filter((room) => room.kind === "direct"));
  placeRooms($("room-list"), sorted.filter((room) => room.kind !== "direct"));
  $("no-rooms").hidden = rooms.size > 0;
  $("new-room-box").open ||= rooms.size === 0;
}

function placeRooms(list, sorted) {
  sorted.forEach((room, i) => {
    const el = roomElement(room);
    if (list.children[i] !== el) list.insertBefore(el, list.children[i] || null);
  });
  const ids = new Set(sorted.map((room) => room.id));
  for (const li of [...list.children]) if (!ids.has(li.dataset.roomId)) li.remove();
}

function roomElement(room) {
  if (!room.el) {
    const li = document.createElement("li");
    li.dataset.roomId = room.id;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "room-button";
    button.innerHTML =
      '<span class="room-name"></span>' +
      '<span class="mention-badge" hidden>@<span class="mention-count"></span>' +
      '<span class="visually-hidden mention-word"></span></span>' +
      '<span class="badge" hidden><span class="count"></span>' +
      '<span class="visually-hidden"> unread</span></span><span class="preview"></span>';
    button.addEventListener("click", () => openRoom(room.id));
    li.append(button);
    room.el = li;
  }
  const button = room.el.firstChild;
  button.querySelector(".room-name").textContent = titleOf(room);
  const badge = button.querySelector(".badge");
  badge.hidden = room.unread === 0;
  button.querySelector(".count").textContent = room.unread >= 1000 ? "999+" : String(room.unread);
  const mentions = button.querySelector(".mention-badge");
  mentions.hidden = room.mentions === 0;
  button.querySelector(".mention-count").textContent = room.mentions >= 1000 ? "999+" : String(room.mentions);
  button.querySelector(".mention-word").textContent = room.mentions === 1 ? " mention" : " mentions";
  const last = room.lastMessage;
  button.querySelector(".preview").textContent = !last
    ? ""
    : last.deleted
      ? `${last.sender}: (deleted)`
      : `${last.sender}: ${last.body}`;
  if (room.id === activeId) button.setAttribute("aria-current", "true");
  else button.removeAttribute("aria-current");
  return room.el;
}

async function openRoom(roomId) {
  const room = rooms.get(roomId);
  if (!room) return;
  activeId = roomId;
  sessionStorage.setItem(ROOM_KEY, roomId);
  document.body.classList.add("in-room");
  $("no-room").hidden = true;
  $("room-view").hidden = false;
  $("room-error").textContent = "";
  $("room-settings").hidden = true;
  if (thread && thread.roomId !== roomId) closeThread();
  renderRooms();
  renderHeader(room);
  renderTyping();
  $("messages").replaceChildren();
  readObserver.disconnect();
  visible.clear();
  if (room.messages) renderTimeline(room);
  else await loadNewest(room);
  if (activeId === roomId) $("composer-body").focus();
  try {
    // Members only: its last_seq must not move seenSeq past events the timeline has not seen.
    room.members = (await api.getRoom(roomId)).members;
    if (activeId === roomId) renderHeader(room);
    renderRooms(); // a direct room's title comes from its members
  } catch {
    // shown next time
  }
}

function closeRoom() {
  activeId = null;
  sessionStorage.removeItem(ROOM_KEY);
  document.body.classList.remove("in-room");
  $("room-view").hidden = true;
  $("no-room").hidden = false;
  closeThread();
  renderRooms();
}

function isOwner(room) {
  const mine = (room.members || []).find((m) => m.user_id === me);
  return Boolean(mine && mine.role === "owner");
}

function renderHeader(room) {
  $("room-title").textContent = titleOf(room);
  $("room-topic").textContent = room.topic || "";
  $("room-topic").hidden = !room.topic;
  const members = room.members || [];
  if (room.kind === "direct") {
    $("room-members").textContent = `Direct message with ${partnerOf(room, me)}`;
  } else {
    $("room-members").textContent = members.length
      ? "Members: " + members.map((m) => (m.role === "owner" ? `${m.user_id} (owner)` : m.user_id)).join(", ")
      : "";
  }
  const owner = isOwner(room) && room.kind !== "direct"; // a direct room has no owner
  $("add-member").hidden = !owner;
  $("edit-room").hidden = !owner || !$("room-settings").hidden;
  if (!owner) $("room-settings").hidden = true;
  const mine = members.find((m) => m.user_id === me);
  if (mine) room.readSent = Math.max(room.readSent, mine.last_read_seq);
}

function editRoom() {
  const room = rooms.get(activeId);
  if (!room) return;
  $("room-name-input").value = room.name;
  $("room-topic-input").value = room.topic || "";
  $("room-settings").hidden = false;
  $("edit-room").hidden = true;
  $("room-name-input").focus();
}

function stopEditingRoom() {
  $("room-settings").hidden = true;
  const room = rooms.get(activeId);
  if (room) renderHeader(room);
  $("edit-room").focus();
}

async function saveRoom() {
  const room = rooms.get(activeId);
  if (!room) return;
  const name = $("room-name-input").value.trim();
  const topic = $("room-topic-input").value.trim() || null;
  const changes = {};
  if (name && name !== room.name) changes.name = name;
  if (topic !== room.topic) changes.topic = topic;
  try {
    if (Object.keys(changes).length > 0) applyRoom(room, await api.updateRoom(room.id, changes));
    $("room-error").textContent = "";
    stopEditingRoom();
    renderRooms();
  } catch (error) {
    $("room-error").textContent = `Not saved: ${error.message}`;
  }
}

async function startDirect(user) {
  try {
    const room = takeListed((await api.openDirect(user)).room);
    $("room-error").textContent = "";
    renderRooms();
    await openRoom(room.id);
    return true;
  } catch (error) {
    $("room-error").textContent = `No direct message: ${error.message}`;
    return false;
  }
}

// -- the timeline -----------------------------------------------------------------------------------

/**
 * Whether `seq` belongs in the loaded timeline: the timeline holds one unbroken run of messages up
 * to the newest, so a change to an older message outside it (a reaction, an edit, a thread's root)
 * must not be inserted there, or paging older would skip what lies between.
 */
function inWindow(room, seq) {
  if (!room.messages) return false;
  if (!room.hasMore || room.messages.size === 0 || room.messages.has(seq)) return true;
  return seq >= Math.min(...room.messages.keys());
}

async function loadNewest(room) {
  room.loading = true;
  room.buffer = [];
  try {
    const page = await api.history(room.id, { limit: PAGE });
    room.messages = new Map(page.items.map((m) => [m.seq, m]));
    room.hasMore = page.has_more;
  } catch (error) {
    room.messages = null;
    if (activeId === room.id) $("room-error").textContent = `Cannot load the messages: ${error.message}`;
    return;
  } finally {
    room.loading = false;
  }
  // Events that arrived during the load: applying a message again is harmless (same object).
  for (const message of room.buffer) if (inWindow(room, message.seq)) room.messages.set(message.seq, message);
  room.buffer = [];
  if (activeId === room.id) renderTimeline(room);
}

async function loadOlder(room) {
  if (room.loadingOlder || !room.hasMore || !room.messages || room.messages.size === 0) return;
  room.loadingOlder = true;
  try {
    const oldest = Math.min(...room.messages.keys());
    const page = await api.history(room.id, { limit: PAGE, before: oldest }); // keyset: seq < oldest
    const timeline = $("timeline");
    const fromBottom = timeline.scrollHeight - timeline.scrollTop;
    for (const message of page.items) {
      if (room.messages.has(message.seq)) continue;
      room.messages.set(message.seq, message);
      if (activeId === room.id) placeMessage(messageElement(message));
    }
    room.hasMore = page.has_more;
    if (activeId === room.id) {
      timeline.scrollTop = timeline.scrollHeight - fromBottom; // keep what the reader was looking at
      renderHistoryEdge(room);
    }
  } catch (error) {
    $("room-error").textContent = `Cannot load older messages: ${error.message}`;
  } finally {
    room.loadingOlder = false;
  }
}

function renderHistoryEdge(room) {
  $("load-older").hidden = !room.hasMore;
  $("history-start").hidden = room.hasMore;
}

function renderTimeline(room) {
  const list = $("messages");
  const pending = [...list.querySelectorAll("li.pending")];
  list.replaceChildren();
  readObserver.disconnect();
  visible.clear();
  for (const seq of [...room.messages.keys()].sort((a, b) => a - b)) {
    const li = messageElement(room.messages.get(seq));
    list.append(li);
    if (li.dataset.sender !== me) readObserver.observe(li);
  }
  list.append(...pending.filter((li) => li.dataset.roomId === room.id));
  renderHistoryEdge(room);
  scrollToBottom();
}

function nearBottom() {
  const t = $("timeline");
  return t.scrollHeight - t.scrollTop - t.clientHeight < 80;
}

function scrollToBottom() {
  const t = $("timeline");
  t.scrollTop = t.scrollHeight;
}

/**
 * Puts a message element into `list` in seq order, before any pending (unsent) ones, or in place
 * of the element of the same seq; keyboard focus stays on the same control of that message.
 */
function placeIn(list, li) {
  const seq = Number(li.dataset.seq);
  const old = list.querySelector(`li[data-seq="${seq}"]`);
  if (old) {
    if (old.classList.contains("found")) li.classList.add("found");
    const focused = old.contains(document.activeElement) ? document.activeElement : null;
    old.replaceWith(li);
    if (focused) {
      const key = focused.dataset.focusKey;
      const same = key && li.querySelector(`[data-focus-key="${CSS.escape(key)}"]`);
      (same || li.querySelector("button") || $("composer-body")).focus();
    }
    return old;
  }
  let next = null;
  for (const other of list.children) {
    if (other.classList.contains("pending") || Number(other.dataset.seq) > seq) {
      next = other;
      break;
    }
  }
  list.insertBefore(li, next);
  return null;
}

/** Inserts or replaces a message element of the open room's timeline. */
function placeMessage(li) {
  const old = placeIn($("messages"), li);
  if (old) readObserver.unobserve(old);
  if (li.dataset.sender !== me) readObserver.observe(li);
}

function formatTime(iso) {
  return new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

/** The body with mentions as highlighted spans (mentions of me stand out more). */
function bodyContent(el, message) {
  for (const part of mentionParts(message.body, message.mentions)) {
    if (part.text !== undefined) {
      el.append(part.text);
      continue;
    }
    const span = document.createElement("span");
    span.className = part.mention === me ? "mention me" : "mention";
    span.textContent = `@${part.mention}`;
    el.append(span);
  }
}

/** A message as a list item; `place` is "timeline", "root" or "reply" (the thread pane). */
function messageElement(message, place = "timeline") {
  const li = document.createElement("li");
  li.className = "message";
  li.dataset.seq = String(message.seq);
  li.dataset.sender = message.sender;
  const mine = message.sender === me;
  li.classList.toggle("mine", mine);
  li.classList.toggle("deleted", message.deleted);
  li.classList.toggle("mentions-me", !mine && !message.deleted && (message.mentions || []).includes(me));

  const meta = document.createElement("p");
  meta.className = "meta";
  const sender = document.createElement("span");
  sender.className = "sender";
  sender.textContent = mine ? `${message.sender} (you)` : message.sender;
  const time = document.createElement("time");
  time.dateTime = message.created_at;
  time.textContent = formatTime(message.created_at);
  meta.append(sender, " ", time);
  if (message.edited_at && !message.deleted) {
    const edited = document.createElement("span");
    edited.className = "edited";
    edited.textContent = " (edited)";
    meta.append(edited);
  }
  if (message.thread_root != null && place === "timeline") {
    const link = button("in a thread", "Open the thread this message replies in", () =>
      openThread(message.room_id, message.thread_root),
    );
    link.className = "link in-thread";
    link.dataset.focusKey = "in-thread";
    meta.append(" · ", link);
  }

  const body = document.createElement("p");
  body.className = "body";
  if (message.deleted) body.textContent = "Message deleted";
  else bodyContent(body, message);
  li.append(meta, body);

  const foot = document.createElement("div");
  foot.className = "foot";
  if (!message.deleted) foot.append(reactionsElement(message));
  const actions = document.createElement("div");
  actions.className = "actions";
  if (place === "timeline" && message.thread_root == null) {
    const replies = message.reply_count || 0;
    if (replies > 0 || !message.deleted) {
      const open = button(
        replies > 0 ? plural(replies, "reply", "replies") : "Reply in thread",
        replies > 0 ? `${plural(replies, "reply", "replies")}: open the thread` : "Reply in a thread",
        () => openThread(message.room_id, message.seq),
      );
      open.classList.add("thread-link");
      open.classList.toggle("has-replies", replies > 0);
      open.dataset.focusKey = "thread";
      actions.append(open);
    }
  }
  if (mine && !message.deleted) {
    const edit = button("Edit", `Edit your message from ${time.textContent}`, () => startEdit(li, message));
    const remove = button("Delete", `Delete your message from ${time.textContent}`, () =>
      deleteMessage(message),
    );
    edit.dataset.focusKey = "edit";
    remove.dataset.focusKey = "delete";
    actions.append(edit, remove);
  }
  if (actions.children.length > 0) foot.append(actions);
  if (foot.children.length > 0) li.append(foot);
  return li;
}

/** Each reaction with its count (mine pressed), then the quick ones not used yet. */
function reactionsElement(message) {
  const row = document.createElement("div");
  row.className = "reactions";
  const used = new Set();
  for (const reaction of message.reactions || []) {
    used.add(reaction.emoji);
    const mine = reactedBy(reaction, me);
    const chip = button(
      `${reaction.emoji} ${reaction.count}`,
      `${reaction.emoji} ${reaction.count}: ${mine ? "take back your reaction" : "react too"}`,
      () => toggleReaction(message, reaction.emoji, !mine),
    );
    chip.className = "reaction";
    chip.dataset.emoji = reaction.emoji;
    chip.dataset.focusKey = `react:${reaction.emoji}`;
    chip.setAttribute("aria-pressed", String(mine));
    chip.title = reaction.users.join(", ") + (reaction.count > reaction.users.length ? ", …" : "");
    row.append(chip);
  }
  for (const emoji of QUICK_REACTIONS) {
    if (used.has(emoji)) continue;
    const add = button(emoji, `React with ${emoji}`, () => toggleReaction(message, emoji, true));
    add.className = "reaction add";
    add.dataset.emoji = emoji;
    add.dataset.focusKey = `react:${emoji}`;
    row.append(add);
  }
  return row;
}

/** The freshest copy of a message this page holds (timeline or thread pane), else `fallback`. */
function heldMessage(room, seq, fallback) {
  const inTimeline = room.messages && room.messages.get(seq);
  if (inTimeline) return inTimeline;
  if (thread && thread.roomId === room.id) {
    if (thread.root && thread.root.seq === seq) return thread.root;
    if (thread.replies.has(seq)) return thread.replies.get(seq);
  }
  return fallback;
}

async function toggleReaction(message, emoji, on) {
  const room = rooms.get(message.room_id);
  if (!room) return;
  try {
    const answer = on
      ? (await api.addReaction(room.id, message.seq, emoji)).message
      : await api.removeReaction(room.id, message.seq, emoji);
    // PUT answers the message; DELETE answers nothing (the stream brings the whole message too).
    upsertMessage(room, answer || withoutReaction(heldMessage(room, message.seq, message), emoji, me));
    $("room-error").textContent = "";
  } catch (error) {
    $("room-error").textContent = `Reaction not ${on ? "added" : "removed"}: ${error.message}`;
  }
}

function button(text, label, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "small";
  b.textContent = text;
  b.setAttribute("aria-label", label);
  b.addEventListener("click", onClick);
  return b;
}

/** A message as it is now (a REST answer or an event), wherever this page shows it. */
function upsertMessage(room, message) {
  placeInThread(room, message);
  if (!inWindow(room, message.seq)) return;
  room.messages.set(message.seq, message);
  if (activeId !== room.id) return;
  const stick = nearBottom() || message.sender === me;
  placeMessage(messageElement(message));
  if (stick) scrollToBottom();
}

function startEdit(li, message) {
  const form = document.createElement("form");
  form.className = "edit";
  const label = document.createElement("label");
  label.className = "visually-hidden";
  label.textContent = "Edit message";
  const area = document.createElement("textarea");
  area.value = message.body;
  area.required = true;
  area.rows = 2;
  area.id = label.htmlFor = `edit-${message.seq}`;
  const save = document.createElement("button");
  save.type = "submit";
  save.textContent = "Save";
  const body = li.querySelector(".body");
  const foot = li.querySelector(".foot");
  const stop = () => {
    form.replaceWith(body);
    foot.hidden = false;
    foot.querySelector(".actions button:not(.thread-link)").focus();
  };
  form.append(label, area, save, button("Cancel", "Cancel editing", stop));
  body.replaceWith(form);
  foot.hidden = true;
  area.focus();
  area.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      stop();
    } else if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!area.value.trim()) return;
    const room = rooms.get(message.room_id);
    try {
      const edited = await api.editMessage(message.room_id, message.seq, area.value);
      $("room-error").textContent = "";
      upsertMessage(room, edited);
    } catch (error) {
      $("room-error").textContent = `Not saved: ${error.message}`;
    }
  });
}

async function deleteMessage(message) {
  const room = rooms.get(message.room_id);
  try {
    await api.deleteMessage(message.room_id, message.seq);
    $("room-error").textContent = "";
    const held = heldMessage(room, message.seq, message);
    upsertMessage(room, { ...held, body: null, deleted: true, mentions: [], reactions: [] });
  } catch (error) {
    $("room-error").textContent = `Not deleted: ${error.message}`;
  }
}

// -- threads ----------------------------------------------------------------------------------------

/** Opens the pane of the thread whose root is `rootSeq` in room `roomId`: root, replies, composer. */
async function openThread(roomId, rootSeq) {
  const room = rooms.get(roomId);
  if (!room) return;
  const mine = (thread = {
    roomId,
    rootSeq,
    root: (room.messages && room.messages.get(rootSeq)) || null,
    replies: new Map(), // seq -> reply; events that arrive during the load land here too
    hasMore: false,
    loaded: false,
  });
  $("thread").hidden = false;
  $("chat").classList.add("with-thread");
  document.body.classList.add("in-thread");
  $("thread-error").textContent = "";
  renderThread();
  try {
    const [root, page] = await Promise.all([
      mine.root ? null : api.getMessage(roomId, rootSeq),
      api.thread(roomId, rootSeq, { limit: 50 }),
    ]);
    if (thread !== mine) return;
    mine.root ||= root;
    for (const reply of page.items) if (!mine.replies.has(reply.seq)) mine.replies.set(reply.seq, reply);
    mine.hasMore = page.has_more;
    mine.loaded = true;
  } catch (error) {
    if (thread === mine) $("thread-error").textContent = `Cannot load the thread: ${error.message}`;
    return;
  }
  renderThread();
  $("thread-body").scrollTop = $("thread-body").scrollHeight;
  $("thread-reply").focus();
}

async function loadOlderReplies() {
  const mine = thread;
  if (!mine || !mine.hasMore || mine.replies.size === 0) return;
  try {
    const page = await api.thread(mine.roomId, mine.rootSeq, { limit: 50, before: Math.min(...mine.replies.keys()) });
    if (thread !== mine) return;
    for (const reply of page.items) if (!mine.replies.has(reply.seq)) mine.replies.set(reply.seq, reply);
    mine.hasMore = page.has_more;
    renderThread();
  } catch (error) {
    $("thread-error").textContent = `Cannot load older replies: ${error.message}`;
  }
}

function closeThread() {
  const wasOpen = thread !== null;
  thread = null;
  $("thread").hidden = true;
  $("chat").classList.remove("with-thread");
  document.body.classList.remove("in-thread");
  $("thread-root").replaceChildren();
  $("thread-replies").replaceChildren();
  if (wasOpen && activeId) $("composer-body").focus();
}

function renderThreadCount() {
  const root = thread.root;
  $("thread-count").textContent = !thread.loaded
    ? "Loading…"
    : plural(root ? root.reply_count || 0 : thread.replies.size, "reply", "replies");
  $("thread-older").hidden = !thread.hasMore;
}

function renderThread() {
  if (!thread) return;
  $("thread-root").replaceChildren(...(thread.root ? [messageElement(thread.root, "root")] : []));
  const seqs = [...thread.replies.keys()].sort((a, b) => a - b);
  $("thread-replies").replaceChildren(...seqs.map((seq) => messageElement(thread.replies.get(seq), "reply")));
  renderThreadCount();
}

/** Shows a message in the open thread pane when it is that thread's root or one of its replies. */
function placeInThread(room, message) {
  if (!thread || thread.roomId !== room.id) return;
  if (message.seq === thread.rootSeq) {
    thread.root = message;
    const li = messageElement(message, "root");
    if (!placeIn($("thread-root"), li)) $("thread-root").replaceChildren(li);
    renderThreadCount();
  } else if (message.thread_root === thread.rootSeq) {
    thread.replies.set(message.seq, message);
    const body = $("thread-body");
    const stick = body.scrollHeight - body.scrollTop - body.clientHeight < 80 || message.sender === me;
    placeIn($("thread-replies"), messageElement(message, "reply"));
    if (stick) body.scrollTop = body.scrollHeight;
  }
}

/** A new reply (message.created with thread_root): the server sends nothing for its root. */
function countReply(room, reply) {
  const root = heldMessage(room, reply.thread_root, null);
  const counted = withReply(root, reply);
  if (counted) upsertMessage(room, counted);
}

async function sendReply() {
  const area = $("thread-reply");
  const mine = thread;
  const room = mine && rooms.get(mine.roomId);
  if (!room || !area.value.trim()) return;
  const text = area.value;
  area.value = "";
  area.focus();
  $("thread-error").textContent = "";
  typingSent = { roomId: null, at: 0 };
  try {
    const reply = await sendWithRetry(room.id, text, newIdempotencyKey(), () => {
      $("thread-error").textContent = "Not sent yet: retrying…";
    }, mine.rootSeq);
    $("thread-error").textContent = "";
    upsertMessage(room, reply);
  } catch (error) {
    $("thread-error").textContent = `Not sent: ${error.message}`;
    if (!area.value) area.value = text; // give it back to try again
  }
}

// -- search -----------------------------------------------------------------------------------------

async function search(q, more = false) {
  let page;
  try {
    page = await api.search({ q, limit: 20, cursor: more ? searched.cursor : undefined });
  } catch (error) {
    $("search-results").hidden = false;
    $("search-title").textContent = "Search";
    $("search-list").replaceChildren();
    $("search-none").hidden = false;
    $("search-none").textContent = `Cannot search: ${error.message}`;
    $("search-more").hidden = true;
    return;
  }
  searched = { q, cursor: page.next_cursor };
  const list = $("search-list");
  if (!more) list.replaceChildren();
  for (const hit of page.items) list.append(searchHit(hit));
  $("search-results").hidden = false;
  $("search-title").textContent = `Results for “${q}”`;
  $("search-none").textContent = "No messages match.";
  $("search-none").hidden = list.children.length > 0;
  $("search-more").hidden = !page.next_cursor;
}

function searchHit(message) {
  const li = document.createElement("li");
  const hit = document.createElement("button");
  hit.type = "button";
  hit.className = "search-hit";
  hit.dataset.roomId = message.room_id;
  hit.dataset.seq = String(message.seq);
  const room = rooms.get(message.room_id);
  const where = document.createElement("span");
  where.className = "hit-where";
  where.textContent = room ? titleOf(room) : "a room";
  const time = document.createElement("time");
  time.className = "hit-time";
  time.dateTime = message.created_at;
  time.textContent = formatTime(message.created_at);
  const sender = document.createElement("span");
  sender.className = "hit-sender";
  sender.textContent = `${message.sender}: `;
  const body = document.createElement("span");
  body.className = "hit-body";
  bodyContent(body, message);
  const line = document.createElement("span");
  line.className = "hit-line";
  line.append(sender, body);
  hit.append(where, time, line);
  hit.addEventListener("click", () => jumpTo(message.room_id, message.seq));
  li.append(hit);
  return li;
}

function clearSearch() {
  searched = { q: "", cursor: null };
  $("search-results").hidden = true;
  $("search-list").replaceChildren();
  $("search-q").value = "";
  $("search-q").focus();
}

/** Opens the room and shows the message: older pages are loaded until it is there. */
async function jumpTo(roomId, seq) {
  if (!rooms.has(roomId)) await fetchRoom(roomId);
  const room = rooms.get(roomId);
  if (!room) return;
  if (activeId !== roomId || !room.messages) await openRoom(roomId);
  document.body.classList.add("in-room"); // a phone shows the room, not the list
  for (let pages = 0; activeId === roomId && room.messages && !room.messages.has(seq) && room.hasMore; ) {
    if (pages >= JUMP_PAGES) break;
    if (room.loadingOlder) {
      await sleep(50);
      continue;
    }
    pages += 1;
    await loadOlder(room);
  }
  if (activeId !== roomId) return;
  const li = $("messages").querySelector(`li[data-seq="${seq}"]`);
  if (!li) {
    $("room-error").textContent = "That message is too far back to show here.";
    return;
  }
  for (const other of $("messages").querySelectorAll("li.found")) other.classList.remove("found");
  li.classList.add("found");
  li.tabIndex = -1;
  li.scrollIntoView({ block: "center" });
  li.focus({ preventScroll: true });
}

// -- sending ----------------------------------------------------------------------------------------

/**
 * Sends until the service has the message: network errors and 503s are retried with the SAME
 * Idempotency-Key (the library keeps it), so a retry of a send that did arrive returns the first
 * message, never a copy.
 */
async function sendWithRetry(roomId, body, idempotencyKey, onRetry, replyTo) {
  const message = replyTo === undefined ? { body } : { body, reply_to: replyTo };
  return (await api.sendMessage(roomId, message, { idempotencyKey, attempts: Infinity, onRetry })).message;
}

async function send(room, text) {
  const key = newIdempotencyKey(); // one key per message, kept across retries
  const li = document.createElement("li");
  li.className = "message mine pending";
  li.dataset.roomId = room.id;
  li.dataset.key = key;
  const body = document.createElement("p");
  body.className = "body";
  body.textContent = text;
  const status = document.createElement("p");
  status.className = "status";
  status.textContent = "Sending…";
  li.append(body, status);
  $("messages").append(li);
  scrollToBottom();
  typingSent = { roomId: null, at: 0 }; // the next keystroke is news again
  try {
    const message = await sendWithRetry(room.id, text, key, () => {
      li.classList.add("retrying");
      status.textContent = "Not sent yet: retrying…";
    });
    li.remove();
    upsertMessage(room, message);
  } catch (error) {
    li.classList.add("failed");
    status.textContent = `Not sent: ${error.message} `;
    status.append(button("Discard", "Discard this unsent message", () => li.remove()));
  }
}

// -- typing -----------------------------------------------------------------------------------------

/** Tells the room "I am typing", at most once per TYPING_EVERY_MS (the server drops the rest). */
function noteTyping(roomId, text) {
  if (!roomId || !text.trim()) return;
  const now = Date.now();
  if (typingSent.roomId === roomId && now - typingSent.at < TYPING_EVERY_MS) return;
  typingSent = { roomId, at: now };
  api.typing(roomId).catch(() => {}); // best effort: a lost one only hides "is typing…"
}

function onTyping(data) {
  if (data.user_id === me || !rooms.has(data.room_id)) return;
  let inRoom = typers.get(data.room_id);
  if (!inRoom) typers.set(data.room_id, (inRoom = new Map()));
  clearTimeout(inRoom.get(data.user_id));
  const timer = setTimeout(() => stopTyping(data.room_id, data.user_id), typingFor(data.expires_at));
  inRoom.set(data.user_id, timer);
  if (data.room_id === activeId) renderTyping();
}

function stopTyping(roomId, user) {
  const inRoom = typers.get(roomId);
  if (!inRoom || !inRoom.has(user)) return;
  clearTimeout(inRoom.get(user));
  inRoom.delete(user);
  if (roomId === activeId) renderTyping();
}

function renderTyping() {
  const inRoom = typers.get(activeId);
  $("typing").textContent = typingLine(inRoom ? [...inRoom.keys()].sort() : []);
}

// -- read markers -----------------------------------------------------------------------------------

const visible = new Set(); // seqs of others' messages now on screen in the active room
let readTimer = null;
let readPending = null; // the room whose read marker waits out the debounce

const readObserver = new IntersectionObserver(
  (entries) => {
    for (const entry of entries) {
      const seq = Number(entry.target.dataset.seq);
      if (entry.isIntersecting) visible.add(seq);
      else visible.delete(seq);
    }
    noteRead();
  },
  { threshold: 0.6 },
);

function noteRead() {
  const room = rooms.get(activeId);
  if (!room || document.visibilityState !== "visible" || visible.size === 0) return;
  room.readWanted = Math.max(room.readWanted, ...visible);
  // One debounce timer: another room's marker still waiting (the reader moved on) goes now.
  if (readPending && readPending !== room) flushRead();
  readPending = room;
  clearTimeout(readTimer);
  readTimer = setTimeout(flushRead, 300);
}

function flushRead() {
  clearTimeout(readTimer);
  const room = readPending;
  readPending = null;
  if (room && rooms.get(room.id) === room) sendRead(room);
}

async function sendRead(room) {
  const seq = room.readWanted;
  if (seq <= room.readSent) return;
  room.readSent = seq;
  if (room.messages) {
    const unread = [...room.messages.values()].filter((m) => m.seq > seq && m.sender !== me && !m.deleted);
    room.unread = unread.length;
    room.mentions = unread.filter((m) => (m.mentions || []).includes(me)).length;
  } else {
    room.unread = 0;
    room.mentions = 0;
  }
  renderRooms();
  try {
    await api.markRead(room.id, seq);
  } catch {
    room.readSent = 0; // try again with the next message read
  }
}

// -- live events ------------------------------------------------------------------------------------

function onEvent(kind, data) {
  if (fetching.has(data.room_id)) {
    fetching.get(data.room_id).push([kind, data]);
    return;
  }
  let room = rooms.get(data.room_id);
  if (kind === "room.created") {
    if (!room) {
      room = newRoom(data.room);
      rooms.set(room.id, room);
    }
    room.seenSeq = Math.max(room.seenSeq, data.seq);
    renderRooms();
    return;
  }
  if (kind === "member.removed" && data.member.user_id === me) {
    dropRoom(data.room_id);
    return;
  }
  if (!room) {
    fetchRoom(data.room_id); // its state includes this event
    return;
  }
  if (data.seq <= room.seenSeq) return; // already reflected
  room.seenSeq = data.seq;

  if (kind === "room.updated") {
    applyRoom(room, data.room); // name, topic, members: the counts in it are the changer's
    renderRooms();
    if (activeId === room.id) renderHeader(room);
    for (const where of $("search-list").querySelectorAll(`[data-room-id="${CSS.escape(room.id)}"] .hit-where`)) {
      where.textContent = titleOf(room);
    }
    return;
  }

  if (kind === "member.added" || kind === "member.removed") {
    if (room.members) {
      const others = room.members.filter((m) => m.user_id !== data.member.user_id);
      room.members = kind === "member.added" ? [...others, data.member] : others;
    }
    if (activeId === room.id) renderHeader(room);
    return;
  }

  const message = data.message;
  if (kind === "message.created") {
    room.activity = message.created_at;
    if (message.sender !== me) {
      room.unread += 1;
      if ((message.mentions || []).includes(me)) room.mentions += 1;
    }
    stopTyping(room.id, message.sender);
  }
  if (!room.lastMessage || message.seq >= room.lastMessage.seq) room.lastMessage = message;
  if (room.loading) {
    room.buffer.push(message);
    placeInThread(room, message);
  } else {
    upsertMessage(room, message);
  }
  if (kind === "message.created" && message.thread_root != null) countReply(room, message);
  renderRooms();
  if (activeId === room.id) noteRead();
}

async function reloadEverything() {
  // `event: reset`: the stream could not replay everything; what we hold may be stale.
  for (const room of rooms.values()) {
    room.messages = null;
    room.seenSeq = 0;
  }
  await untilReachable(() => loadRooms());
  const room = rooms.get(activeId);
  if (room) await loadNewest(room);
  if (thread) openThread(thread.roomId, thread.rootSeq);
}

// -- wiring -----------------------------------------------------------------------------------------

function wire() {
  $("dev-sign-in").addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = $("dev-name").value.trim();
    if (!name) return;
    try {
      const minted = await devToken(name);
      if (!minted) {
        $("token-sign-in-box").open = true;
        showSignIn("This server has no sign-in by name (only chat-api dev has): use a bearer token.");
        return;
      }
      await start(minted.token, name);
    } catch (error) {
      showSignIn(`Cannot sign in: ${error.message}`);
    }
  });
  $("token-sign-in").addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    if (token) await start(token);
  });
  $("sign-out").addEventListener("click", signOut);

  $("new-room").addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = $("new-room-name").value.trim();
    const members = $("new-room-members")
      .value.split(",")
      .map((m) => m.trim())
      .filter(Boolean);
    if (!name) return;
    try {
      const room = takeListed(await api.createRoom({ name, members }));
      event.target.reset();
      $("new-room-box").open = false;
      $("room-error").textContent = "";
      renderRooms();
      await openRoom(room.id);
    } catch (error) {
      $("room-error").textContent = `Room not created: ${error.message}`;
    }
  });

  $("new-dm").addEventListener("submit", async (event) => {
    event.preventDefault();
    const user = $("new-dm-user").value.trim();
    if (!user) return;
    if (await startDirect(user)) {
      event.target.reset();
      $("new-dm-box").open = false;
    }
  });

  $("search").addEventListener("submit", (event) => {
    event.preventDefault();
    const q = $("search-q").value.trim();
    if (q) search(q);
  });
  $("search-more").addEventListener("click", () => search(searched.q, true));
  $("search-clear").addEventListener("click", clearSearch);

  $("add-member").addEventListener("submit", async (event) => {
    event.preventDefault();
    const room = rooms.get(activeId);
    const user = $("add-member-name").value.trim();
    if (!room || !user) return;
    try {
      const { member } = await api.addMember(room.id, user);
      room.members = [...(room.members || []).filter((m) => m.user_id !== user), member];
      renderHeader(room);
      event.target.reset();
      $("room-error").textContent = "";
    } catch (error) {
      $("room-error").textContent = `Not added: ${error.message}`;
    }
  });

  $("edit-room").addEventListener("click", editRoom);
  $("room-settings-cancel").addEventListener("click", stopEditingRoom);
  $("room-settings").addEventListener("submit", (event) => {
    event.preventDefault();
    saveRoom();
  });
  $("room-settings").addEventListener("keydown", (event) => {
    if (event.key === "Escape") stopEditingRoom();
  });

  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const area = $("composer-body");
    const room = rooms.get(activeId);
    if (!room || !area.value.trim()) return;
    const text = area.value;
    area.value = "";
    area.focus();
    send(room, text);
  });
  $("composer-body").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("composer-body").addEventListener("input", () => noteTyping(activeId, $("composer-body").value));

  $("thread-close").addEventListener("click", closeThread);
  $("thread-older").addEventListener("click", loadOlderReplies);
  $("thread-composer").addEventListener("submit", (event) => {
    event.preventDefault();
    sendReply();
  });
  $("thread-reply").addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      closeThread();
    } else if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("thread-composer").requestSubmit();
    }
  });
  $("thread-reply").addEventListener("input", () => {
    if (thread) noteTyping(thread.roomId, $("thread-reply").value);
  });

  $("load-older").addEventListener("click", () => {
    const room = rooms.get(activeId);
    if (room) loadOlder(room);
  });
  $("timeline").addEventListener("scroll", () => {
    const room = rooms.get(activeId);
    if (room && $("timeline").scrollTop < 120) loadOlder(room);
  });
  $("back").addEventListener("click", () => {
    document.body.classList.remove("in-room");
    const room = rooms.get(activeId);
    if (room && room.el) room.el.firstChild.focus();
  });
  document.addEventListener("visibilitychange", noteRead);
}

async function boot() {
  wire();
  const flash = sessionStorage.getItem(FLASH_KEY);
  sessionStorage.removeItem(FLASH_KEY);
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) await start(token, sessionStorage.getItem(DEV_NAME_KEY));
  else showSignIn(flash);
}

boot();
