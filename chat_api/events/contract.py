"""The event contract, in one place: the kinds of events, the envelope each one's `data:` object has,
the room lock every writer of a room takes first, and the doorbell channel. Every writer, Python or
SQL (chat_send() in the migrations), is built from these or tested against them
(tests/test_event_contract.py)."""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Any

import orjson


class EventKind(StrEnum):
    """The `event:` of a stream frame and the `kind` column of the log."""

    ROOM_CREATED = "room.created"
    ROOM_UPDATED = "room.updated"
    MEMBER_ADDED = "member.added"
    MEMBER_REMOVED = "member.removed"
    MESSAGE_CREATED = "message.created"
    MESSAGE_UPDATED = "message.updated"
    MESSAGE_DELETED = "message.deleted"


# The key of the `data:` object that holds the whole object an event is about; beside it, always
# `room_id` and `seq` (the room's position of the change).
OBJECT_KEY = {
    EventKind.ROOM_CREATED: "room",
    EventKind.ROOM_UPDATED: "room",
    EventKind.MEMBER_ADDED: "member",
    EventKind.MEMBER_REMOVED: "member",
    EventKind.MESSAGE_CREATED: "message",
    EventKind.MESSAGE_UPDATED: "message",
    EventKind.MESSAGE_DELETED: "message",
}
# Events about a member: the log's `subject` column names them (they see their own removal).
MEMBERSHIP = frozenset({EventKind.MEMBER_ADDED, EventKind.MEMBER_REMOVED})

# The doorbell: a NOTIFY on this channel (no payload) tells every hub to read the log.
NOTIFY_CHANNEL = "chat_events"
# Typing (SPEC §8): ephemeral, never in the log. A NOTIFY on this channel carries the frame's `data:`
# JSON ({"room_id", "user_id", "expires_at"}) to every replica's hub, which forwards it to the room's
# other members' streams, each user and room at most once per TYPING_EVERY_SECONDS.
TYPING_CHANNEL = "chat_typing"
TYPING_EVERY_SECONDS = 2.0
TYPING_LASTS_SECONDS = 5.0
# Operators' orders to every replica's hub (`chat-api revoke-streams`); the payload is a user id.
CONTROL_CHANNEL = "chat_control"


def room_lock_key(room_id: uuid.UUID) -> int:
    """The room's advisory-lock key (`pg_advisory_xact_lock`): every writer of a room takes it first,
    so the transaction ids of a room's changes are in the order of their seq (events/log.py)."""
    return int.from_bytes(room_id.bytes[:8], "big", signed=True)


def envelope(kind: EventKind, room_id: uuid.UUID, seq: int, obj: Any) -> str:
    """An event's `data:` object as JSON text: the room, the seq, and the whole object."""
    return orjson.dumps({"room_id": str(room_id), "seq": seq, OBJECT_KEY[kind]: obj}).decode()


def sql_envelope(kind: EventKind, room_id: str, seq: str, obj: str) -> str:
    """The same envelope built by PostgreSQL, from SQL expressions for the room, the seq and the
    object's JSON."""
    return f"json_build_object('room_id', {room_id}, 'seq', {seq}, '{OBJECT_KEY[kind]}', {obj})"


def joined_by_room_created(payload: str) -> list[str]:
    """The members a room.created event (its `data:` text) brings into the room."""
    room = orjson.loads(payload)[OBJECT_KEY[EventKind.ROOM_CREATED]]
    return [member["user_id"] for member in room["members"]]
