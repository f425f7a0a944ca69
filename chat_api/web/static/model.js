// Pure functions over the service's objects (rooms, messages): no DOM, no page state.

/** The quick reactions every message offers. */
export const QUICK_REACTIONS = ["👍", "❤️", "😂", "🎉"];

const WORD = /[\p{L}\p{N}\p{M}_]/u;

/**
 * A body cut into text and mentions: [{text}, {mention: user_id}, ...]. Only the ids the server
 * listed in `message.mentions` count, each where `@id` ends at the end of the text or before a
 * non-word character; the longest id wins (as the server reads them).
 */
export function mentionParts(body, mentions) {
  const ids = [...(mentions || [])].sort((a, b) => b.length - a.length);
  const parts = [];
  let text = "";
  let i = 0;
  while (i < body.length) {
    if (body[i] === "@") {
      const id = ids.find((candidate) => {
        if (!body.startsWith(candidate, i + 1)) return false;
        const after = body.codePointAt(i + 1 + candidate.length);
        return after === undefined || !WORD.test(String.fromCodePoint(after));
      });
      if (id) {
        if (text) parts.push({ text });
        parts.push({ mention: id });
        text = "";
        i += 1 + id.length;
        continue;
      }
    }
    text += body[i];
    i += 1;
  }
  if (text) parts.push({ text });
  return parts;
}

/** Whether `user` is among a reaction's users (the server lists at most 50 of them). */
export function reactedBy(reaction, user) {
  return reaction.users.includes(user);
}

/** The message as it is once `user` has taken back `emoji` (DELETE answers 204, not the message). */
export function withoutReaction(message, emoji, user) {
  const reactions = (message.reactions || [])
    .map((r) =>
      r.emoji === emoji && reactedBy(r, user)
        ? { ...r, count: r.count - 1, users: r.users.filter((u) => u !== user) }
        : r,
    )
    .filter((r) => r.count > 0);
  return { ...message, reactions };
}

/**
 * A thread root once `reply` (a message.created with thread_root) is counted, or null when the
 * root already counts it: the server sends no event for the root, and a root read after the reply
 * was written already has it.
 */
export function withReply(root, reply) {
  if (!root || reply.seq <= (root.last_reply_seq ?? 0)) return null;
  return { ...root, reply_count: (root.reply_count || 0) + 1, last_reply_seq: reply.seq };
}

/** "alice is typing…", "alice and bob are typing…", "Several people are typing…", or "". */
export function typingLine(names) {
  if (names.length === 0) return "";
  if (names.length === 1) return `${names[0]} is typing…`;
  if (names.length === 2) return `${names[0]} and ${names[1]} are typing…`;
  return "Several people are typing…";
}

/** Milliseconds until a typing frame's `expires_at`; the server's 5 s if the clocks disagree. */
export function typingFor(expiresAt, now = Date.now()) {
  const ms = Date.parse(expiresAt) - now;
  return ms > 0 && ms <= 10_000 ? ms : 5000;
}

/**
 * The other person of a direct room: from its members when known, else from its name, which the
 * server makes "<low id>, <high id>".
 */
export function partnerOf(room, me) {
  const other = (room.members || []).find((m) => m.user_id !== me);
  if (other) return other.user_id;
  if (room.name.startsWith(`${me}, `)) return room.name.slice(me.length + 2);
  if (room.name.endsWith(`, ${me}`)) return room.name.slice(0, -(me.length + 2));
  return room.name;
}

export function plural(n, one, many) {
  return `${n} ${n === 1 ? one : many}`;
}
