"""Messages: send (idempotent), history pages, one message, edit, delete, read markers.

The hot paths (send, history) build the message JSON in PostgreSQL, in the shape clients get
everywhere (REST answers and the event stream alike), and hand the text through without parsing it.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chat_api.core.errors import Problem, not_found
from chat_api.core.wire import SQL_TIMESTAMP
from chat_api.events import log
from chat_api.events.log import NOTIFY_SQL


def message_json(m: str) -> str:
    """SQL for the JSON of message row `m` (see schemas.Message); add ::text to hand it through."""
    return f"""(SELECT row_to_json(x) FROM (SELECT {m}.id, {m}.room_id, {m}.seq, {m}.sender, {m}.body,
        {m}.reply_to, {SQL_TIMESTAMP.format(f"{m}.created_at")} AS created_at,
        {SQL_TIMESTAMP.format(f"{m}.edited_at")} AS edited_at, {m}.deleted) x)"""


def event_json(kind_key: str, m: str, seq: str) -> str:
    """SQL for an event's data object about message row `m`."""
    return f"""json_build_object('room_id', {m}.room_id, 'seq', {seq}, '{kind_key}', {message_json(m)})"""


# One statement after the room lock: take the next seq (only if the sender is a member and the
# reply target exists), insert the message unless its idempotency key is taken, log the event and
# ring the doorbell. No row back means one of those conditions failed: the caller rolls back.
_SEND = text(
    f"""
WITH room AS (
    UPDATE rooms SET last_seq = last_seq + 1, activity_at = now()
    WHERE id = :room_id
      AND EXISTS (SELECT 1 FROM members WHERE room_id = :room_id AND user_id = :sender)
      AND (CAST(:reply_to AS bigint) IS NULL
           OR EXISTS (SELECT 1 FROM messages WHERE room_id = :room_id AND seq = :reply_to))
    RETURNING last_seq
), message AS (
    INSERT INTO messages (room_id, seq, sender, body, reply_to, idempotency_key, request_hash)
    SELECT :room_id, room.last_seq, :sender, :body, :reply_to, :key, :hash FROM room
    ON CONFLICT (sender, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING *
), event AS (
    INSERT INTO events (room_id, seq, kind, payload)
    SELECT m.room_id, m.seq, 'message.created', {event_json("message", "m", "m.seq")} FROM message m
)
SELECT {message_json("m")}::text, {NOTIFY_SQL} FROM message m
"""
)

_SEND_DIAGNOSIS = text(
    f"""
SELECT EXISTS (SELECT 1 FROM members WHERE room_id = :room_id AND user_id = :sender) AS member,
       (SELECT row(m.room_id, m.request_hash, {message_json("m")}::text)
          FROM messages m WHERE m.sender = :sender AND m.idempotency_key = :key) AS keyed
"""
)

_PAGE_NEWEST = f"""
SELECT page.j FROM (SELECT 1 FROM members WHERE room_id = :room_id AND user_id = :user) AS member
LEFT JOIN LATERAL (
    SELECT {message_json("m")}::text AS j FROM messages m
    WHERE m.room_id = :room_id {{where}} ORDER BY m.seq {{order}} LIMIT :limit
) AS page ON true
"""
_PAGE = {
    "newest": text(_PAGE_NEWEST.format(where="", order="DESC")),
    "before": text(_PAGE_NEWEST.format(where="AND m.seq < :cursor", order="DESC")),
    "after": text(_PAGE_NEWEST.format(where="AND m.seq > :cursor", order="ASC")),
}

_ONE = text(
    f"""
SELECT one.j FROM (SELECT 1 FROM members WHERE room_id = :room_id AND user_id = :user) AS member
LEFT JOIN LATERAL (
    SELECT {message_json("m")}::text AS j FROM messages m WHERE m.room_id = :room_id AND m.seq = :seq
) AS one ON true
"""
)

_TARGET = text(
    """
SELECT mem.role, m.sender, m.deleted
FROM members mem LEFT JOIN messages m ON m.room_id = mem.room_id AND m.seq = :seq
WHERE mem.room_id = :room_id AND mem.user_id = :user
"""
)

_EDIT = text(
    f"""
WITH room AS (
    UPDATE rooms SET last_seq = last_seq + 1 WHERE id = :room_id RETURNING last_seq
), message AS (
    UPDATE messages SET body = :body, edited_at = now()
    WHERE room_id = :room_id AND seq = :seq RETURNING *
), event AS (
    INSERT INTO events (room_id, seq, kind, payload)
    SELECT m.room_id, room.last_seq, 'message.updated', {event_json("message", "m", "room.last_seq")}
    FROM message m, room
)
SELECT {message_json("m")}::text, {NOTIFY_SQL} FROM message m
"""
)

_DELETE = text(
    f"""
WITH room AS (
    UPDATE rooms SET last_seq = last_seq + 1 WHERE id = :room_id RETURNING last_seq
), message AS (
    UPDATE messages SET body = NULL, deleted = true
    WHERE room_id = :room_id AND seq = :seq RETURNING *
), event AS (
    INSERT INTO events (room_id, seq, kind, payload)
    SELECT m.room_id, room.last_seq, 'message.deleted', {event_json("message", "m", "room.last_seq")}
    FROM message m, room
)
SELECT {NOTIFY_SQL} FROM message m
"""
)

_MARK_READ = text(
    """
UPDATE members SET last_read_seq = GREATEST(members.last_read_seq, LEAST(:seq, r.last_seq))
FROM rooms r
WHERE members.room_id = :room_id AND members.user_id = :user AND r.id = members.room_id
RETURNING 1
"""
)


@dataclass(frozen=True)
class Sent:
    json: str  # the message, as JSON text
    replayed: bool  # an earlier request with the same idempotency key created it


def request_hash(room_id: uuid.UUID, body: str, reply_to: int | None) -> bytes:
    return hashlib.sha256(orjson.dumps([str(room_id), body, reply_to])).digest()


async def send(
    engine: AsyncEngine,
    room_id: uuid.UUID,
    sender: str,
    body: str,
    reply_to: int | None,
    idempotency_key: str | None,
) -> Sent:
    fingerprint = request_hash(room_id, body, reply_to) if idempotency_key else None
    params = {
        "room_id": room_id,
        "sender": sender,
        "body": body,
        "reply_to": reply_to,
        "key": idempotency_key,
        "hash": fingerprint,
    }
    async with engine.connect() as conn:
        async with conn.begin() as tx:
            await log.lock_room(conn, room_id)
            row = (await conn.execute(_SEND, params)).first()
            if row is not None:
                return Sent(json=row[0], replayed=False)
            await tx.rollback()  # undo the seq taken by a send that did not happen
        return await _explain_unsent(conn, room_id, sender, reply_to, idempotency_key, fingerprint)


async def _explain_unsent(
    conn: AsyncConnection,
    room_id: uuid.UUID,
    sender: str,
    reply_to: int | None,
    idempotency_key: str | None,
    fingerprint: bytes | None,
) -> Sent:
    # Off the hot path: find out which condition of _SEND failed. A concurrent retry with the same key
    # waited on the unique index for the first one to commit, so the original is visible here.
    row = (
        await conn.execute(_SEND_DIAGNOSIS, {"room_id": room_id, "sender": sender, "key": idempotency_key})
    ).one()
    await conn.rollback()
    if not row.member:
        raise not_found("room")
    if row.keyed is not None:
        keyed_room, keyed_hash, keyed_json = row.keyed
        if str(keyed_room) != str(room_id) or keyed_hash != fingerprint:
            raise Problem(
                422,
                "This Idempotency-Key was already used for a different request.",
                kind="idempotency-key-reused",
            )
        return Sent(json=keyed_json, replayed=True)
    if reply_to is not None:
        raise Problem(422, f"reply_to: no message {reply_to} in this room.", kind="validation")
    raise RuntimeError("send affected no row for no known reason")


@dataclass(frozen=True)
class Page:
    items: list[str]  # message JSON texts, ascending seq
    has_more: bool

    def json(self) -> bytes:
        more = b"true" if self.has_more else b"false"
        return b'{"items":[' + ",".join(self.items).encode() + b'],"has_more":' + more + b"}"


async def history(
    engine: AsyncEngine, room_id: uuid.UUID, user: str, limit: int, before: int | None, after: int | None
) -> Page:
    if after is not None:
        direction, cursor = "after", after
    elif before is not None:
        direction, cursor = "before", before
    else:
        direction, cursor = "newest", None
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                _PAGE[direction], {"room_id": room_id, "user": user, "limit": limit + 1, "cursor": cursor}
            )
        ).all()
    if not rows:
        raise not_found("room")
    items = [row[0] for row in rows if row[0] is not None]
    has_more = len(items) > limit
    items = items[:limit]
    if direction != "after":
        items.reverse()
    return Page(items=items, has_more=has_more)


async def get_one(engine: AsyncEngine, room_id: uuid.UUID, user: str, seq: int) -> str:
    async with engine.connect() as conn:
        row = (await conn.execute(_ONE, {"room_id": room_id, "user": user, "seq": seq})).first()
    if row is None:
        raise not_found("room")
    if row[0] is None:
        raise not_found("message")
    return str(row[0])


async def edit(engine: AsyncEngine, room_id: uuid.UUID, user: str, seq: int, body: str) -> str:
    async with engine.begin() as conn:
        await log.lock_room(conn, room_id)
        target = (await conn.execute(_TARGET, {"room_id": room_id, "user": user, "seq": seq})).first()
        if target is None:
            raise not_found("room")
        if target.sender is None:
            raise not_found("message")
        if target.sender != user:
            raise Problem(403, "Only the sender can edit a message.", kind="forbidden")
        if target.deleted:
            raise Problem(409, "A deleted message cannot be edited.", kind="message-deleted")
        row = (await conn.execute(_EDIT, {"room_id": room_id, "seq": seq, "body": body})).one()
        return str(row[0])


async def delete(engine: AsyncEngine, room_id: uuid.UUID, user: str, seq: int) -> None:
    async with engine.begin() as conn:
        await log.lock_room(conn, room_id)
        target = (await conn.execute(_TARGET, {"room_id": room_id, "user": user, "seq": seq})).first()
        if target is None:
            raise not_found("room")
        if target.sender is None:
            raise not_found("message")
        if target.sender != user and target.role != "owner":
            raise Problem(403, "Only the sender or the room's owner can delete a message.", kind="forbidden")
        if target.deleted:
            return  # already a tombstone: deleting again changes nothing
        await conn.execute(_DELETE, {"room_id": room_id, "seq": seq})


async def mark_read(engine: AsyncEngine, room_id: uuid.UUID, user: str, seq: int) -> None:
    async with engine.begin() as conn:
        if (await conn.execute(_MARK_READ, {"room_id": room_id, "user": user, "seq": seq})).first() is None:
            raise not_found("room")
