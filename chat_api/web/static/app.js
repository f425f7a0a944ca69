// The chat page: sign-in, room list with unread badges, a timeline with keyset paging, a composer
// with idempotent retries, edit/delete of one's own messages, read markers, and live updates.
//
// Client rule of the event stream: apply by (room_id, seq) and ignore what is already there. Each
// room keeps `seenSeq`, the newest seq it reflects (from the listing, then from events); an event
// at or below it is skipped. REST answers (a sent or edited message) update the timeline but never
// `seenSeq`, so no event can be skipped because of them.

import { Api, ApiError, devToken, newKey, sendWithRetry, sleep, tokenSource } from "./api.js";
import { EventStream } from "./stream.js";

const TOKEN_KEY = "chat-api.token";
const DEV_NAME_KEY = "chat-api.dev-name"; // signed in by name (chat-api dev): tokens are renewed
const FLASH_KEY = "chat-api.flash";
const ROOM_KEY = "chat-api.room";
const PAGE = 50;

const $ = (id) => document.getElementById(id);

let api = null;
let stream = null;
let me = null;
let activeId = null;
let leaving = false;
const rooms = new Map(); // room id -> room state (see newRoom)
const fetching = new Map(); // room id -> events that arrived while the room was being fetched

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
  if (stream) stream.stop();
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(DEV_NAME_KEY);
  sessionStorage.removeItem(ROOM_KEY);
  if (message) sessionStorage.setItem(FLASH_KEY, message);
  location.reload();
}

async function signOut() {
  if (stream) stream.stop();
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
      if (error instanceof ApiError) throw error;
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
  api = new Api(tokensFor(token, devName), () => leave("Your sign-in is no longer valid: sign in again."));
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
  stream = new EventStream(session.events_url, {
    onEvent,
    onReset: reloadEverything,
    onState: setConnection,
    beforeReopen: () => api.openSession(),
  });
  stream.start(cursor, session.expires_in);
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
  return {
    id: item.id,
    name: item.name,
    createdBy: item.created_by,
    seenSeq: 0,
    unread: 0,
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
}

/** A room as the listing (or GET /v1/rooms/{id}) shows it now. */
function takeListed(item) {
  let room = rooms.get(item.id);
  if (!room) rooms.set(item.id, (room = newRoom(item)));
  room.name = item.name;
  room.seenSeq = Math.max(room.seenSeq, item.last_seq);
  room.unread = item.unread_count;
  room.lastMessage = item.last_message;
  room.activity = item.last_message ? item.last_message.created_at : item.created_at;
  if (item.members) room.members = item.members;
  return room;
}

async function loadRooms() {
  let cursor = null;
  let streamCursor = null;
  const listed = new Set();
  do {
    const page = await api.listRooms(cursor);
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
    detail = await api.room(roomId);
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
  if (room.el) room.el.remove();
  if (activeId === roomId) closeRoom();
}

function byActivity(a, b) {
  return a.activity < b.activity ? 1 : a.activity > b.activity ? -1 : 0;
}

function renderRooms() {
  const list = $("room-list");
  const sorted = [...rooms.values()].sort(byActivity);
  sorted.forEach((room, i) => {
    const el = roomElement(room);
    if (list.children[i] !== el) list.insertBefore(el, list.children[i] || null);
  });
  for (const li of [...list.children]) if (!rooms.has(li.dataset.roomId)) li.remove();
  $("no-rooms").hidden = rooms.size > 0;
  $("new-room-box").open ||= rooms.size === 0;
}

function roomElement(room) {
  if (!room.el) {
    const li = document.createElement("li");
    li.dataset.roomId = room.id;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "room-button";
    button.innerHTML =
      '<span class="room-name"></span><span class="badge" hidden><span class="count"></span>' +
      '<span class="visually-hidden"> unread</span></span><span class="preview"></span>';
    button.addEventListener("click", () => openRoom(room.id));
    li.append(button);
    room.el = li;
  }
  const button = room.el.firstChild;
  button.querySelector(".room-name").textContent = room.name;
  const badge = button.querySelector(".badge");
  badge.hidden = room.unread === 0;
  button.querySelector(".count").textContent = room.unread >= 1000 ? "999+" : String(room.unread);
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
  $("room-title").textContent = room.name;
  renderRooms();
  renderHeader(room);
  $("messages").replaceChildren();
  readObserver.disconnect();
  visible.clear();
  if (room.messages) renderTimeline(room);
  else await loadNewest(room);
  if (activeId === roomId) $("composer-body").focus();
  try {
    // Members only: its last_seq must not move seenSeq past events the timeline has not seen.
    room.members = (await api.room(roomId)).members;
    if (activeId === roomId) renderHeader(room);
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
  renderRooms();
}

function renderHeader(room) {
  $("room-title").textContent = room.name;
  const members = room.members || [];
  $("room-members").textContent = members.length
    ? "Members: " + members.map((m) => (m.role === "owner" ? `${m.user_id} (owner)` : m.user_id)).join(", ")
    : "";
  const mine = members.find((m) => m.user_id === me);
  $("add-member").hidden = !(mine && mine.role === "owner");
  if (mine) room.readSent = Math.max(room.readSent, mine.last_read_seq);
}

// -- the timeline -----------------------------------------------------------------------------------

async function loadNewest(room) {
  room.loading = true;
  room.buffer = [];
  try {
    const page = await api.history(room.id, undefined, PAGE);
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
  for (const message of room.buffer) room.messages.set(message.seq, message);
  room.buffer = [];
  if (activeId === room.id) renderTimeline(room);
}

async function loadOlder(room) {
  if (room.loadingOlder || !room.hasMore || !room.messages || room.messages.size === 0) return;
  room.loadingOlder = true;
  try {
    const oldest = Math.min(...room.messages.keys());
    const page = await api.history(room.id, oldest, PAGE); // keyset: seq < oldest
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

/** Inserts a message element in seq order, before any pending (unsent) ones; replaces an old one. */
function placeMessage(li) {
  const list = $("messages");
  const seq = Number(li.dataset.seq);
  const old = list.querySelector(`li[data-seq="${seq}"]`);
  if (old) {
    readObserver.unobserve(old);
    if (old.contains(document.activeElement)) {
      // Keep keyboard focus on the same message's counterpart.
      old.replaceWith(li);
      (li.querySelector("button") || $("composer-body")).focus();
    } else {
      old.replaceWith(li);
    }
  } else {
    let next = null;
    for (const other of list.children) {
      if (other.classList.contains("pending") || Number(other.dataset.seq) > seq) {
        next = other;
        break;
      }
    }
    list.insertBefore(li, next);
  }
  if (li.dataset.sender !== me) readObserver.observe(li);
}

function formatTime(iso) {
  return new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function messageElement(message) {
  const li = document.createElement("li");
  li.className = "message";
  li.dataset.seq = String(message.seq);
  li.dataset.sender = message.sender;
  const mine = message.sender === me;
  li.classList.toggle("mine", mine);
  li.classList.toggle("deleted", message.deleted);

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

  const body = document.createElement("p");
  body.className = "body";
  body.textContent = message.deleted ? "Message deleted" : message.body;
  li.append(meta, body);

  if (mine && !message.deleted) {
    const actions = document.createElement("div");
    actions.className = "actions";
    const edit = button("Edit", `Edit your message from ${time.textContent}`, () => startEdit(li, message));
    const remove = button("Delete", `Delete your message from ${time.textContent}`, () =>
      deleteMessage(message),
    );
    actions.append(edit, remove);
    li.append(actions);
  }
  return li;
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

function upsertMessage(room, message) {
  if (!room.messages) return;
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
  const actions = li.querySelector(".actions");
  const stop = () => {
    form.replaceWith(body);
    actions.hidden = false;
    actions.querySelector("button").focus();
  };
  form.append(label, area, save, button("Cancel", "Cancel editing", stop));
  body.replaceWith(form);
  actions.hidden = true;
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
      const edited = await api.edit(message.room_id, message.seq, area.value);
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
    await api.remove(message.room_id, message.seq);
    $("room-error").textContent = "";
    upsertMessage(room, { ...message, body: null, deleted: true });
  } catch (error) {
    $("room-error").textContent = `Not deleted: ${error.message}`;
  }
}

// -- sending ----------------------------------------------------------------------------------------

async function send(room, text) {
  const key = newKey(); // one key per message, kept across retries
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
  try {
    const message = await sendWithRetry(api, room.id, text, key, () => {
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

// -- read markers -----------------------------------------------------------------------------------

const visible = new Set(); // seqs of others' messages now on screen in the active room
let readTimer = null;

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
  clearTimeout(readTimer);
  readTimer = setTimeout(() => sendRead(room), 300);
}

async function sendRead(room) {
  const seq = room.readWanted;
  if (seq <= room.readSent) return;
  room.readSent = seq;
  if (room.messages) {
    room.unread = [...room.messages.values()].filter(
      (m) => m.seq > seq && m.sender !== me && !m.deleted,
    ).length;
  } else {
    room.unread = 0;
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
      room.members = data.room.members;
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
    if (message.sender !== me) room.unread += 1;
  }
  if (!room.lastMessage || message.seq >= room.lastMessage.seq) room.lastMessage = message;
  if (room.loading) room.buffer.push(message);
  else upsertMessage(room, message);
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
      const room = takeListed(await api.createRoom(name, members));
      event.target.reset();
      $("new-room-box").open = false;
      $("room-error").textContent = "";
      renderRooms();
      await openRoom(room.id);
    } catch (error) {
      $("room-error").textContent = `Room not created: ${error.message}`;
    }
  });

  $("add-member").addEventListener("submit", async (event) => {
    event.preventDefault();
    const room = rooms.get(activeId);
    const user = $("add-member-name").value.trim();
    if (!room || !user) return;
    try {
      const member = await api.addMember(room.id, user);
      room.members = [...(room.members || []).filter((m) => m.user_id !== user), member];
      renderHeader(room);
      event.target.reset();
      $("room-error").textContent = "";
    } catch (error) {
      $("room-error").textContent = `Not added: ${error.message}`;
    }
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
