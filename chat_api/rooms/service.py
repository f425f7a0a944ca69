"""Rooms and membership: create, list (with unread counts), show, add and remove members."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from chat_api.core import keyset
from chat_api.core.db import Database
from chat_api.core.errors import NotAMember
from chat_api.events import log
from chat_api.events.contract import EventKind
from chat_api.events.cursor import Cursor
from chat_api.rooms.errors import (
    DirectRoomFixed,
    DirectWithYourself,
    MalformedPageCursor,
    NoSuchMember,
    NotOwner,
    OnlyLeavingMayStayOut,
    RefusesToBeAdded,
)
from chat_api.rooms.schemas import Member, Room, RoomChange, RoomDetail, RoomPage

# Counting unread messages reads at most this many index entries per room; beyond it the count
# says "this many or more" (a badge shows 999+ long before). Keeps GET /v1/rooms cheap in any room.
UNREAD_COUNT_CAP = 1000

_ROOM_COLUMNS = f"""
    r.id, r.kind, r.name, r.topic, r.created_by, r.created_at, r.last_seq, r.activity_at,
    (SELECT count(*) FROM (
        SELECT 1 FROM messages m
        WHERE m.room_id = r.id AND m.seq > mem.last_read_seq AND m.sender <> mem.user_id AND NOT m.deleted
        LIMIT {UNREAD_COUNT_CAP}) AS unread) AS unread_count,
    (SELECT count(*) FROM (
        SELECT 1 FROM message_mentions mn
        WHERE mn.user_id = mem.user_id AND mn.room_id = r.id AND mn.seq > mem.last_read_seq
        LIMIT {UNREAD_COUNT_CAP}) AS mentioned) AS mention_count,
    (SELECT m.doc FROM messages m WHERE m.room_id = r.id ORDER BY m.seq DESC LIMIT 1)
        AS last_message
"""

_LIST = """
SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin, page.*
FROM (SELECT 1) AS one LEFT JOIN LATERAL (
    SELECT {columns} FROM members mem JOIN rooms r ON r.id = mem.room_id
    WHERE mem.user_id = $1 {after}
    ORDER BY r.activity_at DESC, r.id DESC LIMIT $2
) AS page ON true
"""
_LIST_FIRST = _LIST.format(columns=_ROOM_COLUMNS, after="")
_LIST_NEXT = _LIST.format(columns=_ROOM_COLUMNS, after="AND (r.activity_at, r.id) < ($3, $4)")

_ONE = f"""SELECT {_ROOM_COLUMNS} FROM members mem JOIN rooms r ON r.id = mem.room_id
    WHERE mem.room_id = $1 AND mem.user_id = $2"""
_MEMBERS = "SELECT user_id, role, last_read_seq FROM members WHERE room_id = $1 ORDER BY joined_at, user_id"
_MEMBER = """SELECT mem.role, mem.last_read_seq, r.kind FROM members mem JOIN rooms r ON r.id = mem.room_id
    WHERE mem.room_id = $1 AND mem.user_id = $2"""
_INSERT_ROOM = "INSERT INTO rooms (id, name, created_by, last_seq) VALUES ($1, $2, $3, 1)"
# The one direct room of a pair: a concurrent insert of the same pair waits for the first to commit,
# then inserts nothing (the unique index on the ordered pair), and the room is read back.
_INSERT_DIRECT = """INSERT INTO rooms (id, name, created_by, last_seq, kind, dm_low, dm_high)
    VALUES ($1, $2, $3, 1, 'direct', $4, $5) ON CONFLICT (dm_low, dm_high) DO NOTHING RETURNING id"""
_DIRECT = "SELECT id FROM rooms WHERE dm_low = $1 AND dm_high = $2"
# $2: a new name or NULL; $3: whether a topic was given; $4: that topic (NULL clears it).
_CHANGE_ROOM = (
    "UPDATE rooms SET name = coalesce($2, name), topic = CASE WHEN $3 THEN $4 ELSE topic END WHERE id = $1"
)
_INSERT_MEMBER = "INSERT INTO members (room_id, user_id, role) VALUES ($1, $2, $3)"
_REFUSED = "SELECT 1 FROM room_refusals WHERE room_id = $1 AND user_id = $2"
_REFUSE = "INSERT INTO room_refusals (room_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING"
_DELETE_MEMBER = (
    "DELETE FROM members WHERE room_id = $1 AND user_id = $2 RETURNING user_id, role, last_read_seq"
)


def _room(row: asyncpg.Record) -> Room:
    return Room(
        id=row["id"],
        kind=row["kind"],
        name=row["name"],
        topic=row["topic"],
        created_by=row["created_by"],
        created_at=row["created_at"],
        last_seq=row["last_seq"],
        unread_count=row["unread_count"],
        mention_count=row["mention_count"],
        last_message=orjson.loads(row["last_message"]) if row["last_message"] else None,
    )


def _encode_page_cursor(activity_at: datetime, room_id: uuid.UUID) -> str:
    return keyset.encode(activity_at, room_id)


def _decode_page_cursor(raw: str) -> tuple[datetime, uuid.UUID]:
    try:
        activity_at, room_id, _ = keyset.decode(raw)
    except ValueError:
        raise MalformedPageCursor from None
    return activity_at, room_id


async def list_rooms(db: Database, user: str, limit: int, cursor: str | None) -> RoomPage:
    args: tuple[Any, ...] = (user, limit + 1)
    statement = _LIST_FIRST
    if cursor is not None:
        args, statement = (*args, *_decode_page_cursor(cursor)), _LIST_NEXT
    async with db.connection() as conn:
        rows = await conn.fetch(statement, *args)
    # The stream position is read in the same snapshot as the rooms: nothing falls between them.
    stream_cursor = Cursor(rows[0]["xmin"], 0).encode()
    rows = [row for row in rows if row["id"] is not None]
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = _encode_page_cursor(rows[-1]["activity_at"], rows[-1]["id"])
    return RoomPage(items=[_room(row) for row in rows], next_cursor=next_cursor, stream_cursor=stream_cursor)


async def _detail(conn: asyncpg.Connection, room_id: uuid.UUID, user: str) -> RoomDetail:
    row = await conn.fetchrow(_ONE, room_id, user)
    if row is None:
        raise NotAMember
    members = await conn.fetch(_MEMBERS, room_id)
    return RoomDetail(**_room(row).model_dump(), members=[Member(**m) for m in members])


async def get_room(db: Database, room_id: uuid.UUID, user: str) -> RoomDetail:
    async with db.connection() as conn:
        return await _detail(conn, room_id, user)


async def create_room(db: Database, creator: str, name: str, members: list[str]) -> RoomDetail:
    room_id = uuid.uuid4()
    others = list(dict.fromkeys(m for m in members if m != creator))
    async with db.transaction() as conn:
        await conn.execute(_INSERT_ROOM, room_id, name, creator)
        await conn.executemany(
            _INSERT_MEMBER, [(room_id, creator, "owner")] + [(room_id, m, "member") for m in others]
        )
        room = await _detail(conn, room_id, creator)
        await log.append(conn, room_id, 1, EventKind.ROOM_CREATED, room.model_dump(mode="json"))
    db.committed()
    return room


async def open_direct(db: Database, caller: str, other: str) -> tuple[RoomDetail, bool]:
    """The one direct room of `caller` and `other`; whether it was created now."""
    if caller == other:
        raise DirectWithYourself
    low, high = sorted((caller, other))
    room_id = uuid.uuid4()
    async with db.transaction() as conn:
        created = await conn.fetchval(_INSERT_DIRECT, room_id, f"{low}, {high}", caller, low, high)
        if created is None:
            return await _detail(conn, await conn.fetchval(_DIRECT, low, high), caller), False
        await conn.executemany(_INSERT_MEMBER, [(room_id, low, "member"), (room_id, high, "member")])
        room = await _detail(conn, room_id, caller)
        await log.append(conn, room_id, 1, EventKind.ROOM_CREATED, room.model_dump(mode="json"))
    db.committed()
    return room, True


async def change_room(db: Database, room_id: uuid.UUID, caller: str, change: RoomChange) -> RoomDetail:
    """Renames the room or sets its topic (owner; in a direct room either member, topic only)."""
    async with db.transaction() as conn:
        me = await _locked_member(conn, room_id, caller)
        if me["kind"] == "direct":
            if change.name is not None:
                raise DirectRoomFixed("A direct room cannot be renamed.")
        elif me["role"] != "owner":
            raise NotOwner("Only the room's owner can change its name or topic.")
        topic_given = "topic" in change.model_fields_set
        await conn.execute(_CHANGE_ROOM, room_id, change.name, topic_given, change.topic)
        seq = await log.next_seq(conn, room_id)
        room = await _detail(conn, room_id, caller)
        await log.append(conn, room_id, seq, EventKind.ROOM_UPDATED, room.model_dump(mode="json"))
    db.committed()
    return room


async def _member(conn: asyncpg.Connection, room_id: uuid.UUID, user: str) -> asyncpg.Record | None:
    return await conn.fetchrow(_MEMBER, room_id, user)


async def _locked_member(
    conn: asyncpg.Connection, room_id: uuid.UUID, caller: str, *, members_change: bool = False
) -> asyncpg.Record:
    """Takes the room lock, then the caller's membership (404 for outsiders); a change of a direct
    room's members is refused (409)."""
    await log.lock_room(conn, room_id)
    me = await _member(conn, room_id, caller)
    if me is None:
        raise NotAMember
    if members_change and me["kind"] == "direct":
        raise DirectRoomFixed("A direct room has its two members for good.")
    return me


async def add_member(db: Database, room_id: uuid.UUID, caller: str, user_id: str) -> tuple[Member, bool]:
    """Adds user_id (owner only); returns the member and whether it was added now."""
    async with db.transaction() as conn:
        me = await _locked_member(conn, room_id, caller, members_change=True)
        if me["role"] != "owner":
            raise NotOwner("Only the room's owner can add members.")
        existing = await _member(conn, room_id, user_id)
        if existing is not None:
            return Member(
                user_id=user_id, role=existing["role"], last_read_seq=existing["last_read_seq"]
            ), False
        if await conn.fetchval(_REFUSED, room_id, user_id):
            raise RefusesToBeAdded
        await conn.execute(_INSERT_MEMBER, room_id, user_id, "member")
        member = Member(user_id=user_id, role="member", last_read_seq=0)
        await _log_member_change(conn, room_id, EventKind.MEMBER_ADDED, member)
    db.committed()
    return member, True


async def remove_member(
    db: Database, room_id: uuid.UUID, caller: str, user_id: str, *, stay_out: bool = False
) -> None:
    """The owner removes anyone; a member removes itself (leaves), with `stay_out` for good: nobody
    can add it to this room again."""
    if stay_out and caller != user_id:
        raise OnlyLeavingMayStayOut
    async with db.transaction() as conn:
        me = await _locked_member(conn, room_id, caller, members_change=True)
        if caller != user_id and me["role"] != "owner":
            raise NotOwner("Only the room's owner can remove other members.")
        removed = await conn.fetchrow(_DELETE_MEMBER, room_id, user_id)
        if removed is None:
            raise NoSuchMember
        if stay_out:
            await conn.execute(_REFUSE, room_id, user_id)
        await _log_member_change(conn, room_id, EventKind.MEMBER_REMOVED, Member(**removed))
    db.committed()


async def _log_member_change(
    conn: asyncpg.Connection, room_id: uuid.UUID, kind: EventKind, member: Member
) -> None:
    """The room's next seq and the event about `member` (who sees it even once removed)."""
    seq = await log.next_seq(conn, room_id)
    await log.append(conn, room_id, seq, kind, member.model_dump(mode="json"), subject=member.user_id)
