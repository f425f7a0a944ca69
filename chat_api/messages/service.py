"""Messages: send (idempotent), history and thread pages, one message, edit, delete, reactions, read
markers.

A message's JSON, in the one shape clients get everywhere (REST answers and the event stream
alike), is written by PostgreSQL with the row (messages.doc, migration 0004) and handed through as
text, never parsed in Python.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

import asyncpg
import orjson

from chat_api.core.db import Database
from chat_api.core.errors import NotAMember
from chat_api.events import log
from chat_api.events.contract import EventKind, room_lock_key, sql_envelope
from chat_api.messages.errors import (
    IdempotencyKeyReused,
    MessageDeleted,
    NoSuchMessage,
    NoSuchReplyTarget,
    NotAllowed,
    TooManyReactions,
)

# A send is one call of the database function chat_send() (migration 0003), on its own: it takes the
# room lock, then the next seq (only if the sender is a member, the reply target exists and the
# idempotency key is unused), inserts the message and logs the event, in one round trip; the doorbell
# is rung after it has committed (migration 0007, events/doorbell.py). NULL means nothing was
# written: the caller finds out why.
# Parameters: $1 room, $2 room lock key, $3 sender, $4 body, $5 reply_to, $6 idempotency key,
# $7 request hash.
SEND = "SELECT chat_send($1, $2, $3, $4, $5, $6, $7)"

_SEND_DIAGNOSIS = """
SELECT EXISTS (SELECT 1 FROM members WHERE room_id = $1 AND user_id = $2) AS member,
       keyed.room_id AS keyed_room, keyed.request_hash AS keyed_hash, keyed.j AS keyed_json
FROM (SELECT 1) AS one LEFT JOIN LATERAL (
    SELECT m.room_id, m.request_hash, m.doc AS j
    FROM messages m WHERE m.sender = $2 AND m.idempotency_key = $3
) AS keyed ON true
"""

# A page of history, and whether the caller is a member, in one statement: no row at all means
# not a member; one row with NULL means an empty page. Parameters: $1 room, $2 user, $3 limit, $4 seq.
_PAGE = """
SELECT page.j FROM (SELECT 1 FROM members WHERE room_id = $1 AND user_id = $2) AS member
LEFT JOIN LATERAL (
    SELECT m.doc AS j FROM messages m
    WHERE m.room_id = $1 {where} ORDER BY m.seq {order} LIMIT $3
) AS page ON true
"""
_PAGES = {
    "newest": _PAGE.format(where="", order="DESC"),
    "before": _PAGE.format(where="AND m.seq < $4", order="DESC"),
    "after": _PAGE.format(where="AND m.seq > $4", order="ASC"),
}
# A page of a thread's replies (index on room_id, thread_root, seq): as a history page, plus whether
# the root is a message of the room; no row means not a member. $5: the root's seq ($4 unused when
# there is no before/after: NULL).
_THREAD_PAGE = """
SELECT root.found, page.j FROM (SELECT 1 FROM members WHERE room_id = $1 AND user_id = $2) AS member
CROSS JOIN (SELECT EXISTS (SELECT 1 FROM messages WHERE room_id = $1 AND seq = $5) AS found) AS root
LEFT JOIN LATERAL (
    SELECT m.doc AS j FROM messages m
    WHERE m.room_id = $1 AND m.thread_root = $5 {where} ORDER BY m.seq {order} LIMIT $3
) AS page ON true
"""
_THREAD_PAGES = {
    "newest": _THREAD_PAGE.format(where="AND $4::bigint IS NULL", order="DESC"),
    "before": _THREAD_PAGE.format(where="AND m.seq < $4", order="DESC"),
    "after": _THREAD_PAGE.format(where="AND m.seq > $4", order="ASC"),
}

_ONE = """
SELECT one.j FROM (SELECT 1 FROM members WHERE room_id = $1 AND user_id = $2) AS member
LEFT JOIN LATERAL (
    SELECT m.doc AS j FROM messages m WHERE m.room_id = $1 AND m.seq = $3
) AS one ON true
"""

_DOC = "SELECT doc FROM messages WHERE room_id = $1 AND seq = $2"

_TARGET = """
SELECT mem.role, m.sender, m.deleted
FROM members mem LEFT JOIN messages m ON m.room_id = mem.room_id AND m.seq = $3
WHERE mem.room_id = $1 AND mem.user_id = $2
"""

# Edit and delete: the room's next seq, the change and its event, in one statement (the doorbell
# is rung after the commit).
_CHANGE = """
WITH room AS (
    UPDATE rooms SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq
), message AS (
    UPDATE messages SET {assignments} WHERE room_id = $1 AND seq = $2 RETURNING *
), event AS (
    INSERT INTO events (room_id, seq, kind, payload)
    SELECT m.room_id, room.last_seq, '{kind}', {envelope} FROM message m, room
)
SELECT m.doc FROM message m
"""


def _change(assignments: str, kind: EventKind) -> str:
    envelope = sql_envelope(kind, "m.room_id", "room.last_seq", "m.doc::json")
    return _CHANGE.format(assignments=assignments, kind=kind, envelope=envelope)


_EDIT = _change("body = $3, edited_at = now()", EventKind.MESSAGE_UPDATED)
# A tombstone keeps nothing of what was said: no body, no mentions (the trigger), no reactions.
_DELETE = _change("body = NULL, deleted = true, reactions = '[]'", EventKind.MESSAGE_DELETED)
_DELETE_REACTIONS = "DELETE FROM reactions WHERE room_id = $1 AND seq = $2"

# Reactions: the rows, then the message's summary of them (messages.reactions, in its doc), in order
# of each emoji's first use, each emoji's users in order of reacting (the first 50) and their count.
MAX_DISTINCT_REACTIONS = 20
MAX_LISTED_REACTORS = 50
_REACTION_STATE = """
SELECT count(DISTINCT emoji) AS emojis, bool_or(emoji = $3) AS emoji_used,
       bool_or(emoji = $3 AND user_id = $4) AS mine
FROM reactions WHERE room_id = $1 AND seq = $2
"""
_ADD_REACTION = "INSERT INTO reactions (room_id, seq, emoji, user_id) VALUES ($1, $2, $3, $4)"
_REMOVE_REACTION = (
    "DELETE FROM reactions WHERE room_id = $1 AND seq = $2 AND emoji = $3 AND user_id = $4 RETURNING 1"
)
_RECOUNT = _change(
    f"""reactions = (
        SELECT coalesce(json_agg(json_build_object('emoji', g.emoji, 'count', g.n, 'users', g.users)
                                 ORDER BY g.first), '[]')
        FROM (SELECT emoji, count(*) AS n, min(id) AS first,
                     (array_agg(user_id ORDER BY id))[1:{MAX_LISTED_REACTORS}] AS users
              FROM reactions WHERE room_id = $1 AND seq = $2 GROUP BY emoji) AS g)""",
    EventKind.MESSAGE_UPDATED,
)

_MARK_READ = """
UPDATE members SET last_read_seq = GREATEST(members.last_read_seq, LEAST($3, r.last_seq))
FROM rooms r
WHERE members.room_id = $1 AND members.user_id = $2 AND r.id = members.room_id
RETURNING 1
"""


@dataclass(frozen=True)
class Sent:
    json: str  # the message, as JSON text
    replayed: bool  # an earlier request with the same idempotency key created it


def request_hash(room_id: uuid.UUID, body: str, reply_to: int | None) -> bytes:
    return hashlib.sha256(orjson.dumps([str(room_id), body, reply_to])).digest()


async def send(
    db: Database,
    room_id: uuid.UUID,
    sender: str,
    body: str,
    reply_to: int | None,
    idempotency_key: str | None,
) -> Sent:
    fingerprint = request_hash(room_id, body, reply_to) if idempotency_key else None
    async with db.connection() as conn:
        try:
            sent = await conn.fetchval(
                SEND, room_id, room_lock_key(room_id), sender, body, reply_to, idempotency_key, fingerprint
            )
        except asyncpg.exceptions.NoDataFoundError:
            sent = None  # the key was taken by a concurrent send meanwhile: rolled back
        if sent is not None:
            db.committed()
            return Sent(json=sent, replayed=False)
        return await _explain_unsent(conn, room_id, sender, reply_to, idempotency_key, fingerprint)


async def _explain_unsent(
    conn: asyncpg.Connection,
    room_id: uuid.UUID,
    sender: str,
    reply_to: int | None,
    idempotency_key: str | None,
    fingerprint: bytes | None,
) -> Sent:
    # Off the hot path: find out which condition of chat_send() failed. A concurrent retry with the same
    # key waited on the unique index for the first one to commit, so the original is visible here.
    row = await conn.fetchrow(_SEND_DIAGNOSIS, room_id, sender, idempotency_key)
    if not row["member"]:
        raise NotAMember
    if row["keyed_json"] is not None:
        if row["keyed_room"] != room_id or row["keyed_hash"] != fingerprint:
            raise IdempotencyKeyReused
        return Sent(json=row["keyed_json"], replayed=True)
    if reply_to is not None:
        raise NoSuchReplyTarget(reply_to)
    raise RuntimeError("send affected no row for no known reason")


@dataclass(frozen=True)
class Page:
    items: list[str]  # message JSON texts, ascending seq
    has_more: bool

    def json(self) -> bytes:
        more = b"true" if self.has_more else b"false"
        return b'{"items":[' + ",".join(self.items).encode() + b'],"has_more":' + more + b"}"


async def history(
    db: Database,
    room_id: uuid.UUID,
    user: str,
    limit: int,
    before: int | None,
    after: int | None,
    thread: int | None = None,
) -> Page:
    """A page of the room's history, or of the replies of the thread whose root is `thread`."""
    args: tuple[object, ...] = (room_id, user, limit + 1)
    if after is not None:
        direction, args = "after", (*args, after)
    elif before is not None:
        direction, args = "before", (*args, before)
    else:
        direction = "newest"
    if thread is not None:
        if direction == "newest":
            args = (*args, None)
        statement, args = _THREAD_PAGES[direction], (*args, thread)
    else:
        statement = _PAGES[direction]
    async with db.connection() as conn:
        rows = await conn.fetch(statement, *args)
    if not rows:
        raise NotAMember
    if thread is not None and not rows[0]["found"]:
        raise NoSuchMessage
    items = [row["j"] for row in rows if row["j"] is not None]
    has_more = len(items) > limit
    items = items[:limit]
    if direction != "after":
        items.reverse()
    return Page(items=items, has_more=has_more)


async def get_one(db: Database, room_id: uuid.UUID, user: str, seq: int) -> str:
    async with db.connection() as conn:
        row = await conn.fetchrow(_ONE, room_id, user, seq)
    if row is None:
        raise NotAMember
    if row[0] is None:
        raise NoSuchMessage
    return str(row[0])


async def _locked_target(conn: asyncpg.Connection, room_id: uuid.UUID, user: str, seq: int) -> asyncpg.Record:
    """Takes the room lock, then the caller's role and the message's sender and state (404s)."""
    await log.lock_room(conn, room_id)
    target = await conn.fetchrow(_TARGET, room_id, user, seq)
    if target is None:
        raise NotAMember
    if target["sender"] is None:
        raise NoSuchMessage
    return target


async def edit(db: Database, room_id: uuid.UUID, user: str, seq: int, body: str) -> str:
    async with db.transaction() as conn:
        target = await _locked_target(conn, room_id, user, seq)
        if target["sender"] != user:
            raise NotAllowed("Only the sender can edit a message.")
        if target["deleted"]:
            raise MessageDeleted("A deleted message cannot be edited.")
        edited = str(await conn.fetchval(_EDIT, room_id, seq, body))
    db.committed()
    return edited


async def delete(db: Database, room_id: uuid.UUID, user: str, seq: int) -> None:
    async with db.transaction() as conn:
        target = await _locked_target(conn, room_id, user, seq)
        if target["sender"] != user and target["role"] != "owner":
            raise NotAllowed("Only the sender or the room's owner can delete a message.")
        if target["deleted"]:
            return  # already a tombstone: deleting again changes nothing
        await conn.execute(_DELETE_REACTIONS, room_id, seq)
        await conn.execute(_DELETE, room_id, seq)
    db.committed()


@dataclass(frozen=True)
class Reacted:
    json: str  # the message, as JSON text
    added: bool  # False: the caller had already reacted so, nothing changed


async def add_reaction(db: Database, room_id: uuid.UUID, user: str, seq: int, emoji: str) -> Reacted:
    async with db.transaction() as conn:
        await _reactable(conn, room_id, user, seq)
        state = await conn.fetchrow(_REACTION_STATE, room_id, seq, emoji, user)
        if state["mine"]:
            return Reacted(json=str(await conn.fetchval(_DOC, room_id, seq)), added=False)
        if not state["emoji_used"] and state["emojis"] >= MAX_DISTINCT_REACTIONS:
            raise TooManyReactions(MAX_DISTINCT_REACTIONS)
        await conn.execute(_ADD_REACTION, room_id, seq, emoji, user)
        reacted = str(await conn.fetchval(_RECOUNT, room_id, seq))
    db.committed()
    return Reacted(json=reacted, added=True)


async def remove_reaction(db: Database, room_id: uuid.UUID, user: str, seq: int, emoji: str) -> None:
    async with db.transaction() as conn:
        await _reactable(conn, room_id, user, seq)
        if await conn.fetchval(_REMOVE_REACTION, room_id, seq, emoji, user) is None:
            return  # there was none: nothing changes
        await conn.execute(_RECOUNT, room_id, seq)
    db.committed()


async def _reactable(conn: asyncpg.Connection, room_id: uuid.UUID, user: str, seq: int) -> None:
    """Takes the room lock; 404 for outsiders and unknown messages, 409 for a tombstone."""
    target = await _locked_target(conn, room_id, user, seq)
    if target["deleted"]:
        raise MessageDeleted("A deleted message has no reactions.")


async def mark_read(db: Database, room_id: uuid.UUID, user: str, seq: int) -> None:
    async with db.connection() as conn:
        if await conn.fetchval(_MARK_READ, room_id, user, seq) is None:
            raise NotAMember
