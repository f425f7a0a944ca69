"""Rooms and membership: create, list (with unread counts), show, add and remove members."""

from __future__ import annotations

import base64
import binascii
import struct
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chat_api.core.errors import Problem, not_found
from chat_api.events import log
from chat_api.events.cursor import Cursor
from chat_api.messages.service import message_json
from chat_api.rooms.schemas import Member, Room, RoomDetail, RoomPage

# Counting unread messages reads at most this many index entries per room; beyond it the count
# says "this many or more" (a badge shows 999+ long before). Keeps GET /v1/rooms cheap in any room.
UNREAD_COUNT_CAP = 1000

_ROOM_COLUMNS = f"""
    r.id, r.name, r.created_by, r.created_at, r.last_seq, r.activity_at,
    (SELECT count(*) FROM (
        SELECT 1 FROM messages m
        WHERE m.room_id = r.id AND m.seq > mem.last_read_seq AND m.sender <> mem.user_id AND NOT m.deleted
        LIMIT {UNREAD_COUNT_CAP}) AS unread) AS unread_count,
    (SELECT {message_json("m")}::text FROM messages m WHERE m.room_id = r.id ORDER BY m.seq DESC LIMIT 1)
        AS last_message
"""

_LIST = """
SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin, page.*
FROM (SELECT 1) AS one LEFT JOIN LATERAL (
    SELECT {columns} FROM members mem JOIN rooms r ON r.id = mem.room_id
    WHERE mem.user_id = :user {after}
    ORDER BY r.activity_at DESC, r.id DESC LIMIT :limit
) AS page ON true
"""
_LIST_FIRST = text(_LIST.format(columns=_ROOM_COLUMNS, after=""))
_LIST_NEXT = text(_LIST.format(columns=_ROOM_COLUMNS, after="AND (r.activity_at, r.id) < (:at, :after_id)"))

_ONE = text(
    f"""SELECT {_ROOM_COLUMNS} FROM members mem JOIN rooms r ON r.id = mem.room_id
    WHERE mem.room_id = :room_id AND mem.user_id = :user"""
)
_MEMBERS = text(
    "SELECT user_id, role, last_read_seq FROM members WHERE room_id = :room_id ORDER BY joined_at, user_id"
)
_MEMBER = text("SELECT role, last_read_seq FROM members WHERE room_id = :room_id AND user_id = :user")


def _room(row: Row[Any]) -> Room:
    return Room(
        id=row.id,
        name=row.name,
        created_by=row.created_by,
        created_at=row.created_at,
        last_seq=row.last_seq,
        unread_count=row.unread_count,
        last_message=orjson.loads(row.last_message) if row.last_message else None,
    )


def _encode_page_cursor(activity_at: datetime, room_id: uuid.UUID) -> str:
    micros = (activity_at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    return base64.urlsafe_b64encode(struct.pack(">q", micros) + room_id.bytes).rstrip(b"=").decode()


def _decode_page_cursor(raw: str) -> tuple[datetime, uuid.UUID]:
    try:
        packed = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        if len(packed) != 24:
            raise ValueError
        (micros,) = struct.unpack(">q", packed[:8])
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros), uuid.UUID(bytes=packed[8:])
    except (ValueError, binascii.Error, OverflowError):
        raise Problem(400, "cursor: not a cursor this service handed out.", kind="malformed-cursor") from None


async def list_rooms(engine: AsyncEngine, user: str, limit: int, cursor: str | None) -> RoomPage:
    params: dict[str, Any] = {"user": user, "limit": limit + 1}
    statement = _LIST_FIRST
    if cursor is not None:
        params["at"], params["after_id"] = _decode_page_cursor(cursor)
        statement = _LIST_NEXT
    async with engine.connect() as conn:
        rows = (await conn.execute(statement, params)).all()
    # The stream position is read in the same snapshot as the rooms: nothing falls between them.
    stream_cursor = Cursor(rows[0].xmin, 0).encode()
    rows = [row for row in rows if row.id is not None]
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = _encode_page_cursor(rows[-1].activity_at, rows[-1].id)
    return RoomPage(items=[_room(row) for row in rows], next_cursor=next_cursor, stream_cursor=stream_cursor)


async def _detail(conn: AsyncConnection, room_id: uuid.UUID, user: str) -> RoomDetail:
    row = (await conn.execute(_ONE, {"room_id": room_id, "user": user})).first()
    if row is None:
        raise not_found("room")
    members = (await conn.execute(_MEMBERS, {"room_id": room_id})).all()
    return RoomDetail(
        **_room(row).model_dump(),
        members=[Member(user_id=m.user_id, role=m.role, last_read_seq=m.last_read_seq) for m in members],
    )


async def get_room(engine: AsyncEngine, room_id: uuid.UUID, user: str) -> RoomDetail:
    async with engine.connect() as conn:
        return await _detail(conn, room_id, user)


async def create_room(engine: AsyncEngine, creator: str, name: str, members: list[str]) -> RoomDetail:
    room_id = uuid.uuid4()
    others = list(dict.fromkeys(m for m in members if m != creator))
    async with engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO rooms (id, name, created_by, last_seq) VALUES (:id, :name, :creator, 1)"),
            {"id": room_id, "name": name, "creator": creator},
        )
        await conn.execute(
            text("INSERT INTO members (room_id, user_id, role) VALUES (:room_id, :user_id, :role)"),
            [{"room_id": room_id, "user_id": creator, "role": "owner"}]
            + [{"room_id": room_id, "user_id": m, "role": "member"} for m in others],
        )
        room = await _detail(conn, room_id, creator)
        payload = orjson.dumps({"room_id": str(room_id), "seq": 1, "room": room.model_dump(mode="json")})
        await log.append(conn, room_id, 1, "room.created", payload.decode())
    return room


async def _member(conn: AsyncConnection, room_id: uuid.UUID, user: str) -> Row[Any] | None:
    return (await conn.execute(_MEMBER, {"room_id": room_id, "user": user})).first()


async def add_member(
    engine: AsyncEngine, room_id: uuid.UUID, caller: str, user_id: str
) -> tuple[Member, bool]:
    """Adds user_id (owner only); returns the member and whether it was added now."""
    async with engine.begin() as conn:
        await log.lock_room(conn, room_id)
        me = await _member(conn, room_id, caller)
        if me is None:
            raise not_found("room")
        if me.role != "owner":
            raise Problem(403, "Only the room's owner can add members.", kind="forbidden")
        existing = await _member(conn, room_id, user_id)
        if existing is not None:
            return Member(user_id=user_id, role=existing.role, last_read_seq=existing.last_read_seq), False
        await conn.execute(
            text("INSERT INTO members (room_id, user_id, role) VALUES (:room_id, :user, 'member')"),
            {"room_id": room_id, "user": user_id},
        )
        member = Member(user_id=user_id, role="member", last_read_seq=0)
        seq = await log.next_seq(conn, room_id)
        payload = orjson.dumps(
            {"room_id": str(room_id), "seq": seq, "member": member.model_dump(mode="json")}
        )
        await log.append(conn, room_id, seq, "member.added", payload.decode(), subject=user_id)
        return member, True


async def remove_member(engine: AsyncEngine, room_id: uuid.UUID, caller: str, user_id: str) -> None:
    """The owner removes anyone; a member removes itself (leaves)."""
    async with engine.begin() as conn:
        await log.lock_room(conn, room_id)
        me = await _member(conn, room_id, caller)
        if me is None:
            raise not_found("room")
        if caller != user_id and me.role != "owner":
            raise Problem(403, "Only the room's owner can remove other members.", kind="forbidden")
        removed = (
            await conn.execute(
                text(
                    "DELETE FROM members WHERE room_id = :room_id AND user_id = :user "
                    "RETURNING user_id, role, last_read_seq"
                ),
                {"room_id": room_id, "user": user_id},
            )
        ).first()
        if removed is None:
            raise not_found("member")
        member = Member(user_id=removed.user_id, role=removed.role, last_read_seq=removed.last_read_seq)
        seq = await log.next_seq(conn, room_id)
        payload = orjson.dumps(
            {"room_id": str(room_id), "seq": seq, "member": member.model_dump(mode="json")}
        )
        await log.append(conn, room_id, seq, "member.removed", payload.decode(), subject=user_id)
